"""`Point`: what every producer of the hub emits and every output takes.

A point is a measurement, its tags, its fields and a timestamp (Unix ms), as in InfluxDB and
Telegraf; no producer builds a storage format. `trusted` says its measurement, tag keys and
values and field keys already matched the contract's identifier patterns (a `Reading`'s do),
its tags are in key order and its numbers are finite, so an output may skip escaping and
sorting them: the store's hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

FieldValue = bool | int | float | str


class Point(NamedTuple):
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    ts_ms: int
    trusted: bool = False
