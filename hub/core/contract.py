"""The wire contract of docs/contract.md as code: identifiers, routing keys, topics and bodies.

A raw body becomes a typed, validated message here, once (`decode_reading` and friends); a
`Reading` you hold is valid, and nothing downstream checks it again. Devices and the hub
both build their routing keys, topics and destinations with the functions below.
"""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from hub.core.errors import InvalidIdentifier, InvalidMessage

SCHEMA_VERSION = 1
EXCHANGE = "iot"
VHOST = "iot"
DEAD_LETTER_EXCHANGE = "iot.dlx"
DEAD_LETTER_QUEUE = "iot.dead-letter"
#: Header on a dead-lettered message that says why it was refused.
DEAD_LETTER_REASON_HEADER = "x-iot-reason"
#: Bodies larger than this are refused before they are parsed.
MAX_BODY_BYTES = 64 * 1024
MAX_READINGS_PER_MESSAGE = 64
#: Entries of one telemetry batch at most (and the body stays within MAX_BODY_BYTES).
MAX_BATCH_ENTRIES = 500

IDENTIFIER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SENSOR_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
COMMAND_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)

Identifier = Annotated[str, msgspec.Meta(pattern=IDENTIFIER_PATTERN)]
SensorName = Annotated[str, msgspec.Meta(pattern=SENSOR_PATTERN)]
CommandId = Annotated[str, msgspec.Meta(pattern=COMMAND_ID_PATTERN)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Protocol = Literal["mqtt", "stomp"]
#: How a message reached exchange `iot`: a device protocol, or AMQP itself (a gateway, a script).
Transport = Literal["mqtt", "stomp", "amqp"]
Severity = Literal["info", "warning", "critical"]
AckStatus = Literal["ok", "error", "unsupported", "expired"]
Scalar = bool | int | float | str

#: Log levels, least severe first: `--level warning` means warning and above.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
#: A log line's `message`, in characters.
MAX_LOG_MESSAGE_CHARS = 4096
#: A log line's `fields`: at most this many, each string value at most this many characters.
MAX_LOG_FIELDS = 16
MAX_LOG_FIELD_CHARS = 256

#: Field names the store adds itself, so no reading may use them.
RESERVED_FIELDS = frozenset({"seq", "out_of_range"})


def now_ms() -> int:
    """Wall-clock Unix time in integer milliseconds, the contract's timestamp."""
    return time.time_ns() // 1_000_000


def is_identifier(value: str) -> bool:
    """True if `value` may be a topic level, routing-key word and InfluxDB tag."""
    return isinstance(value, str) and _IDENTIFIER.match(value) is not None


def require_identifier(value: str, what: str = "identifier") -> str:
    """Return `value` if it may be a topic level, routing-key word and InfluxDB tag."""
    if not is_identifier(value):
        raise InvalidIdentifier(
            f"{what} {value!r} is not allowed: use 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return value


# --- routing keys, MQTT topics, STOMP destinations -------------------------------------------


def telemetry_key(site: str, kind: str, device: str) -> str:
    return "telemetry.{}.{}.{}".format(
        require_identifier(site, "site"),
        require_identifier(kind, "kind"),
        require_identifier(device, "device"),
    )


def status_key(device: str) -> str:
    return f"status.{require_identifier(device, 'device')}"


def command_key(device: str) -> str:
    return f"commands.{require_identifier(device, 'device')}"


def ack_key(device: str) -> str:
    return f"acks.{require_identifier(device, 'device')}"


def desired_key(device: str) -> str:
    """Where a change to a device twin's desired state goes (the hub and the CLI publish it, never a device)."""
    return f"twin.desired.{require_identifier(device, 'device')}"


def deferred_key(device: str) -> str:
    """Where a command that waits for an offline device goes (`hub send --ttl`)."""
    return f"twin.command.{require_identifier(device, 'device')}"


def rollout_key(rollout: str) -> str:
    """Where a staged change of many twins goes (`hub twin set ... --rollout`)."""
    return f"twin.rollout.{require_identifier(rollout, 'rollout')}"


def alert_key(severity: Severity, site: str, device: str) -> str:
    if severity not in ("info", "warning", "critical"):
        raise InvalidIdentifier(f"severity {severity!r} is not one of info, warning, critical")
    return f"alerts.{severity}.{require_identifier(site, 'site')}.{require_identifier(device, 'device')}"


def log_key(device: str, level: str) -> str:
    if level not in LOG_LEVELS:
        raise InvalidIdentifier(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return f"logs.{require_identifier(device, 'device')}.{level}"


def alarm_key(severity: Severity, site: str, kind: str, device: str) -> str:
    if severity not in ("info", "warning", "critical"):
        raise InvalidIdentifier(f"severity {severity!r} is not one of info, warning, critical")
    return "alarms.{}.{}.{}.{}".format(
        severity,
        require_identifier(site, "site"),
        require_identifier(kind, "kind"),
        require_identifier(device, "device"),
    )


def mqtt_topic(routing_key: str) -> str:
    """The MQTT topic RabbitMQ maps to `routing_key` (it swaps '/' and '.')."""
    return routing_key.replace(".", "/")


def routing_key_from_mqtt(topic: str) -> str:
    return topic.replace("/", ".")


def stomp_destination(routing_key: str) -> str:
    """The STOMP destination that publishes to (or subscribes on) exchange `iot` with `routing_key`."""
    return f"/exchange/{EXCHANGE}/{routing_key}"


# --- bodies ----------------------------------------------------------------------------------


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One telemetry message: a device's readings at one instant.

    Any sensor name of the right shape is accepted: which sensors a kind has, their units and
    plausible ranges are the device models' business (`hub.core.models`), not the wire's.
    """

    v: Literal[1] = 1
    device: Identifier
    site: Identifier
    kind: Identifier
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    ts: EpochMs
    readings: Annotated[dict[SensorName, bool | float], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        readings = self.readings
        if len(readings) > MAX_READINGS_PER_MESSAGE:
            raise ValueError(f"more than {MAX_READINGS_PER_MESSAGE} readings")
        # Set and map operations first: every reading of the hub passes here, twice.
        if not RESERVED_FIELDS.isdisjoint(readings):
            name = min(RESERVED_FIELDS.intersection(readings))
            raise ValueError(f"reading name {name!r} is reserved")
        if not all(map(math.isfinite, readings.values())):
            name = next(name for name, value in readings.items() if not math.isfinite(value))
            raise ValueError(f"reading {name!r} is not a finite number")

    @property
    def routing_key(self) -> str:
        return telemetry_key(self.site, self.kind, self.device)


class BatchEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of a batch: what a `Reading` holds beside its device's identity."""

    seq: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    ts: EpochMs
    readings: Annotated[dict[SensorName, bool | float], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        # The checks of Reading.__post_init__ (its error, with msgspec's path `$.batch[i]` added).
        Reading(device="x", site="x", kind="x", seq=self.seq, ts=self.ts, readings=self.readings)


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """One device's readings at several instants (a gateway's, or a device's offline buffer)."""

    v: Literal[1] = 1
    device: Identifier
    site: Identifier
    kind: Identifier
    batch: Annotated[list[BatchEntry], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ENTRIES)]

    @property
    def routing_key(self) -> str:
        return telemetry_key(self.site, self.kind, self.device)

    def readings(self) -> list[Reading]:
        """Its entries as readings, oldest `ts` first (the order the rules see them; ties as sent)."""
        return [
            Reading(device=self.device, site=self.site, kind=self.kind, seq=e.seq, ts=e.ts, readings=e.readings)
            for e in sorted(self.batch, key=lambda entry: entry.ts)
        ]


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    """A device's status message (also its MQTT last will)."""

    v: Literal[1] = 1
    device: Identifier
    state: Literal["online", "offline"]
    protocol: Protocol
    kind: Identifier
    site: Identifier
    interval_ms: Annotated[int, msgspec.Meta(ge=1)]
    fw: Annotated[str, msgspec.Meta(max_length=64)] = ""
    ts: EpochMs

    @property
    def routing_key(self) -> str:
        return status_key(self.device)


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """A control command for one device; it must not be executed after `expires`."""

    v: Literal[1] = 1
    id: CommandId
    command: Identifier
    args: dict[Annotated[str, msgspec.Meta(pattern=SENSOR_PATTERN)], Scalar] = {}
    ts: EpochMs
    expires: EpochMs

    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) > self.expires


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    """A device's answer to a command, with its state after executing it."""

    v: Literal[1] = 1
    id: CommandId
    device: Identifier
    status: AckStatus
    detail: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    state: dict[str, Any] = {}
    ts: EpochMs

    @property
    def routing_key(self) -> str:
        return ack_key(self.device)


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """What a rule raised about a device (published to `alerts.<severity>.<site>.<device>`)."""

    v: Literal[1] = 1
    id: CommandId
    rule: Identifier
    severity: Severity
    device: Identifier
    site: Identifier
    kind: Identifier
    sensor: SensorName
    value: float
    message: Annotated[str, msgspec.Meta(max_length=1024)]
    ts: EpochMs

    @property
    def routing_key(self) -> str:
        return alert_key(self.severity, self.site, self.device)


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a device's log (published to `logs.<device>.<level>`)."""

    v: Literal[1] = 1
    device: Identifier
    ts: EpochMs
    level: LogLevel
    message: Annotated[str, msgspec.Meta(max_length=MAX_LOG_MESSAGE_CHARS)]
    fields: dict[SensorName, bool | int | float | Annotated[str, msgspec.Meta(max_length=MAX_LOG_FIELD_CHARS)]] = {}

    def __post_init__(self) -> None:
        if len(self.fields) > MAX_LOG_FIELDS:
            raise ValueError(f"more than {MAX_LOG_FIELDS} fields")
        for name, value in self.fields.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {name!r} is not a finite number")

    @property
    def routing_key(self) -> str:
        return log_key(self.device, self.level)


#: An alarm occurrence: `<type>:<device>:<raised_ts>`.
AlarmId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}:[a-z0-9][a-z0-9_-]{0,63}:[0-9]{1,16}$")]
AlarmTransitionName = Literal["raised", "escalated", "acked", "cleared"]
#: The AMQP `type` of an `AlarmAck`: an ack is a message of this type published to `iot.telemetry`
#: (where no device may publish; `stack migrate` re-publishes readings there, without it).
ALARM_ACK_TYPE = "alarm_ack"


def alarm_id(alarm_type: str, device: str, raised_at_ms: int) -> str:
    return f"{alarm_type}:{device}:{raised_at_ms}"


class AlarmTransition(msgspec.Struct, frozen=True, kw_only=True):
    """An alarm's transition, published to `alarms.<severity>.<site>.<kind>.<device>`; `key` is
    its idempotency key (`<alarm_id>/<transition>`, `<alarm_id>/escalated-<severity>`)."""

    v: Literal[1] = 1
    key: str
    alarm_id: AlarmId
    transition: AlarmTransitionName
    type: Identifier
    rule: Identifier
    device: Identifier
    site: Identifier
    kind: Identifier
    severity: Severity
    sensor: SensorName
    value: float | None
    ts: EpochMs
    raised_at: EpochMs
    count: int
    acked: bool
    acked_by: str | None = None
    note: str | None = None

    @property
    def routing_key(self) -> str:
        return alarm_key(self.severity, self.site, self.kind, self.device)


class AlarmAck(msgspec.Struct, frozen=True, kw_only=True):
    """Someone acknowledged an alarm (`python -m hub alarms ack`): sent to the alarm's owner, the
    telemetry partition of its device, on exchange `iot.telemetry` (no device may publish there)."""

    v: Literal[1] = 1
    alarm_id: AlarmId
    device: Identifier
    site: Identifier
    kind: Identifier
    by: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    note: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    ts: EpochMs


class Desired(msgspec.Struct, frozen=True, kw_only=True):
    """A change to one device twin's desired state (routing key `twin.desired.<device>`).

    `desired` maps property names to their new value; `null` drops the property from `desired`.
    `id` makes the change once: the twin applies a change id once, however often it is delivered.
    """

    v: Literal[1] = 1
    id: CommandId
    device: Identifier
    kind: Identifier
    desired: dict[SensorName, Scalar | None]
    ts: EpochMs

    @property
    def routing_key(self) -> str:
        return desired_key(self.device)


class Deferred(msgspec.Struct, frozen=True, kw_only=True):
    """A command that waits for its device (routing key `twin.command.<device>`): sent when the device
    is online before `command.expires`, recorded `expired` otherwise."""

    v: Literal[1] = 1
    device: Identifier
    command: Command

    @property
    def routing_key(self) -> str:
        return deferred_key(self.device)


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """A change of many twins in stages (routing key `twin.rollout.<id>`): `desired` goes to the
    first `stages[0]` percent of `devices` (in their order), then, once they are in sync or
    `pause_ms` has passed, to the next share; the rollout stops when more than `abort_failures`
    percent of the devices changed so far failed."""

    v: Literal[1] = 1
    id: Identifier
    desired: dict[SensorName, Scalar]
    #: (device, kind) pairs, in the order they are changed.
    devices: list[tuple[Identifier, Identifier]]
    stages: list[Annotated[int, msgspec.Meta(ge=1, le=100)]]
    pause_ms: Annotated[int, msgspec.Meta(ge=0)]
    abort_failures: Annotated[float, msgspec.Meta(ge=0, le=100)]
    ts: EpochMs

    @property
    def routing_key(self) -> str:
        return rollout_key(self.id)


Message = (
    Reading
    | Batch
    | Presence
    | Command
    | Ack
    | Alert
    | LogLine
    | AlarmTransition
    | AlarmAck
    | Desired
    | Deferred
    | Rollout
)
M = TypeVar(
    "M", Reading, Batch, Presence, Command, Ack, Alert, LogLine, AlarmTransition, AlarmAck, Desired, Deferred, Rollout
)

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls)
    for cls in (
        Reading,
        Batch,
        Presence,
        Command,
        Ack,
        Alert,
        LogLine,
        AlarmTransition,
        AlarmAck,
        Desired,
        Deferred,
        Rollout,
    )
}


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(body: bytes, cls: type[M]) -> M:
    """Parse and validate `body` as `cls`, or raise `InvalidMessage` with a reason code."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidMessage("oversize", f"{len(body)} bytes > {MAX_BODY_BYTES}")
    try:
        return _decoders[cls].decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise InvalidMessage("schema", str(exc)) from None
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # invalid UTF-8 inside a string is msgspec's UnicodeDecodeError
        raise InvalidMessage("bad_json", str(exc)) from None


def decode_reading(body: bytes, routing_key: str | None = None) -> Reading:
    """A telemetry body as a `Reading`; with `routing_key`, it must agree with the body."""
    reading = decode(body, Reading)
    # The decoded identifiers matched their patterns already: no need to check them again.
    if routing_key is not None and routing_key != f"telemetry.{reading.site}.{reading.kind}.{reading.device}":
        raise InvalidMessage("routing_mismatch", f"body says {reading.routing_key}, routed as {routing_key}")
    return reading


def decode_log_line(body: bytes, routing_key: str | None = None) -> LogLine:
    """A log body as a `LogLine`; with `routing_key`, its device and level must be the body's."""
    line = decode(body, LogLine)
    if routing_key is not None and routing_key != f"logs.{line.device}.{line.level}":
        raise InvalidMessage("routing_mismatch", f"body says {line.routing_key}, routed as {routing_key}")
    return line


#: What tells a batch body from a single reading's, before either is parsed.
_BATCH_KEY = b'"batch"'


def decode_telemetry(body: bytes, routing_key: str | None = None) -> Reading | Batch:
    """A telemetry body: one reading, or a batch (it has `batch`, and no `readings` of its own).

    A batch is valid only whole: one bad entry refuses the message (`schema`, the detail naming
    `$.batch[<index>]`). With `routing_key`, the body's identity must agree with it.
    """
    if _BATCH_KEY not in body:
        return decode_reading(body, routing_key)
    try:
        return decode_reading(body, routing_key)
    except InvalidMessage as single:
        if single.reason != "schema":
            raise
    batch = decode(body, Batch)
    if routing_key is not None and routing_key != f"telemetry.{batch.site}.{batch.kind}.{batch.device}":
        raise InvalidMessage("routing_mismatch", f"body says {batch.routing_key}, routed as {routing_key}")
    return batch
