"""One simulated device without I/O: identity, the reading sequence, its outbox and command handling.

The fleet's event loop moves bytes between a `SimulatedDevice` and its broker connection; every
decision (what the next reading is, what a command does, what the ack says) is made here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from devices.device_log import DeviceLog
from devices.faults import FaultInjector
from devices.models import DEFAULT_KINDS, CommandRefused, SensorModel, make_model
from devices.outbox import Outbox
from hub.core.contract import (
    COMMAND_ID_PATTERN,
    Ack,
    AckStatus,
    Command,
    Presence,
    Protocol,
    Reading,
    Scalar,
    decode,
    encode,
    now_ms,
    require_identifier,
)
from hub.core.errors import ConfigError, InvalidMessage
from hub.core.models import DeviceModels, default_models

FIRMWARE = "sim-1.0.0"
DEFAULT_SITE = "plant-a"
DEFAULT_INTERVAL_MS = 1_000
PROTOCOLS: tuple[Protocol, ...] = ("mqtt", "stomp")
ProtocolChoice = Literal["mqtt", "stomp", "mixed"]
_COMMAND_ID = re.compile(COMMAND_ID_PATTERN)


@dataclass(frozen=True)
class DeviceSpec:
    """Who a device is: `<prefix>-<NNNN>` (numbered per kind), its kind, protocol and site."""

    device_id: str
    kind: str
    protocol: Protocol
    site: str

    def __post_init__(self) -> None:
        require_identifier(self.device_id, "device")
        require_identifier(self.kind, "kind")
        require_identifier(self.site, "site")


def plan_fleet(
    count: int,
    kinds: Sequence[str] = DEFAULT_KINDS,
    protocol: ProtocolChoice = "mixed",
    site: str = DEFAULT_SITE,
    models: DeviceModels | None = None,
) -> list[DeviceSpec]:
    """`count` devices cycling through `kinds` of `models` (default: the shipped ones); `mixed`
    alternates protocols so every kind gets both."""
    models = models or default_models()
    if count < 1:
        raise ConfigError(f"--count must be at least 1 (got {count})")
    unknown = [kind for kind in kinds if kind not in models.kinds]
    if unknown or not kinds:
        raise ConfigError(f"unknown kind(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(models.kinds)}")
    if protocol not in ("mqtt", "stomp", "mixed"):
        raise ConfigError(f"--protocol must be mqtt, stomp or mixed (got {protocol!r})")
    require_identifier(site, "site")
    numbers = dict.fromkeys(kinds, 0)
    specs = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        numbers[kind] += 1
        if protocol == "mixed":
            # Shifted by one every round of kinds, so each kind alternates (also with an odd number of kinds).
            chosen: Protocol = PROTOCOLS[(index % len(kinds) + index // len(kinds)) % 2]
        else:
            chosen = protocol
        specs.append(DeviceSpec(f"{models.kinds[kind].prefix}-{numbers[kind]:04d}", kind, chosen, site))
    return specs


def device_rng(seed: int | None, device_id: str) -> random.Random:
    """Each device's own random stream: with a seed, the same device always draws the same numbers."""
    return random.Random(f"{seed}/{device_id}") if seed is not None else random.Random()


@dataclass(frozen=True)
class CommandOutcome:
    ack: Ack
    reboot: bool = False
    interval_changed: bool = False


class _CommandId(msgspec.Struct):
    id: str = ""


