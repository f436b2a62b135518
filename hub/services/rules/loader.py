"""Read and validate a rules file; every problem names the file and the rule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import yaml

from hub.core.errors import ConfigError
from hub.services.rules.model import Rule, RulesFile


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        return []
    if not isinstance(raw, dict) or not isinstance(raw.get("rules", []), list):
        raise ConfigError(f"{source}: expected a mapping with a list under `rules:`")
    rules: list[Rule] = []
    for index, entry in enumerate(raw.get("rules", [])):
        name = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        found = _non_finite(entry, "$")
        if found is not None:  # YAML's .nan and .inf: a threshold that never (or always) fires
            place, number = found
            raise ConfigError(f"{source}: rule {name!r}: {place} must be a finite number, not {number}")
        try:
            [rule] = msgspec.convert({"rules": [entry]}, RulesFile).rules
        except (msgspec.ValidationError, ValueError) as exc:
            raise ConfigError(f"{source}: rule {name!r}: {str(exc).replace('$.rules[0]', '$')}") from None
        rules.append(rule)
    names = [rule.name for rule in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: rule names must be unique: {', '.join(duplicates)}")
    return rules


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The place (`$.above`) and value of the first NaN or infinity in a parsed YAML value, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}")
        if found is not None:
            return found
    return None


def load_rules(path: Path) -> list[Rule]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"rules file {path}: {exc.strerror} (set IOT_RULES_FILE or --rules-file)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"rules file {path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    return parse_rules(text, str(path))
