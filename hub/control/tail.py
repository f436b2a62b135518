"""`tail`: what crosses exchange `iot`, one readable line per message.

`describe()` is the plain core (routing key + body -> a short text and a style); `Tail` only
binds an exclusive, auto-delete queue and hands each delivery to a callback. What a device
wrote reaches the terminal only through `hub.core.printable`: its control characters escaped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from hub.clients.amqp import close_quietly, connect
from hub.core.config import Settings
from hub.core.contract import (
    EXCHANGE,
    Ack,
    AlarmTransition,
    Alert,
    Batch,
    Command,
    Presence,
    decode,
    decode_log_line,
    decode_telemetry,
    is_identifier,
)
from hub.core.errors import BrokerUnavailable, ConfigError, InvalidMessage
from hub.core.models import DeviceModels, default_models
from hub.core.printable import printable, printable_json

#: A slow terminal must not make the broker hoard messages for us: past this many waiting,
#: the oldest are dropped (tail is a viewer, not a consumer of record).
MAX_BACKLOG_MESSAGES = 10_000
#: How much of a body that is not valid JSON of the contract is shown.
RAW_PREVIEW_CHARS = 160
POLL_S = 0.2

_SEVERITY_STYLE = {"info": "blue", "warning": "yellow", "critical": "bold red"}
_LEVEL_STYLE = {"debug": "dim", "info": "blue", "warning": "yellow", "error": "red", "critical": "bold red"}


def require_pattern(pattern: str) -> str:
    """A routing-key pattern of contract words, `*` and `#` (e.g. `telemetry.plant-a.#`)."""
    words = pattern.split(".")
    if not all(word in ("*", "#") or is_identifier(word) for word in words):
        raise ConfigError(
            f"routing pattern {pattern!r} is not allowed: use dot-separated words of a-z, 0-9, '_', '-', "
            "or * (one word) and # (any words), e.g. telemetry.plant-a.# or alerts.critical.#"
        )
    return pattern


@dataclass(frozen=True)
class Line:
    """What `tail` shows for one message."""

    text: str
    style: str


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pairs(values: dict[str, Any], unit: Callable[[str], str] | None = None) -> str:
    parts = []
    for name, value in values.items():
        suffix = unit(name) if unit is not None and not isinstance(value, bool) else ""
        parts.append(f"{name}={_value(value)}{suffix}")
    return " ".join(parts)


def describe(routing_key: str, body: bytes, app_id: str | None = None, models: DeviceModels | None = None) -> Line:
    """A compact, readable text for a message and the style that says what kind it is.

    Units come from `models` (the shipped device models when not given). The text is `printable`:
    whatever the body holds, no control character of it reaches a terminal.
    """
    line = _describe(routing_key, body, app_id, models)
    return Line(printable(line.text), line.style)


def _describe(routing_key: str, body: bytes, app_id: str | None, models: DeviceModels | None) -> Line:
    family = routing_key.split(".", 1)[0]
    try:
        if family == "telemetry":
            telemetry = decode_telemetry(body)
            known = models or default_models()
            if isinstance(telemetry, Batch):  # its newest entry stands for it
                entries = telemetry.readings()
                newest = entries[-1]
                text = _pairs(newest.readings, lambda sensor: known.unit(sensor, newest.kind))
                return Line(f"batch of {len(entries)}, seq {entries[0].seq}..{newest.seq}; newest: {text}", "green")
            text = _pairs(telemetry.readings, lambda sensor: known.unit(sensor, telemetry.kind))
            return Line(f"{text}  seq={telemetry.seq}", "green")
        if family == "status":
            presence = decode(body, Presence)
            text = (
                f"{presence.state} {presence.protocol} {presence.kind}@{presence.site} every {presence.interval_ms} ms"
            )
            return Line(
                text + (f" fw {presence.fw}" if presence.fw else ""), "cyan" if presence.state == "online" else "yellow"
            )
        if family == "commands":
            command = decode(body, Command)
            origin = f" from {app_id}" if app_id else ""
            args = f" {_pairs(command.args)}" if command.args else ""
            return Line(f"{command.command}{args}  id={command.id[:8]}{origin}", "magenta")
        if family == "acks":
            ack = decode(body, Ack)
            detail = f" {ack.detail}" if ack.detail else ""
            state = f"  state {_pairs(ack.state)}" if ack.state else ""
            return Line(f"{ack.status}{detail}{state}  id={ack.id[:8]}", "bold green" if ack.status == "ok" else "red")
        if family == "alerts":
            alert = decode(body, Alert)
            text = f"{alert.severity} {alert.rule}: {alert.message} ({alert.sensor}={_value(alert.value)})"
            return Line(text, _SEVERITY_STYLE[alert.severity])
        if family == "logs":
            log_line = decode_log_line(body)
            fields = f"  {_pairs(dict(log_line.fields))}" if log_line.fields else ""
            return Line(f"{log_line.level} {log_line.message}{fields}", _LEVEL_STYLE[log_line.level])
        if family == "alarms":
            alarm = decode(body, AlarmTransition)
            by = f" by {alarm.acked_by}" if alarm.acked_by else ""
            text = f"{alarm.transition}{by} {alarm.severity} {alarm.alarm_id} ({alarm.rule}: {alarm.sensor}="
            text += f"{_value(alarm.value) if alarm.value is not None else '-'}, {alarm.count} trips)"
            return Line(text, "green" if alarm.transition == "cleared" else _SEVERITY_STYLE[alarm.severity])
    except InvalidMessage as exc:
        return Line(f"invalid ({exc.reason}): {_preview(body)}", "bold red")
    return Line(_preview(body), "white")


def _preview(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").replace("\n", " ")
    return text if len(text) <= RAW_PREVIEW_CHARS else text[:RAW_PREVIEW_CHARS] + "…"


def as_json_line(routing_key: str, body: bytes, app_id: str | None, received_ms: int) -> str:
    """One JSON object per message, the body parsed when it is JSON, else as text (`printable_json`)."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body.decode("utf-8", errors="replace")
    record = {"time": received_ms, "routing_key": routing_key, "app_id": app_id, "body": parsed}
    return printable_json(record)


