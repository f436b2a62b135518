"""Command arguments from the command line: `key=value` words become the `Command.args` dict."""

from __future__ import annotations

import json
import math
import re

from hub.core.contract import SENSOR_PATTERN, Scalar
from hub.core.errors import ConfigError

_ARG_NAME = re.compile(SENSOR_PATTERN)


def _refuse_constant(name: str) -> float:
    raise ConfigError(f"value {name!r} is not allowed: numbers must be finite")


def parse_value(text: str) -> Scalar:
    """A JSON scalar where the text is one (21.5, true, 5000, "quoted"), else the text itself."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if value is None or isinstance(value, list | dict):
        raise ConfigError(f"value {text!r} is not allowed: use a number, true/false or text")
    return text


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds; anything else is a usage error naming `option`."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ConfigError(f"{option} {text!r} is not a duration: use e.g. 90s, 15m, 1h or 2d")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def parse_command_args(words: tuple[str, ...] | list[str]) -> dict[str, Scalar]:
    """`["ms=5000", "on=true"]` -> `{"ms": 5000, "on": True}`; a malformed word is a usage error."""
    args: dict[str, Scalar] = {}
    for word in words:
        name, sep, raw = word.partition("=")
        if not sep:
            raise ConfigError(f"argument {word!r} is not key=value (e.g. ms=5000, on=true, value=21.5)")
        if not _ARG_NAME.match(name):
            raise ConfigError(f"argument name {name!r} is not allowed: use a-z, 0-9 and '_', starting with a letter")
        if name in args:
            raise ConfigError(f"argument {name!r} is given twice")
        args[name] = parse_value(raw)
    return args
