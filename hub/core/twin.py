"""One device's twin as a value: desired, reported, version, delta, in_sync, and what is under way.

It is stored whole, as JSON (`stored.py`), so a restarted hub or a standby that takes over goes on
from the same state: the change each property is converging to, its attempts, its last command.
"""

from __future__ import annotations

import hashlib
import math

import msgspec

from hub.core.contract import Command, Scalar

#: Change ids remembered per twin: a change delivered again (a redelivery) is applied once.
MAX_APPLIED = 32

#: A property converging: its command is `sent` and awaits its ack, or `pending` (a retry due
#: after its backoff), or `failed` (the device refused it, or never answered: see `gave_up`).
PENDING, SENT, FAILED = "pending", "sent", "failed"
#: A deferred command (`hub send --ttl`): `queued` until the device is online, then `sent`.
QUEUED = "queued"


class Convergence(msgspec.Struct, kw_only=True):
    """What the hub did so far to bring one property to its desired value."""

    #: The twin version of the change it converges to: with the attempt, the command's id.
    change: int
    #: Hub clock when that value was desired (how long it has been pending).
    since_ms: int
    state: str = PENDING
    attempts: int = 0
    command_id: str = ""
    sent_ms: int = 0
    expires_ms: int = 0
    reason: str = ""
    #: Failed for want of an answer (not a refusal): tried again when the device comes back.
    gave_up: bool = False


class Waiting(msgspec.Struct, kw_only=True):
    """A command that waits for its device (`hub send --ttl`)."""

    command: Command
    state: str = QUEUED


class Twin(msgspec.Struct, kw_only=True):
    device: str
    site: str = ""
    kind: str = ""
    version: int = 0
    desired: dict[str, Scalar] = msgspec.field(default_factory=dict)
    reported: dict[str, Scalar] = msgspec.field(default_factory=dict)
    #: The device's own timestamp of each reported value: an older report never replaces a newer one.
    reported_ts: dict[str, int] = msgspec.field(default_factory=dict)
    converging: dict[str, Convergence] = msgspec.field(default_factory=dict)
    waiting: list[Waiting] = msgspec.field(default_factory=list)
    online: bool = False
    #: Hub clock of the last status or reading (kept in memory; stored when the twin is stored anyway).
    last_seen_ms: int = 0
    applied: list[str] = msgspec.field(default_factory=list)
    #: Hub clock of the last stored change (each stored row is later than the one before).
    updated_ms: int = 0

    @property
    def delta(self) -> dict[str, Scalar]:
        """The desired properties not reported equal."""
        return {name: value for name, value in self.desired.items() if not same(self.reported.get(name), value)}

    @property
    def in_sync(self) -> bool:
        return not self.delta

    @property
    def failed(self) -> dict[str, str]:
        """Properties of the delta that failed, with the reason."""
        delta = self.delta
        return {n: c.reason for n, c in self.converging.items() if c.state == FAILED and n in delta}

    def view(self) -> dict[str, object]:
        """What `hub twin show --json` prints."""
        delta = self.delta
        return {
            "device": self.device,
            "site": self.site,
            "kind": self.kind,
            "version": self.version,
            "desired": self.desired,
            "reported": self.reported,
            "delta": delta,
            "in_sync": not delta,
            "online": self.online,
            "pending": {
                name: {
                    "state": c.state,
                    "since_ms": c.since_ms,
                    "attempts": c.attempts,
                    "command_id": c.command_id,
                    "reason": c.reason,
                }
                for name, c in self.converging.items()
                if name in delta
            },
            "waiting": [
                {"id": w.command.id, "command": w.command.command, "state": w.state, "expires": w.command.expires}
                for w in self.waiting
            ],
            "updated_ms": self.updated_ms,
        }


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Twin)


def encode_twin(twin: Twin) -> str:
    """The twin as stored (`doc` of `twins`)."""
    return _encoder.encode(twin).decode()


def decode_twin(doc: str) -> Twin:
    """A stored twin; `ValueError` if `doc` is not one."""
    try:
        return _decoder.decode(doc)
    except msgspec.MsgspecError as exc:
        raise ValueError(str(exc)) from None


def same(reported: Scalar | None, desired: Scalar) -> bool:
    """A reported value equals a desired one: booleans only to booleans, numbers within rounding."""
    if reported is None:
        return False
    if isinstance(desired, bool) or isinstance(reported, bool):
        return isinstance(desired, bool) and isinstance(reported, bool) and desired == reported
    if isinstance(desired, int | float) and isinstance(reported, int | float):
        return math.isclose(reported, desired, rel_tol=1e-9, abs_tol=1e-9)
    return reported == desired


def command_id(device: str, prop: str, change: int, attempt: int) -> str:
    """The id of attempt `attempt` at change `change` of `prop`: the same after a restart, so a
    command sent again in the moment before its record was stored is the same command."""
    digest = hashlib.sha256(f"{device}/{prop}/{change}/{attempt}".encode()).hexdigest()
    return f"tw-{digest[:32]}"


#: A rollout's states: changing its stages, done with every stage, or stopped for its failures.
RUNNING, COMPLETED, ABORTED = "running", "completed", "aborted"


class RolloutState(msgspec.Struct, kw_only=True):
    """A staged change of many twins, as the twin service runs and stores it (`rollouts`)."""

    id: str
    desired: dict[str, Scalar]
    #: (device, kind) pairs, in the order they are changed.
    devices: list[tuple[str, str]]
    #: Cumulative shares in percent (10, 50, 100).
    stages: list[int]
    pause_ms: int
    abort_failures: float
    state: str = RUNNING
    #: The stage under way (0-based); its devices are `devices[:reached]`.
    stage: int = 0
    reached: int = 0
    stage_started_ms: int = 0
    in_sync: int = 0
    failed: int = 0
    reason: str = ""
    created_ms: int = 0
    updated_ms: int = 0

    def view(self) -> dict[str, object]:
        """What `hub rollouts --json` prints for it."""
        return {
            "id": self.id,
            "state": self.state,
            "desired": self.desired,
            "devices": len(self.devices),
            "stages": self.stages,
            "stage": self.stage + 1,
            "changed": self.reached,
            "in_sync": self.in_sync,
            "failed": self.failed,
            "reason": self.reason,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


_rollout_encoder = msgspec.json.Encoder()
_rollout_decoder = msgspec.json.Decoder(RolloutState)


def encode_rollout(rollout: RolloutState) -> str:
    return _rollout_encoder.encode(rollout).decode()


def decode_rollout(doc: str) -> RolloutState:
    """A stored rollout; `ValueError` if `doc` is not one."""
    try:
        return _rollout_decoder.decode(doc)
    except msgspec.MsgspecError as exc:
        raise ValueError(str(exc)) from None


def stage_size(total: int, percent: int) -> int:
    """How many of `total` devices a cumulative share of `percent` covers (at least one)."""
    return min(total, max(1, -(-total * percent // 100)))
