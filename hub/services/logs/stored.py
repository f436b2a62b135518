"""A log line as a point of `device_logs`, and the limiter's summary as one.

A point is identified by measurement, tags and time: `device`, `level` and the line's own `ts`.
A line delivered again (a replay after a crash) overwrites itself; two lines of one device at
one level in the same millisecond are one point, so a device stamps each line at least 1 ms
after the previous one of that level (as for readings). A summary carries the tag `source` =
`hub`, so it never overwrites a line of the device's own.
"""

from __future__ import annotations

import msgspec

from hub.core.contract import LogLine
from hub.core.measurements import LOGS_MEASUREMENT
from hub.core.points import FieldValue, Point
from hub.services.logs.limiter import Summary

#: The `source` tag of lines the hub writes about a device (its summaries); a device's own have none.
HUB_SOURCE = "hub"
#: The level of a summary line.
SUMMARY_LEVEL = "warning"


def line_point(line: LogLine) -> Point:
    """`fields`, when given, are kept as one JSON string: their names and types vary from line to
    line, and InfluxDB refuses a field whose type changes."""
    fields: dict[str, FieldValue] = {"message": line.message}
    if line.fields:
        fields["fields"] = msgspec.json.encode(line.fields).decode()
    return Point(LOGS_MEASUREMENT, {"device": line.device, "level": line.level}, fields, line.ts)


def summary_message(summary: Summary, rate: float) -> str:
    seconds = max(1, round((summary.until_ms - summary.since_ms) / 1000))
    return f"rate limited: {summary.dropped} log lines dropped in {seconds} s (over {rate:g} lines/s)"


def summary_point(summary: Summary, rate: float) -> Point:
    fields: dict[str, FieldValue] = {"message": summary_message(summary, rate), "dropped": summary.dropped}
    tags = {"device": summary.device, "level": SUMMARY_LEVEL, "source": HUB_SOURCE}
    return Point(LOGS_MEASUREMENT, tags, fields, summary.until_ms)
