"""The rule engine: a reading in, alerts and commands out. Pure: the caller supplies the clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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


def new_id() -> str:
    return uuid.uuid4().hex


class Engine:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.windows: dict[str, int] = {}
        for rule in rules:
            if isinstance(rule, ZScore):
                self.windows[rule.sensor] = max(self.windows.get(rule.sensor, DEFAULT_WINDOW), rule.window)
        self.stats: dict[tuple[str, str], Rolling] = {}
        self.fired_at: dict[tuple[str, str], int] = {}
        self.sensors = {rule.sensor for rule in rules}

    def _stats(self, device: str, sensor: str) -> Rolling:
        key = (device, sensor)
        rolling = self.stats.get(key)
        if rolling is None:
            rolling = self.stats[key] = Rolling(self.windows.get(sensor, DEFAULT_WINDOW))
        return rolling

    def evaluate(self, reading: Reading, now_ms: int) -> list[Decision]:
        """Check every rule against `reading` (then add its values to the statistics)."""
        decisions: list[Decision] = []
        for sensor, raw in reading.readings.items():
            if sensor not in self.sensors or isinstance(raw, bool):
                continue
            value = float(raw)
            rolling = self._stats(reading.device, sensor)
            for rule in self.rules:
                if rule.sensor != sensor or (rule.kind is not None and rule.kind != reading.kind):
                    continue
                why = _violation(rule, value, reading.ts, rolling)
                if why is None:
                    continue
                key = (rule.name, reading.device)
                last = self.fired_at.get(key)
                if last is not None and now_ms - last < rule.cooldown_s * 1000:
                    continue
                self.fired_at[key] = now_ms
                decisions.append(_decide(rule, reading, sensor, value, why, now_ms))
            rolling.push(value, reading.ts)
        return decisions


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
        repeats = rolling.repeats + 1 if value == rolling.last else 1
        return f"same value {value:g} {repeats} times in a row" if repeats == rule.samples else None
    if isinstance(rule, RateOfChange):
        if rolling.last is None or ts_ms <= rolling.last_ts:
            return None
        rate = (value - rolling.last) / ((ts_ms - rolling.last_ts) / 1000)
        return f"changing {rate:+.3g}/s" if abs(rate) > rule.max_per_s else None
    return None


def _decide(rule: Rule, reading: Reading, sensor: str, value: float, why: str, now_ms: int) -> Decision:
    message = f"{rule.message + ': ' if rule.message else ''}{reading.device} {sensor} {why}"
    alert = Alert(
        id=new_id(),
        rule=rule.name,
        severity=rule.severity,
        device=reading.device,
        site=reading.site,
        kind=reading.kind,
        sensor=sensor,
        value=value,
        message=message[:1024],
        ts=now_ms,
    )
    command = None
    if rule.action is not None:
        command = Command(
            id=new_id(),
            command=rule.action.command,
            args=dict(rule.action.args),
            ts=now_ms,
            expires=now_ms + int(COMMAND_TTL_S * 1000),
        )
    return Decision(alert, command)
