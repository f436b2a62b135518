"""The twins' decision core: desired changes, acks, statuses and readings in; the commands that
close each delta, and the twins to store, out. No I/O; the clock is passed in.

Convergence, per property of the delta of an online device:

- one command at a time, keyed by (device, property, change, attempt) (`twin.command_id`), so a
  hub restarted just after sending sends the same command, not a new one;
- an `ok` ack whose state reports the value ends it; `error` or `unsupported` leaves the property
  `failed` with the device's reason until the next change; `expired` or no answer by the
  command's expiry is retried after a backoff (`RETRY_BASE_MS` doubling to `RETRY_MAX_MS`), at
  most `MAX_ATTEMPTS` times, then `failed` ("no answer") until the device comes online again;
- nothing is sent to a device that is not online: a device away for a week gets its delta when it
  returns (its status, or its first reading after silence), and two changes meanwhile send only
  the last. The broker holds no command for it meanwhile.

Deferred commands (`hub send --ttl`) wait in the twin the same way, and are recorded `expired`
in `commands` when their device did not come back before their expiry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.core.contract import Ack, Command, Deferred, Desired, Presence, Rollout, Scalar, is_identifier
from hub.core.errors import ConfigError
from hub.core.models import DeviceModels
from hub.core.points import Point
from hub.core.twin import (
    ABORTED,
    COMPLETED,
    FAILED,
    MAX_APPLIED,
    PENDING,
    QUEUED,
    RUNNING,
    SENT,
    Convergence,
    RolloutState,
    Twin,
    Waiting,
    command_id,
    same,
    stage_size,
)

#: Attempts at one change before the property is `failed` for want of an answer.
MAX_ATTEMPTS = 5
#: The wait before the second attempt; it doubles with each attempt after it.
RETRY_BASE_MS = 2_000
#: The longest wait between two attempts.
RETRY_MAX_MS = 60_000
#: A twin's command may be carried out this long after it is sent.
COMMAND_TTL_MS = 15_000
#: An ack may come this long after its command's expiry and still count.
ACK_GRACE_MS = 2_000
#: An online device not heard from for this many of its intervals (and at least `MIN_SILENCE_MS`)
#: is taken as gone: its next reading is a return (and a moment to converge).
SILENT_AFTER_INTERVALS = 3
MIN_SILENCE_MS = 15_000
#: The detail of a deferred command recorded `expired`.
NOT_BACK = "the device did not come back before the command's ttl ended"
#: The `origin` the commands service records for the twin's own commands.
TWIN_ORIGIN = "twin"


def backoff_ms(attempts: int) -> int:
    """The wait after the `attempts`-th attempt before the next one."""
    return int(min(RETRY_BASE_MS * 2 ** max(0, attempts - 1), RETRY_MAX_MS))


@dataclass(frozen=True)
class Send:
    """A command to publish to `device`; `origin` is its AMQP app_id."""

    device: str
    command: Command
    origin: str


@dataclass
class Out:
    """What the events since the last `take` caused: the twins to store, commands to send, other points."""

    twins: list[Twin] = field(default_factory=list)
    rollouts: list[RolloutState] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    #: For the metrics: ("twin_command", property) and ("twin_failed", property).
    events: list[tuple[str, ...]] = field(default_factory=list)


class TwinBook:
    """Every twin this hub keeps, and what is to be done about them; used from one thread."""

    def __init__(self, models: DeviceModels) -> None:
        self.models = models
        self.twins: dict[str, Twin] = {}
        self.rollouts: dict[str, RolloutState] = {}
        self._changed_rollouts: set[str] = set()
        self._changed: set[str] = set()
        self._touched: set[str] = set()
        self._out = Out()

    # --- what the hub stored --------------------------------------------------------------------

    def seed(self, twins: Iterable[Twin], now_ms: int) -> None:
        """Start from the stored twins (replacing what this process knew: a takeover). Online states
        are kept, and each device counts as heard from now (the time the hub was away is not its silence)."""
        for twin in twins:
            twin.last_seen_ms = now_ms
            self.twins[twin.device] = twin

    def seed_rollouts(self, rollouts: Iterable[RolloutState]) -> None:
        for rollout in rollouts:
            self.rollouts[rollout.id] = rollout

    def heard_from_all(self, now_ms: int) -> None:
        for twin in self.twins.values():
            twin.last_seen_ms = max(twin.last_seen_ms, now_ms)

    # --- events --------------------------------------------------------------------------------

    def on_desired(self, change: Desired, now_ms: int) -> None:
        """Apply a change once (by its id); a value that breaks the kind's property is a `ConfigError`."""
        for name, value in change.desired.items():
            if value is not None:
                self.models.validate_property(change.kind, name, value)
        twin = self._twin(change.device)
        if change.id in twin.applied:
            return
        twin.applied = [*twin.applied[-(MAX_APPLIED - 1) :], change.id]
        if not twin.kind:
            twin.kind = change.kind
        changed: list[str] = []
        for name, value in change.desired.items():
            if value is None:
                if name in twin.desired:
                    del twin.desired[name]
                    twin.converging.pop(name, None)
                    changed.append(name)
                continue
            old = twin.desired.get(name)
            if old is not None and same(old, value) and type(old) is type(value):
                continue
            twin.desired[name] = value
            changed.append(name)
        if changed:
            twin.version += 1
            for name in changed:
                if name in twin.desired:  # a new change: attempts start afresh, under a new command id
                    twin.converging[name] = Convergence(change=twin.version, since_ms=now_ms)
        self._mark(twin, stored=True)

    def on_rollout(self, rollout: Rollout, now_ms: int) -> None:
        """Start a rollout once (by its id); a value a device's kind cannot take is a `ConfigError`."""
        for _device, kind in rollout.devices:
            for name, value in rollout.desired.items():
                self.models.validate_property(kind, name, value)
        if rollout.id in self.rollouts:
            return
        if not rollout.devices or not rollout.stages or not rollout.desired:
            raise ConfigError("a rollout needs devices, stages and desired values")
        state = RolloutState(
            id=rollout.id,
            desired=dict(rollout.desired),
            devices=[(device, kind) for device, kind in rollout.devices],
            stages=sorted(set(rollout.stages)),
            pause_ms=rollout.pause_ms,
            abort_failures=rollout.abort_failures,
            created_ms=now_ms,
        )
        self.rollouts[state.id] = state
        self._start_stage(state, 0, now_ms)

    def on_deferred(self, deferred: Deferred, now_ms: int) -> None:
        twin = self._twin(deferred.device)
        command = deferred.command
        if any(w.command.id == command.id for w in twin.waiting):
            return
        twin.waiting.append(Waiting(command=command))
        self._out.points.append(_record(deferred.device, command, QUEUED, command.ts, ""))
        self._mark(twin, stored=True)

    def on_status(self, status: Presence, now_ms: int) -> None:
        twin = self._twin(status.device)
        twin.site, twin.kind = status.site, status.kind
        reported = {"interval_ms": status.interval_ms, **({"fw": status.fw} if status.fw else {})}
        stored = self._report(twin, reported, status.ts)
        if status.state == "online":
            stored |= self._came_online(twin, now_ms)
        else:
            stored |= twin.online
            twin.online = False
        self._mark(twin, stored)

    def on_reading(
        self, device: str, site: str, kind: str, readings: Mapping[str, Scalar], ts: int, now_ms: int
    ) -> None:
        """A reading: a sign of life, and the actuators' state (`actuators` and properties of the kind)."""
        twin = self._twin(device)
        stored = (twin.site, twin.kind) != (site, kind)
        twin.site, twin.kind = site, kind
        spec = self.models.kind(kind)
        if spec is not None:
            names = set(spec.actuators) | set(self.models.properties(kind))
            stored |= self._report(twin, {n: v for n, v in readings.items() if n in names}, ts)
        if not twin.online or now_ms - twin.last_seen_ms > self._silence_ms(twin):
            stored |= self._came_online(twin, now_ms)
        twin.last_seen_ms = max(twin.last_seen_ms, now_ms)
        self._mark(twin, stored)

    def on_ack(self, ack: Ack, now_ms: int) -> None:
        twin = self.twins.get(ack.device)
        if twin is None:
            return
        state = {k: v for k, v in ack.state.items() if is_identifier(k) and isinstance(v, bool | int | float | str)}
        stored = self._report(twin, state, ack.ts)
        twin.waiting = [w for w in twin.waiting if w.command.id != ack.id]
        for name, c in twin.converging.items():
            if c.command_id != ack.id or c.state != SENT:
                continue
            stored = True
            if ack.status == "ok":
                if name in twin.desired and not same(twin.reported.get(name), twin.desired[name]):
                    c.state, c.reason = FAILED, f"answered ok but reports {twin.reported.get(name)!r}"
                    self._out.events.append(("twin_failed", name))
            elif ack.status in ("error", "unsupported"):
                c.state, c.reason = FAILED, f"{ack.status}: {ack.detail}" if ack.detail else ack.status
                self._out.events.append(("twin_failed", name))
            else:  # expired on its way: another attempt after the backoff
                c.state, c.reason = PENDING, f"{ack.status}: {ack.detail}" if ack.detail else ack.status
        self._mark(twin, stored)

    # --- timers --------------------------------------------------------------------------------

    def due(self, now_ms: int) -> None:
        """Silence, expiries, timeouts and retries of every twin."""
        self._touched.update(self.twins)
        for rollout in self.rollouts.values():
            if rollout.state == RUNNING:
                self._step(rollout, now_ms)
        for twin in self.twins.values():
            if twin.online and now_ms - twin.last_seen_ms > self._silence_ms(twin):
                twin.online = False
                self._changed.add(twin.device)

    def take(self, now_ms: int, converge: bool = True) -> Out:
        """What happened since the last call; with `converge`, the commands due for the twins touched."""
        if converge:
            for device in sorted(self._touched):
                self._converge(self.twins[device], now_ms)
            self._touched.clear()
        out, self._out = self._out, Out()
        for device in sorted(self._changed):
            twin = self.twins[device]
            twin.updated_ms = max(now_ms, twin.updated_ms + 1)
            out.twins.append(twin)
        self._changed.clear()
        for rollout_id in sorted(self._changed_rollouts):
            rollout = self.rollouts[rollout_id]
            rollout.updated_ms = max(now_ms, rollout.updated_ms + 1)
            out.rollouts.append(rollout)
        self._changed_rollouts.clear()
        return out

    # --- rollouts ------------------------------------------------------------------------------

    def _start_stage(self, rollout: RolloutState, stage: int, now_ms: int) -> None:
        """Change the twins of the devices `stage` adds (each change keyed by rollout and device)."""
        size = stage_size(len(rollout.devices), rollout.stages[stage])
        for device, kind in rollout.devices[rollout.reached : size]:
            change_id = "ro-" + hashlib.sha256(f"{rollout.id}/{device}".encode()).hexdigest()[:32]
            self.on_desired(
                Desired(id=change_id, device=device, kind=kind, desired=dict(rollout.desired), ts=now_ms), now_ms
            )
        rollout.stage, rollout.reached, rollout.stage_started_ms = stage, size, now_ms
        self._changed_rollouts.add(rollout.id)

    def _step(self, rollout: RolloutState, now_ms: int) -> None:
        """Count the devices changed so far; stop on too many failures, go on when the stage is in sync
        or its pause is over."""
        in_sync = failed = 0
        for device, _kind in rollout.devices[: rollout.reached]:
            twin = self.twins.get(device)
            if twin is None:
                continue
            if all(same(twin.reported.get(n), v) for n, v in rollout.desired.items()):
                in_sync += 1
            elif any(n in twin.failed for n in rollout.desired):
                failed += 1
        if (in_sync, failed) != (rollout.in_sync, rollout.failed):
            rollout.in_sync, rollout.failed = in_sync, failed
            self._changed_rollouts.add(rollout.id)
        if failed * 100 > rollout.abort_failures * rollout.reached:
            rollout.state = ABORTED
            rollout.reason = (
                f"{failed} of {rollout.reached} devices failed at stage {rollout.stage + 1}"
                f" (more than {rollout.abort_failures:g}%)"
            )
            self._changed_rollouts.add(rollout.id)
            return
        if in_sync + failed < rollout.reached and now_ms < rollout.stage_started_ms + rollout.pause_ms:
            return
        if rollout.stage + 1 >= len(rollout.stages):
            if in_sync + failed >= rollout.reached:
                rollout.state = COMPLETED
                self._changed_rollouts.add(rollout.id)
            return
        self._start_stage(rollout, rollout.stage + 1, now_ms)

    # --- the decisions ---------------------------------------------------------------------------

    def _converge(self, twin: Twin, now_ms: int) -> None:
        for waiting in list(twin.waiting):
            command = waiting.command
            if now_ms > command.expires + ACK_GRACE_MS or (waiting.state == QUEUED and now_ms > command.expires):
                twin.waiting.remove(waiting)
                if waiting.state == QUEUED:
                    self._out.points.append(_record(twin.device, command, "expired", command.expires, NOT_BACK))
                self._changed.add(twin.device)
            elif waiting.state == QUEUED and twin.online:
                waiting.state = SENT
                self._out.sends.append(Send(twin.device, command, "cli"))
                self._changed.add(twin.device)
        properties = self.models.properties(twin.kind)
        for name, value in twin.desired.items():
            c = twin.converging.get(name)
            if same(twin.reported.get(name), value):
                if c is not None:
                    del twin.converging[name]
                    self._changed.add(twin.device)
                continue
            if c is None:
                c = twin.converging[name] = Convergence(change=twin.version, since_ms=now_ms)
                self._changed.add(twin.device)
            spec = properties.get(name)
            if spec is None:
                if c.state != FAILED:
                    c.state, c.reason = FAILED, f"a {twin.kind or 'device of unknown kind'} has no property {name!r}"
                    self._changed.add(twin.device)
                continue
            if c.state == FAILED or not twin.online:
                continue
            if c.state == SENT:
                if now_ms <= c.expires_ms + ACK_GRACE_MS:
                    continue
                c.state, c.reason = PENDING, "no answer"
                self._changed.add(twin.device)
            if c.attempts >= MAX_ATTEMPTS:
                c.state, c.reason, c.gave_up = FAILED, f"no answer to {c.attempts} attempts", True
                self._out.events.append(("twin_failed", name))
                self._changed.add(twin.device)
                continue
            if c.attempts and now_ms < c.sent_ms + backoff_ms(c.attempts):
                continue
            try:
                self.models.validate_property(twin.kind, name, value)
            except ConfigError as exc:
                c.state, c.reason = FAILED, str(exc)
                self._changed.add(twin.device)
                continue
            c.attempts += 1
            c.state, c.sent_ms, c.expires_ms = SENT, now_ms, now_ms + COMMAND_TTL_MS
            c.command_id = command_id(twin.device, name, c.change, c.attempts)
            command = Command(
                id=c.command_id, command=spec.command, args={spec.arg: value}, ts=now_ms, expires=c.expires_ms
            )
            self._out.sends.append(Send(twin.device, command, TWIN_ORIGIN))
            self._out.events.append(("twin_command", name))
            self._changed.add(twin.device)

    def _came_online(self, twin: Twin, now_ms: int) -> bool:
        """The device is back: what gave up for want of an answer, or went out while it was away, is tried again."""
        was = twin.online
        twin.online = True
        twin.last_seen_ms = max(twin.last_seen_ms, now_ms)
        if was:
            return False
        for c in twin.converging.values():
            if c.gave_up or c.state == SENT:
                c.state, c.gave_up, c.reason = PENDING, False, ""
                c.attempts = min(c.attempts, MAX_ATTEMPTS - 1)
                c.sent_ms = 0
        for waiting in twin.waiting:
            waiting.state = QUEUED
        return True

    def _report(self, twin: Twin, values: Mapping[str, Any], ts: int) -> bool:
        """Take reported values newer than those held; True if one changed."""
        changed = False
        for name, value in values.items():
            if ts < twin.reported_ts.get(name, -1):
                continue
            twin.reported_ts[name] = ts
            old = twin.reported.get(name)
            if old is not None and same(old, value) and type(old) is type(value):
                continue
            twin.reported[name] = value
            changed = True
        if changed:
            twin.version += 1
        return changed

    def _silence_ms(self, twin: Twin) -> int:
        interval = twin.reported.get("interval_ms")
        per = int(interval) if isinstance(interval, int | float) and not isinstance(interval, bool) else 0
        return max(SILENT_AFTER_INTERVALS * per, MIN_SILENCE_MS)

    def _twin(self, device: str) -> Twin:
        twin = self.twins.get(device)
        if twin is None:
            twin = self.twins[device] = Twin(device=device)
        return twin

    def _mark(self, twin: Twin, stored: bool) -> None:
        self._touched.add(twin.device)
        if stored:
            self._changed.add(twin.device)


def _record(device: str, command: Command, status: str, ts: int, detail: str) -> Point:
    """A row of `commands` for a deferred command the commands service never sees: `queued`, `expired`."""
    return Point(
        "commands",
        {"device": device, "command": command.command, "status": status, "origin": "cli"},
        {"id": command.id, "detail": detail},
        ts,
    )
