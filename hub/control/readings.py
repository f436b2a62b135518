"""A device's readings over a past range (`python -m hub readings`), at the resolution that fits it.

The range picks the resolution (`hub.core.retention.pick_resolution`): the raw points, else the
1-minute or 1-hour roll-ups. Every row is one bucket of one sensor with its mean, minimum and
maximum: of the raw values, or of the roll-up's `mean_`, `min_`, `max_` fields (the mean of
the means, the lowest minimum, the highest maximum). `readings_statement` and `shape` are the
plain core; `read_readings` only fetches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.clients.influx import Series, query
from hub.core.config import Settings
from hub.core.contract import RESERVED_FIELDS, require_identifier
from hub.core.measurements import is_kind_measurement
from hub.core.retention import AGGREGATES, Resolution, RetentionPlan, pick_resolution, quote_identifier

#: Buckets shown unless told otherwise.
DEFAULT_POINTS = 24


@dataclass(frozen=True)
class Bucket:
    time_ms: int
    sensor: str
    mean: float | None
    min: float | None
    max: float | None

    def as_json(self) -> dict[str, Any]:
        return {"time": self.time_ms, "sensor": self.sensor, "mean": self.mean, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class Readings:
    device: str
    resolution: Resolution
    bucket_s: int
    buckets: list[Bucket]

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "resolution": self.resolution.name,
            "retention_policy": self.resolution.rp,
            "bucket_s": self.bucket_s,
            "buckets": [bucket.as_json() for bucket in self.buckets],
        }


def bucket_for(resolution: Resolution, since_s: int, points: int) -> int:
    """Seconds per bucket: the range over `points`, whole multiples of the roll-up's own bucket."""
    wanted = max(1, math.ceil(since_s / max(1, points)))
    if resolution.raw:
        return wanted
    return math.ceil(wanted / resolution.bucket_s) * resolution.bucket_s


def readings_statement(device: str, kinds: Sequence[str], resolution: Resolution, since_s: int, bucket_s: int) -> str:
    """One InfluxQL SELECT of every aggregate of every numeric field of `device`, over its kinds' measurements."""
    device = require_identifier(device, "device")
    sources = ", ".join(
        (quote_identifier(resolution.rp) + "." if not resolution.raw else "")
        + quote_identifier(require_identifier(kind, "kind"))
        for kind in kinds
    )
    fields = ", ".join(
        f"{aggregate}(*)" if resolution.raw else f"{aggregate}(/^{aggregate}_/)" for aggregate in AGGREGATES
    )
    return (
        f"SELECT {fields} FROM {sources} WHERE \"device\" = '{device}' AND time > now() - {int(since_s)}s "
        f"GROUP BY time({int(bucket_s)}s) fill(none)"
    )


def shape(series: Sequence[Series], resolution: Resolution) -> list[Bucket]:
    """The buckets of the answer, oldest first, a row per sensor (the contract's own fields, `seq`, left out)."""
    found: dict[tuple[int, str], dict[str, float | None]] = {}
    for one in series:
        for row in one.rows:
            for column, value in row.items():
                aggregate, _, field = column.partition("_")
                if aggregate not in AGGREGATES or not field:
                    continue
                if not resolution.raw:  # max(max_<sensor>)
                    field = field.removeprefix(f"{aggregate}_")
                if field in RESERVED_FIELDS or isinstance(value, bool):
                    continue
                cell = found.setdefault((int(row["time"]), field), {})
                cell[aggregate] = float(value) if isinstance(value, int | float) else None
    return [
        Bucket(time_ms, sensor, cell.get("mean"), cell.get("min"), cell.get("max"))
        for (time_ms, sensor), cell in sorted(found.items())
        if any(v is not None for v in cell.values())
    ]


def read_readings(
    settings: Settings, device: str, since_s: int, points: int = DEFAULT_POINTS, plan: RetentionPlan | None = None
) -> Readings:
    """`device`'s readings over the last `since_s` seconds, as the reader account."""
    device = require_identifier(device, "device")
    resolution = pick_resolution(plan or settings.retention, -since_s * 1000, 0, 0)
    bucket_s = bucket_for(resolution, since_s, points)
    [measurements] = query(settings, "SHOW MEASUREMENTS")
    kinds = sorted(
        name for name in (str(r["name"]) for one in measurements for r in one.rows) if is_kind_measurement(name)
    )
    if not kinds:
        return Readings(device, resolution, bucket_s, [])
    [series] = query(settings, readings_statement(device, kinds, resolution, since_s, bucket_s))
    return Readings(device, resolution, bucket_s, shape(series, resolution))
