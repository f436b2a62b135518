"""InfluxDB line protocol as pure functions.

Identifiers are already validated by the contract, but the escaping here is complete anyway:
a tag or field value that reaches this module can never break a line or inject a second one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hub.core.contract import Protocol, Reading

FieldValue = bool | int | float | str

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


def reading_line(reading: Reading, protocol: Protocol) -> str:
    """The reading as stored: measurement = kind, tags device/protocol/site, fields readings + seq.

    The hot path of the store: a `Reading` only exists once its identifiers and sensor names
    matched the contract's patterns (no comma, space, quote, '=' or backslash possible), so
    they need no escaping here; the general `point` escapes everything.
    """
    fields = ",".join(
        f"{name}={'true' if value else 'false'}" if isinstance(value, bool) else f"{name}={value!r}"
        for name, value in reading.readings.items()
    )
    return (
        f"{reading.kind},device={reading.device},protocol={protocol},site={reading.site} "
        f"{fields},seq={reading.seq}i {reading.ts}"
    )