@dataclass
class SimulatedDevice:
    spec: DeviceSpec
    model: SensorModel
    faults: FaultInjector
    models: DeviceModels = field(default_factory=default_models)
    interval_ms: int = DEFAULT_INTERVAL_MS
    seq: int = 0
    #: The timestamp of the last reading: the next one is stamped at least 1 ms later.
    last_ts: int = 0
    outbox: Outbox = field(default_factory=Outbox)
    commands_handled: int = 0
    bad_commands: int = 0
    #: Its own log lines, waiting to be published (`logs/<device>/<level>`).
    log: DeviceLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = DeviceLog(self.spec.device_id)

    @classmethod
    def create(
        cls,
        spec: DeviceSpec,
        seed: int | None = None,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        fault_rate: float = 0.0,
        start_s: float | None = None,
        models: DeviceModels | None = None,
    ) -> SimulatedDevice:
        models = models or default_models()
        kind = models.kind(spec.kind)
        if kind is None:
            raise ConfigError(f"unknown kind {spec.kind!r}; choose from {', '.join(models.kinds)}")
        rng = device_rng(seed, spec.device_id)
        start = now_ms() / 1000.0 if start_s is None else start_s
        model = make_model(kind, rng, start)
        faults = FaultInjector(random.Random(rng.random()), fault_rate)
        device = cls(spec, model, faults, models, interval_ms=interval_ms)
        device.log.add("info", f"booted {FIRMWARE}", now_ms(), fw=FIRMWARE, interval_ms=interval_ms)
        return device

    @property
    def device_id(self) -> str:
        return self.spec.device_id

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def protocol(self) -> Protocol:
        return self.spec.protocol

    @property
    def site(self) -> str:
        return self.spec.site

    def state(self) -> dict[str, Any]:
        """What an ack reports: the reading interval plus the kind's actuators."""
        return {"interval_ms": self.interval_ms, **self.model.state()}

    def produce(self, at_ms: int) -> Reading | None:
        """The next reading (queued in the outbox), or None while a dropout fault keeps the device quiet."""
        values = self.faults.apply(self.model.sample(at_ms / 1000.0))
        if self.faults.started is not None:
            self._log_fault(*self.faults.started, at_ms)
        if values is None:
            return None
        self.seq += 1
        # Two readings of one device stamped in one millisecond would be one point in InfluxDB
        # (measurement, tags and time identify it), and one of them lost: an event loop catching
        # up after a stall (a broker restart loading both cores) fires several due readings at once.
        self.last_ts = max(at_ms, self.last_ts + 1)
        reading = Reading(
            device=self.device_id, site=self.site, kind=self.kind, seq=self.seq, ts=self.last_ts, readings=values
        )
        self.outbox.add(self.seq, encode(reading))
        return reading

    def _log_fault(self, fault: str, what: str, at_ms: int) -> None:
        if fault == "dropout":
            self.log.add("error", f"sensor bus timeout: no readings for {what} intervals", at_ms, readings=int(what))
        elif fault == "stuck":
            self.log.add("warning", f"sensor {what} not changing", at_ms, sensor=what)
        else:
            self.log.add("warning", f"sensor {what} jumped out of its usual range", at_ms, sensor=what)

    def log_command(self, command: str, outcome: Ack) -> None:
        """A command handled: `info` when done, `warning` when refused, expired or unsupported."""
        fields: dict[str, Scalar] = {"command": command, "status": outcome.status}
        if outcome.status == "ok":
            self.log.add("info", f"command {command} done", outcome.ts, **fields)
        else:
            self.log.add("warning", f"command {command} {outcome.status}: {outcome.detail}"[:200], outcome.ts, **fields)

    def presence(self, state: Literal["online", "offline"], at_ms: int | None = None) -> Presence:
        return Presence(
            device=self.device_id,
            state=state,
            protocol=self.protocol,
            kind=self.kind,
            site=self.site,
            interval_ms=self.interval_ms,
            fw=FIRMWARE,
            ts=now_ms() if at_ms is None else at_ms,
        )

    def handle_command(self, body: bytes, at_ms: int | None = None) -> CommandOutcome | None:
        """Parse and execute a command body; None when it has no usable id to answer to."""
        at = now_ms() if at_ms is None else at_ms
        try:
            command = decode(body, Command)
        except InvalidMessage as exc:
            self.bad_commands += 1
            try:
                command_id = msgspec.json.decode(body, type=_CommandId).id
            except msgspec.MsgspecError:
                return None
            if not _COMMAND_ID.match(command_id):
                self.log.add("warning", "unreadable command ignored", at, reason=exc.reason)
                return None
            outcome = CommandOutcome(self._ack(command_id, "error", f"invalid command: {exc}", at))
            self.log.add("warning", f"invalid command refused: {exc.reason}", at, reason=exc.reason)
            return outcome
        outcome = self.execute(command, at)
        self.log_command(command.command, outcome.ack)
        return outcome

    def execute(self, command: Command, at_ms: int) -> CommandOutcome:
        self.commands_handled += 1
        if command.expired(at_ms):
            return CommandOutcome(self._ack(command.id, "expired", f"expired {at_ms - command.expires} ms ago", at_ms))
        name, args = command.command, command.args
        if self.kind not in self.models.kinds_with_command(name):
            return CommandOutcome(self._ack(command.id, "unsupported", self._unsupported(name), at_ms))
        try:
            self.models.validate_command(name, args)
        except ConfigError as exc:
            return CommandOutcome(self._ack(command.id, "error", str(exc), at_ms))
        if name == "ping":
            return CommandOutcome(self._ack(command.id, "ok", "pong", at_ms))
        if name == "set_interval":
            self.interval_ms = int(args["ms"])
            return CommandOutcome(self._ack(command.id, "ok", "", at_ms), interval_changed=True)
        if name == "reboot":
            return CommandOutcome(self._ack(command.id, "ok", "rebooting", at_ms), reboot=True)
        try:
            self.model.actuate(name, args)
        except CommandRefused as exc:
            return CommandOutcome(self._ack(command.id, "error", str(exc), at_ms))
        return CommandOutcome(self._ack(command.id, "ok", "", at_ms))

    def _unsupported(self, name: str) -> str:
        others = self.models.kinds_with_command(name)
        if others:
            return f"{name} is for {', '.join(others)} devices, this is {self.kind}"
        kind = self.models.kinds[self.kind]
        supported = sorted([*self.models.common_commands, *kind.commands])
        return f"unknown command {name!r}; {self.kind} supports {', '.join(supported)}"

    def _ack(self, command_id: str, status: AckStatus, detail: str, at_ms: int) -> Ack:
        return Ack(id=command_id, device=self.device_id, status=status, detail=detail, state=self.state(), ts=at_ms)
