"""InfluxDB line protocol as pure functions: how the InfluxDB outputs encode a `Point`.

The escaping here is complete: a tag or field value that reaches this module can never break a
line or inject a second one. A `trusted` point (its names matched the contract's identifier
patterns, as a `Reading`'s do) skips the escaping of names: the store's hot path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hub.core.points import FieldValue, Point

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\\": "\\\\"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\\": "\\\\"})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\", "\n": r"\n", "\r": r"\r"})


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key."""
    return name.translate(_KEY_ESCAPES)


def format_field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("InfluxDB cannot store NaN or infinity")
        return repr(value)
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def point(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ms: int) -> str:
    """One line: tags sorted by key (InfluxDB's preferred order), empty tag values left out."""
    if not fields:
        raise ValueError("a point needs at least one field")
    tag_part = "".join(f",{escape_key(key)}={escape_key(value)}" for key, value in sorted(tags.items()) if value != "")
    field_part = ",".join(f"{escape_key(key)}={format_field(value)}" for key, value in fields.items())
    return f"{escape_measurement(measurement)}{tag_part} {field_part} {int(ts_ms)}"


def point_line(p: Point) -> str:
    """The point as one line of line protocol (tags sorted, empty tag values left out)."""
    if not p.trusted:
        return point(p.measurement, p.tags, p.fields, p.ts_ms)
    if not p.fields:
        raise ValueError("a point needs at least one field")
    tag_part = "".join([f",{key}={value}" for key, value in p.tags.items() if value])
    fields = []
    for key, value in p.fields.items():
        kind = type(value)
        if kind is float:
            fields.append(f"{key}={value!r}")
        elif kind is bool:
            fields.append(f"{key}=true" if value else f"{key}=false")
        elif kind is int:
            fields.append(f"{key}={value}i")
        else:
            fields.append(f"{key}={format_field(value)}")
    return f"{p.measurement}{tag_part} {','.join(fields)} {p.ts_ms}"


def lines_payload(points: Sequence[Point]) -> bytes:
    """The body of one write: the points' lines, newline-separated."""
    return "\n".join(map(point_line, points)).encode()