Handler = Callable[[str, bytes, BasicProperties], None]


class Tail:
    """An exclusive, auto-delete queue bound to `patterns` on exchange `iot`; a context manager."""

    def __init__(self, settings: Settings, patterns: Sequence[str]) -> None:
        self.settings = settings
        self.patterns = [require_pattern(p) for p in patterns] or ["#"]
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._handler: Handler = lambda _rk, _body, _props: None
        self.count = 0
        #: Messages `follow` hands over at most; one read from the broker may bring more than are left.
        self._max_count: int | None = None

    def __enter__(self) -> Tail:
        self._connection = connect(self.settings, "tail")
        try:
            channel = self._connection.channel()
            queue = channel.queue_declare(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": MAX_BACKLOG_MESSAGES, "x-overflow": "drop-head"},
            ).method.queue
            for pattern in self.patterns:
                channel.queue_bind(queue, EXCHANGE, routing_key=pattern)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
        except pika.exceptions.AMQPError as exc:
            close_quietly(self._connection)
            raise BrokerUnavailable(f"RabbitMQ refused the tail queue: {exc!r}") from None
        self._channel = channel
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        close_quietly(self._connection)
        self._connection = None

    def follow(
        self,
        handler: Handler,
        max_count: int | None = None,
        seconds: float | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Hand each message to `handler` until `max_count` messages, `seconds` passed or `stop` is set
        (looked at every `POLL_S`, between two reads from the broker: see `hub.core.signals`)."""
        connection = self._connection
        if connection is None:
            raise RuntimeError("Tail is used outside its `with` block")
        self._handler = handler
        self._max_count = max_count
        deadline = None if seconds is None else time.monotonic() + seconds
        while max_count is None or self.count < max_count:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if stop is not None and stop.is_set():
                break
            try:
                connection.process_data_events(time_limit=POLL_S)
            except (pika.exceptions.AMQPError, OSError) as exc:
                raise BrokerUnavailable(f"lost the connection to RabbitMQ: {exc!r}") from None
        return self.count

    def _on_message(self, channel: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        if self._max_count is not None and self.count >= self._max_count:
            return  # auto-acked and dropped: the caller asked for no more
        self.count += 1
        self._handler(method.routing_key, body, props)
