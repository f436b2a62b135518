"""The page's questions to InfluxDB, as InfluxQL built only from validated values, and the
shaping of the answers into the JSON the page draws (pure functions: no I/O here).

Nothing a browser sends reaches InfluxQL as text: a time range is a key of `RANGES`, and a
device name must pass `hub.core.contract.require_identifier` (no quotes, spaces or slashes), as
must a kind read back from the database before it becomes a measurement name.

Readings are read at the resolution that fits the range (`hub.core.retention.pick_resolution`):
the raw points, else the 1-minute or 1-hour roll-ups, whose `mean_<sensor>` and `max_seq` stand
for the sensor and `seq`. Alerts, commands and presence are not rolled up: always the raw points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hub.clients.influx import Series
from hub.core.contract import RESERVED_FIELDS, require_identifier
from hub.core.measurements import TWINS_MEASUREMENT
from hub.core.models import DeviceModels, default_models
from hub.core.retention import Resolution, RetentionPlan, pick_resolution, quote_identifier
from hub.core.twin import decode_twin

#: The time ranges the page offers: name -> seconds.
RANGES: dict[str, int] = {
    "5m": 300,
    "15m": 900,
    "1h": 3_600,
    "6h": 21_600,
    "24h": 86_400,
    "7d": 604_800,
    "30d": 2_592_000,
    "1y": 31_536_000,
}
DEFAULT_RANGE = "15m"
#: Buckets per chart: the GROUP BY interval is the range divided by this (whole seconds, at least 1).
POINTS_PER_CHART = 120
#: Rows in the device's alert and command tables.
EVENT_ROWS = 50
#: Command statuses that are an outcome (everything but `sent`).
OUTCOMES = ("ok", "error", "unsupported", "expired", "timeout")


#: The raw points, in the database's default retention policy (named by no query).
RAW = Resolution("raw", "", 0)


class UnknownRange(ValueError):
    """A time range that is not one of `RANGES`."""


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    resolution: Resolution = RAW

    @property
    def interval_s(self) -> int:
        return max(1, self.resolution.bucket_s, math.ceil(self.seconds / POINTS_PER_CHART))

    def readings_from(self, measurement: str) -> str:
        """`measurement` (a quoted name or a /regex/) at the window's resolution: the roll-up's policy named."""
        if self.resolution.raw:
            return measurement
        return f"{quote_identifier(self.resolution.rp)}.{measurement}"

    @property
    def where_time(self) -> str:
        return f"time > now() - {self.seconds}s"

    @property
    def group_by_time(self) -> str:
        return f"time({self.interval_s}s)"


def window(name: str | None, plan: RetentionPlan | None = None) -> Window:
    """The range `name` up to now, read at the resolution `plan` (the settings' retention) says fits it."""
    name = name or DEFAULT_RANGE
    if name not in RANGES:
        raise UnknownRange(f"range {name!r} is not one of {', '.join(RANGES)}")
    seconds = RANGES[name]
    resolution = pick_resolution(plan or RetentionPlan(db=""), -seconds * 1000, 0, 0)
    return Window(name, seconds, RAW if resolution.raw else resolution)


# --- statements ------------------------------------------------------------------------------


def presence_statement() -> str:
    """Each device's last presence transition, whenever it was (transitions are rare)."""
    return 'SELECT last("state") AS "state" FROM "device_status" GROUP BY "device", "site", "kind", "protocol"'


def overview_statements(w: Window) -> list[str]:
    t, g = w.where_time, w.group_by_time
    seq = w.resolution.field("seq", "max")
    return [
        presence_statement(),
        # Readings/s per kind, from each device's seq counter (robust to batching and buckets).
        f'SELECT sum("per_s") AS "per_s" FROM (SELECT non_negative_derivative(max("{seq}"), 1s) AS "per_s" '
        f'FROM {w.readings_from("/.*/")} WHERE {t} GROUP BY {g}, "device") WHERE {t} GROUP BY {g} fill(none)',
        f'SELECT count("id") AS "alerts" FROM "alerts" WHERE {t} GROUP BY {g}, "severity" fill(0)',
        f'SELECT count("id") AS "commands" FROM "commands" WHERE {t} GROUP BY "status"',
        f'SELECT mean("rtt_ms") AS "mean", percentile("rtt_ms", 95) AS "p95" FROM "commands" '
        f"WHERE \"status\" = 'ok' AND {t} GROUP BY {g} fill(none)",
    ]


def device_presence_statement(device: str) -> str:
    device = require_identifier(device, "device")
    return (
        f'SELECT last("state") AS "state" FROM "device_status" WHERE "device" = \'{device}\' '
        'GROUP BY "site", "kind", "protocol"'
    )


def device_statements(device: str, kind: str, w: Window, models: DeviceModels | None = None) -> list[str]:
    """The device page's questions; the on/off chart asks for every boolean sensor of the models."""
    device = require_identifier(device, "device")
    kind = require_identifier(kind, "kind")
    t, g = w.where_time, w.group_by_time
    mine = f"\"device\" = '{device}' AND {t}"
    booleans = "|".join((models or default_models()).sensor_names("boolean"))
    means = "*" if w.resolution.raw else "/^mean_/"
    return [
        f"SELECT mean({means}) FROM {w.readings_from(quote_identifier(kind))} WHERE {mine} GROUP BY {g} fill(none)",
        f'SELECT last(/^({booleans})$/) FROM "{kind}" WHERE {mine} GROUP BY {g} fill(none)',
        f'SELECT "severity", "rule", "sensor", "value", "message" FROM "alerts" WHERE {mine} '
        f"ORDER BY time DESC LIMIT {EVENT_ROWS}",
        f'SELECT "command", "status", "origin", "rtt_ms", "detail" FROM "commands" WHERE {mine} '
        f"ORDER BY time DESC LIMIT {EVENT_ROWS}",
    ]


# --- shaping the answers ----------------------------------------------------------------------

Points = list[tuple[int, float]]


def _points(series: Series, column: str) -> Points:
    points: Points = []
    for row in series.rows:
        value = row.get(column)
        if isinstance(value, bool):
            points.append((row["time"], 1.0 if value else 0.0))
        elif isinstance(value, int | float):
            points.append((row["time"], float(value)))
    return points


def devices(presence: list[Series]) -> list[dict[str, str]]:
    found = [
        {
            "device": s.tags.get("device", ""),
            "site": s.tags.get("site", ""),
            "kind": s.tags.get("kind", ""),
            "protocol": s.tags.get("protocol", ""),
            "state": str(s.rows[0].get("state", "")) if s.rows else "",
        }
        for s in presence
    ]
    return sorted(found, key=lambda d: (d["site"], d["device"]))


def overview(w: Window, results: list[list[Series]], now_ms: int) -> dict[str, Any]:
    """`now_ms` is the server's clock: the page draws up to it, not up to the browser's."""
    presence, rates, alerts, commands, rtt = results
    fleet = devices(presence)
    by_site: dict[tuple[str, str], dict[str, Any]] = {}
    for d in fleet:
        entry = by_site.setdefault(
            (d["site"], d["protocol"]), {"site": d["site"], "protocol": d["protocol"], "online": 0, "offline": 0}
        )
        entry["online" if d["state"] == "online" else "offline"] += 1
    outcomes = {s.tags.get("status", ""): int(s.rows[0].get("commands") or 0) for s in commands if s.rows}
    done = sum(n for status, n in outcomes.items() if status in OUTCOMES)
    return {
        "range": w.name,
        "interval_s": w.interval_s,
        "resolution": w.resolution.name,
        "now_ms": now_ms,
        "online": sum(d["state"] == "online" for d in fleet),
        "offline": sum(d["state"] != "online" for d in fleet),
        "by_site_protocol": [by_site[key] for key in sorted(by_site)],
        "readings_per_s": [{"name": s.name, "points": _points(s, "per_s")} for s in rates],
        "alerts": [{"name": s.tags.get("severity", ""), "points": _points(s, "alerts")} for s in alerts],
        "command_outcomes": outcomes,
        "command_success_pct": round(100.0 * outcomes.get("ok", 0) / done, 1) if done else None,
        "rtt_ms": [{"name": column, "points": _points(s, column)} for s in rtt for column in ("mean", "p95")],
    }


def twin_statement(device: str) -> str:
    """The device's twin: the newest row of `twins`."""
    where = f"\"device\" = '{require_identifier(device, 'device')}'"
    return f'SELECT "doc" FROM "{TWINS_MEASUREMENT}" WHERE {where} ORDER BY time DESC LIMIT 1'


def twin_rows(series: list[Series]) -> dict[str, Any] | None:
    """The device page's twin: in_sync, version, and one row per property (desired, reported, state)."""
    docs = [str(row.get("doc") or "") for s in series for row in s.rows[:1]]
    if not docs:
        return None
    try:
        twin = decode_twin(docs[0])
    except ValueError:
        return None
    delta = twin.delta
    properties = []
    for name in sorted({*twin.desired, *twin.reported}):
        converging = twin.converging.get(name)
        if name not in twin.desired:
            state = "reported"
        elif name not in delta:
            state = "in sync"
        elif converging is not None and converging.state == "failed":
            state = f"failed: {converging.reason}"
        else:
            state = converging.state if converging is not None else "pending"
        properties.append(
            {"name": name, "desired": twin.desired.get(name), "reported": twin.reported.get(name), "state": state}
        )
    return {"in_sync": not delta, "version": twin.version, "properties": properties}


def device_detail(
    w: Window,
    identity: dict[str, str],
    results: list[list[Series]],
    now_ms: int,
    models: DeviceModels | None = None,
) -> dict[str, Any]:
    """The device page's JSON; every numeric field is a reading (one its model does not declare has no unit)."""
    known = models or default_models()
    means, states, alerts, commands = results
    readings = []
    for s in means:
        for column in s.rows[0] if s.rows else []:
            sensor = column.removeprefix("mean_")
            if not w.resolution.raw:  # mean(mean_<sensor>)
                sensor = sensor.removeprefix("mean_")
            if column.startswith("mean_") and sensor not in RESERVED_FIELDS:
                unit = known.unit(sensor, identity.get("kind"))
                readings.append({"name": sensor, "unit": unit, "points": _points(s, column)})
    switches = []
    for s in states:
        for column in s.rows[0] if s.rows else []:
            sensor = column.removeprefix("last_")
            points = _points(s, column)
            if column.startswith("last_") and points:
                switches.append({"name": sensor, "unit": "on/off", "points": points})

    def rows(series: list[Series]) -> list[dict[str, Any]]:
        return [row for s in series for row in s.rows]

    return {
        **identity,
        "range": w.name,
        "interval_s": w.interval_s,
        "resolution": w.resolution.name,
        "now_ms": now_ms,
        "readings": sorted(readings, key=lambda r: (r["unit"], r["name"])),
        "switches": switches,
        "alerts": rows(alerts),
        "commands": rows(commands),
    }
