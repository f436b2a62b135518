"""The rules file's schema. Each rule has a `type`; unknown keys are errors, not silently ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from hub.core.contract import Identifier, Scalar, SensorName, Severity

#: A rule fires at most once per device in this window unless the rule says otherwise.
DEFAULT_COOLDOWN_S = 300.0

Positive = Annotated[float, msgspec.Meta(gt=0)]
#: `clear_after` as a number of readings (`3`) or of seconds (`"60s"`).
ClearAfter = Annotated[int, msgspec.Meta(ge=1, le=100_000)] | Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,6}s$")]


class Action(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A command sent back to the device that triggered the rule."""

    command: Identifier
    args: dict[SensorName, Scalar] = {}


class _Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    name: Identifier
    sensor: SensorName
    #: Only devices of this kind (all kinds when absent).
    kind: Identifier | None = None
    severity: Severity = "warning"
    message: str = ""
    action: Action | None = None
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_COOLDOWN_S
    #: The alarm type it raises (its name when absent): rules sharing one make one alarm per device.
    alarm: Identifier | None = None
    #: The alarm clears once the condition was false for this many readings, or seconds (`"60s"`);
    #: the rule type's default (`DEFAULT_CLEAR_AFTER`) when absent.
    clear_after: ClearAfter | None = None

    @property
    def alarm_type(self) -> str:
        return self.alarm or self.name


class Threshold(_Rule, frozen=True, tag="threshold"):
    """Fires when the value is above `above` or below `below`."""

    above: float | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        if self.above is None and self.below is None:
            raise ValueError("a threshold rule needs `above` or `below`")


class ZScore(_Rule, frozen=True, tag="zscore"):
    """Fires when the value is more than `threshold` standard deviations from the rolling mean."""

    window: Annotated[int, msgspec.Meta(ge=3, le=10_000)] = 60
    min_samples: Annotated[int, msgspec.Meta(ge=3)] = 20
    threshold: Positive = 4.0


class Stuck(_Rule, frozen=True, tag="stuck"):
    """Fires when the sensor reports exactly the same value `samples` times in a row."""

    samples: Annotated[int, msgspec.Meta(ge=2, le=10_000)] = 30


class RateOfChange(_Rule, frozen=True, tag="rate_of_change"):
    """Fires when the value changes faster than `max_per_s` units per second between two readings."""

    max_per_s: Positive


Rule = Threshold | ZScore | Stuck | RateOfChange

#: Readings without the condition before an alarm clears, per rule type: a threshold crossed
#: back for a few readings; a z-score anomaly (one spike) at the next normal readings; a stuck
#: sensor at its first different value; a jump once the rate is back for a few readings.
DEFAULT_CLEAR_AFTER: dict[type[_Rule], int] = {Threshold: 3, ZScore: 3, Stuck: 1, RateOfChange: 3}


@dataclass(frozen=True)
class ClearPolicy:
    """When an active alarm clears: after `readings` readings without its condition, or once a
    reading without it comes `seconds` after the last reading with it (device time, not the hub's)."""

    readings: int = 0
    seconds: float = 0.0


def clear_policy(rule: Rule) -> ClearPolicy:
    after = rule.clear_after
    if after is None:
        return ClearPolicy(readings=DEFAULT_CLEAR_AFTER[type(rule)])
    if isinstance(after, str):
        return ClearPolicy(seconds=float(after[:-1]))
    return ClearPolicy(readings=after)


class RulesFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rules: list[Rule] = []
