"""Durations people write: `15m`, `10s`, `500ms`, `1h`, or a number of seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, None: 1_000}


def duration_ms(value: str | float) -> int:
    """Milliseconds of `value`; `ValueError` naming the forms otherwise (and for 0)."""
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a duration: a number with ms, s, m or h, e.g. 15m")
    ms = round(float(match.group(1)) * _UNIT_MS[match.group(2)])
    if ms <= 0:
        raise ValueError(f"{value!r}: a duration must be longer than 0")
    return ms


def durations_ms(value: str) -> tuple[int, ...]:
    """A comma-separated list of durations (`10s,1m,5m`); empty for an empty string."""
    return tuple(duration_ms(part) for part in value.split(",") if part.strip())
