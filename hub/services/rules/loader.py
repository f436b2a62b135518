"""Read and validate a rules file; every problem names the file and the rule."""

from __future__ import annotations

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


def load_rules(path: Path) -> list[Rule]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"rules file {path}: {exc.strerror} (set IOT_RULES_FILE or --rules-file)") from None
    return parse_rules(text, str(path))
