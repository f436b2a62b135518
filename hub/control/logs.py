"""`hub logs`: devices' log lines, stored (through the outputs' reader) or live (a temporary queue).

The plain core: `levels_from` (a level and every one above it), `parse_since` (`1h` -> seconds),
`LogEntry` (one line, from a stored row or a live body) and `follow_patterns` (the routing keys
a live view binds, by severity, as `hub tail` does). `read_logs` only fetches; `LogFollower`
only binds its queue and hands each line over. Nothing here prints: the CLI escapes what a
device wrote before it reaches a terminal.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pika.spec import BasicProperties

from hub.control.fleet_view import read_fleet, select
from hub.control.tail import Tail
from hub.core.config import Settings
from hub.core.contract import LOG_LEVELS, decode_log_line, require_identifier
from hub.core.errors import ConfigError, InvalidMessage
from hub.outputs.registry import open_reader

#: Lines `hub logs` shows at most unless told otherwise (the newest of the period).
DEFAULT_LIMIT = 100
DEFAULT_SINCE = "1h"
_SINCE = re.compile(r"^(\d+)([smhdw]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def levels_from(minimum: str) -> tuple[str, ...]:
    """`minimum` and every level more severe: `warning` -> warning, error, critical."""
    if minimum not in LOG_LEVELS:
        raise ConfigError(f"log level {minimum!r} is not one of {', '.join(LOG_LEVELS)}")
    return LOG_LEVELS[LOG_LEVELS.index(minimum) :]


def parse_since(text: str) -> int:
    """`90`, `90s`, `15m`, `1h`, `2d`, `1w` -> seconds (at least 1)."""
    match = _SINCE.match(text.strip())
    if match is None or int(match.group(1)) < 1:
        raise ConfigError(f"--since {text!r} is not a duration: give e.g. 90s, 15m, 1h, 2d or 1w")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class LogEntry:
    """One log line as `hub logs` shows it. `source`: `hub` for the hub's lines about a device
    (a rate-limit summary), `device` for its own."""

    time: int
    device: str
    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = "device"

    @property
    def key(self) -> tuple[str, str, int, str]:
        """What identifies a stored line (device, level, time, source): a line seen twice is one."""
        return (self.device, self.level, self.time, self.source)

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "device": self.device,
            "level": self.level,
            "message": self.message,
            "fields": self.fields,
            "source": self.source,
        }


def entry_from_row(row: dict[str, Any]) -> LogEntry:
    """A `device_logs` row (`time`, tags and fields as columns) as a `LogEntry`."""
    fields: dict[str, Any] = {}
    raw = row.get("fields")
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"fields": raw}
        fields = parsed if isinstance(parsed, dict) else {"fields": parsed}
    if row.get("dropped") is not None:
        fields["dropped"] = row["dropped"]
    return LogEntry(
        time=int(row.get("time") or 0),
        device=str(row.get("device") or ""),
        level=str(row.get("level") or ""),
        message=str(row.get("message") or ""),
        fields=fields,
        source=str(row.get("source") or "device"),
    )


def entry_from_body(routing_key: str, body: bytes) -> LogEntry:
    """A live log body as a `LogEntry`; `InvalidMessage` when it breaks the contract."""
    line = decode_log_line(body, routing_key)
    return LogEntry(line.ts, line.device, line.level, line.message, dict(line.fields))


def follow_patterns(device: str | None, levels: Sequence[str]) -> list[str]:
    """One binding per level: `logs.<device or *>.<level>`."""
    who = "*" if device is None else require_identifier(device, "device")
    return [f"logs.{who}.{level}" for level in levels]


def site_devices(settings: Settings, site: str) -> list[str]:
    """The devices the fleet view places at `site` (what the hub recorded of them)."""
    return [view.device for view in select(read_fleet(settings), site=require_identifier(site, "site"))]


def read_logs(
    settings: Settings,
    since_s: int,
    devices: Sequence[str] | None = None,
    levels: Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[LogEntry]:
    """The newest `limit` lines of the last `since_s` seconds, oldest first, through the outputs' reader."""
    for device in devices or ():
        require_identifier(device, "device")
    reader = open_reader(settings)
    try:
        rows = reader.device_logs(since_s, devices=devices, levels=levels, limit=limit)
    finally:
        reader.close()
    return sorted(map(entry_from_row, rows), key=lambda entry: entry.time)


#: What a live view hands over: a line, or the routing key and the reason of a body that breaks the contract.
OnEntry = Callable[[LogEntry], None]
OnInvalid = Callable[[str, bytes, InvalidMessage], None]


class LogFollower:
    """Live log lines through a temporary, exclusive queue bound by severity (`hub.control.tail.Tail`).

    `devices`: only theirs (a site's); lines whose key is in `seen` are skipped (already shown
    from the store). A context manager: the queue is bound on entry, so nothing published after
    it is missed.
    """

    def __init__(
        self,
        settings: Settings,
        device: str | None,
        levels: Sequence[str],
        devices: Iterable[str] | None = None,
        seen: Iterable[tuple[str, str, int, str]] = (),
    ) -> None:
        self.tail = Tail(settings, follow_patterns(device, levels))
        self.devices = None if devices is None else frozenset(devices)
        self.seen = set(seen)

    def __enter__(self) -> LogFollower:
        self.tail.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tail.__exit__(None, None, None)

    def follow(
        self,
        on_entry: OnEntry,
        on_invalid: OnInvalid,
        seconds: float | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        shown = 0

        def hand_over(routing_key: str, body: bytes, _props: BasicProperties) -> None:
            nonlocal shown
            device = routing_key.split(".")[1] if routing_key.count(".") == 2 else ""
            if self.devices is not None and device not in self.devices:
                return
            try:
                entry = entry_from_body(routing_key, body)
            except InvalidMessage as exc:
                on_invalid(routing_key, body, exc)
                return
            if entry.key in self.seen:
                return
            shown += 1
            on_entry(entry)

        self.tail.follow(hand_over, seconds=seconds, stop=stop)
        return shown
