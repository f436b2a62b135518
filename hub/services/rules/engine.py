"""The rule engine: a reading in, alerts and commands out. Pure: the caller supplies the clock.

Exactly once: per device and sensor, a reading at or before the last one evaluated (a device
re-sending its in-flight window, a redelivery) changes no statistic and fires nothing. An alert's
identity and time are the reading's (`alert_id` of rule, device and the reading's `ts`), and so
are cooldowns: a replay decides the same, whatever the hub's clock says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from hub.core.contract import Alert, Command, Reading
from hub.services.rules.model import RateOfChange, Rule, Stuck, Threshold, ZScore
from hub.services.rules.stats import Rolling

#: A command sent by a rule must be carried out within this time or not at all.
COMMAND_TTL_S = 30.0
#: Window of the statistics kept for sensors no z-score rule looks at (stuck, rate need little).
DEFAULT_WINDOW = 2


@dataclass(frozen=True)
class Decision:
    alert: Alert
    command: Command | None
    rule: Rule


@dataclass(frozen=True)
class Evaluation:
    """What one reading decided: the rules that fired, and for each alarm type a rule of which
    looked at a new value of this reading, whether any of its conditions held."""

    decisions: list[Decision] = field(default_factory=list)
    conditions: dict[str, bool] = field(default_factory=dict)


def deterministic_id(*parts: str | int) -> str:
    """A 32-hex-digit id of `parts`: the same inputs, the same id (a replay is recognisable)."""
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def alert_id(rule: str, device: str, ts_ms: int) -> str:
    return deterministic_id("alert", rule, device, ts_ms)


class Engine:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.windows: dict[str, int] = {}
        for rule in rules:
            if isinstance(rule, ZScore):
                self.windows[rule.sensor] = max(self.windows.get(rule.sensor, DEFAULT_WINDOW), rule.window)
        self.stats: dict[tuple[str, str], Rolling] = {}
        #: (rule, device) -> the reading ts it last fired at.
        self.fired_at: dict[tuple[str, str], int] = {}
        self.sensors = {rule.sensor for rule in rules}

    @property
    def history_needed(self) -> int:
        """Readings per device a rebuilt engine needs to decide as this one would (windows, runs)."""
        needed = [DEFAULT_WINDOW, *self.windows.values()]
        needed += [rule.samples for rule in self.rules if isinstance(rule, Stuck)]
        return max(needed)

    def _stats(self, device: str, sensor: str) -> Rolling:
        key = (device, sensor)
        rolling = self.stats.get(key)
        if rolling is None:
            rolling = self.stats[key] = Rolling(self.windows.get(sensor, DEFAULT_WINDOW))
        return rolling

    def evaluate(self, reading: Reading, now_ms: int) -> Evaluation:
        """Check every rule against `reading` (then add its values to the statistics). `now_ms`
        only dates a rule's command (its expiry); everything else is the reading's own time."""
        decisions: list[Decision] = []
        conditions: dict[str, bool] = {}
        for sensor, raw in reading.readings.items():
            if sensor not in self.sensors or isinstance(raw, bool):
                continue
            value = float(raw)
            rolling = self._stats(reading.device, sensor)
            if not rolling.is_new(reading.ts):
                continue
            for rule in self.rules:
                if rule.sensor != sensor or (rule.kind is not None and rule.kind != reading.kind):
                    continue
                why = _violation(rule, value, reading.ts, rolling)
                alarm = rule.alarm_type
                conditions[alarm] = conditions.get(alarm, False) or why is not None
                if why is None:
                    continue
                key = (rule.name, reading.device)
                last = self.fired_at.get(key)
                if last is not None and reading.ts - last < rule.cooldown_s * 1000:
                    continue
                self.fired_at[key] = reading.ts
                decisions.append(_decide(rule, reading, sensor, value, why, now_ms))
            rolling.push(value, reading.ts)
        return Evaluation(decisions, conditions)

    def alarm_cleared(self, alarm_type: str, device: str) -> None:
        """The alarm of `alarm_type` cleared on `device`: its rules' cooldowns end, so the next trip raises at once."""
        for rule in self.rules:
            if rule.alarm_type == alarm_type:
                self.fired_at.pop((rule.name, device), None)

    def restore_cooldown(self, rule: str, device: str, ts_ms: int) -> None:
        """`rule` fired on `device` at the reading time `ts_ms` (as stored in `alerts`)."""
        key = (rule, device)
        self.fired_at[key] = max(ts_ms, self.fired_at.get(key, ts_ms))


def _violation(rule: Rule, value: float, ts_ms: int, rolling: Rolling) -> str | None:
    """Why `value` breaks `rule` given the statistics before it, or None."""
    if isinstance(rule, Threshold):
        if rule.above is not None and value > rule.above:
            return f"{value:g} > {rule.above:g}"
        if rule.below is not None and value < rule.below:
            return f"{value:g} < {rule.below:g}"
        return None
    if isinstance(rule, ZScore):
        if rolling.count < rule.min_samples:
            return None
        std = rolling.std
        if std == 0:
            return None
        z = (value - rolling.mean) / std
        return f"z-score {z:+.1f} (mean {rolling.mean:.3g}, std {std:.3g})" if abs(z) > rule.threshold else None
    if isinstance(rule, Stuck):
        # Still stuck after `samples`: the condition holds until the value moves (the alarm clears then).
        repeats = rolling.repeats + 1 if value == rolling.last else 1
        return f"same value {value:g} {repeats} times in a row" if repeats >= rule.samples else None
    if isinstance(rule, RateOfChange):
        if rolling.last is None or ts_ms <= rolling.last_ts:
            return None
        rate = (value - rolling.last) / ((ts_ms - rolling.last_ts) / 1000)
        return f"changing {rate:+.3g}/s" if abs(rate) > rule.max_per_s else None
    return None


def _decide(rule: Rule, reading: Reading, sensor: str, value: float, why: str, now_ms: int) -> Decision:
    message = f"{rule.message + ': ' if rule.message else ''}{reading.device} {sensor} {why}"
    alert = Alert(
        id=alert_id(rule.name, reading.device, reading.ts),
        rule=rule.name,
        severity=rule.severity,
        device=reading.device,
        site=reading.site,
        kind=reading.kind,
        sensor=sensor,
        value=value,
        message=message[:1024],
        ts=reading.ts,
    )
    command = None
    if rule.action is not None:
        command = Command(
            id=deterministic_id("command", rule.name, reading.device, reading.ts),
            command=rule.action.command,
            args=dict(rule.action.args),
            ts=now_ms,
            expires=now_ms + int(COMMAND_TTL_S * 1000),
        )
    return Decision(alert, command, rule)
