"""What the system is doing now, as InfluxDB tells it: readings stored and their rate, devices
online, alerts and alarms raised and commands recorded since a moment (the demo's start).

`RateWindow` and `Snapshot` are plain values; `read_activity` runs the queries.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.clients.influx import query
from hub.control.fleet_view import DeviceView, build_fleet, kinds_from_measurements
from hub.core.config import Settings

#: The readings/s figure is the slope over this much recent history (the hub writes in batches,
#: so a one-second slope jumps around).
RATE_WINDOW_S = 5.0
#: How many recent alerts and commands a snapshot carries.
RECENT_ROWS = 6
#: Alarm rows (raised, cleared) a snapshot reads at most.
MAX_ALARM_ROWS = 10_000


class RateWindow:
    """Readings per second from successive cumulative counts."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at_s: float, total: int) -> float:
        self._samples.append((at_s, total))
        while len(self._samples) > 2 and at_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        first_at, first_total = self._samples[0]
        return (total - first_total) / (at_s - first_at) if at_s > first_at else 0.0


@dataclass(frozen=True)
class Snapshot:
    stored: int = 0
    rate_per_s: float = 0.0
    fleet: list[DeviceView] = field(default_factory=list)
    alerts_by_severity: dict[str, int] = field(default_factory=dict)
    recent_alerts: list[dict[str, Any]] = field(default_factory=list)
    commands_by_status: dict[str, int] = field(default_factory=dict)
    recent_commands: list[dict[str, Any]] = field(default_factory=list)
    dead_lettered: int = 0
    #: `alarms` rows `raised` and `cleared` since the start, oldest first.
    alarm_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def online(self) -> int:
        return sum(view.online and not view.stale for view in self.fleet)

    def alarms(self, transition: str) -> int:
        return sum(row.get("transition") == transition for row in self.alarm_rows)

    def alarm_story(self) -> str | None:
        """One alarm raised and then cleared, in a line (the first one), or None yet."""
        raised = {row.get("id"): row for row in self.alarm_rows if row.get("transition") == "raised"}
        for row in self.alarm_rows:
            first = raised.get(row.get("id"))
            if row.get("transition") == "cleared" and first is not None:
                value = first.get("value")
                shown = f" {first.get('sensor')} {value:g}" if isinstance(value, int | float) else ""
                return (
                    f"alarm {row.get('id')} raised {_clock(first.get('time'))} ({first.get('severity')}{shown}),"
                    f" cleared by itself {_clock(row.get('time'))} after {row.get('count')} trip(s)"
                )
        return None

    def by_protocol(self) -> dict[str, int]:
        return dict(Counter(view.protocol for view in self.fleet if view.online and not view.stale))


def _total(series: Any, column: str) -> int:
    return sum(int(row.get(column) or 0) for one in series for row in one.rows)


def read_activity(settings: Settings, since_ms: int, rates: RateWindow) -> Snapshot:
    """One round of queries (two HTTP requests); `StorageUnavailable` if InfluxDB cannot answer."""
    since = f"time >= {since_ms}ms"
    newest = "GROUP BY device ORDER BY time DESC LIMIT 1"
    statements = [
        "SHOW MEASUREMENTS",
        f'SELECT * FROM "device_status" {newest}',
        f'SELECT COUNT("id") FROM "alerts" WHERE {since} GROUP BY severity',
        f'SELECT * FROM "alerts" WHERE {since} ORDER BY time DESC LIMIT {RECENT_ROWS}',
        f'SELECT COUNT("id") FROM "commands" WHERE {since} GROUP BY status',
        f'SELECT * FROM "commands" WHERE {since} ORDER BY time DESC LIMIT {RECENT_ROWS}',
        'SELECT * FROM "hub_stats" GROUP BY service ORDER BY time DESC LIMIT 1',
        f'SELECT * FROM "alarms" WHERE {since} AND ("transition" = \'raised\' OR "transition" = \'cleared\')'
        f" ORDER BY time ASC LIMIT {MAX_ALARM_ROWS}",
    ]
    measurements, status, alert_counts, alerts, command_counts, commands, stats, alarms = query(settings, *statements)
    kinds = kinds_from_measurements(str(row["name"]) for one in measurements for row in one.rows)
    readings: list[Any] = []
    stored = 0
    if kinds:
        quoted = ",".join(f'"{kind}"' for kind in kinds)
        latest, counts = query(
            settings, f"SELECT * FROM {quoted} {newest}", f'SELECT COUNT("seq") FROM {quoted} WHERE {since}'
        )
        readings = latest
        stored = _total(counts, "count")
    return Snapshot(
        stored=stored,
        rate_per_s=rates.add(time.monotonic(), stored),
        fleet=build_fleet(status, readings),
        alerts_by_severity={one.tags.get("severity", "?"): _total([one], "count") for one in alert_counts},
        recent_alerts=[row for one in alerts for row in one.rows],
        commands_by_status={one.tags.get("status", "?"): _total([one], "count") for one in command_counts},
        recent_commands=[row for one in commands for row in one.rows],
        dead_lettered=_total(stats, "dead_lettered"),
        alarm_rows=sorted(({**one.tags, **row} for one in alarms for row in one.rows), key=lambda r: int(r["time"])),
    )


def _clock(at_ms: Any) -> str:
    return datetime.fromtimestamp(int(at_ms) / 1000).strftime("%H:%M:%S") if at_ms else "--:--:--"
