"""The hook where rules over log lines plug in: each stored line passes every `LogRule`.

A log rule decides, without I/O, from the lines it sees: "3 `error` lines in 1 minute from one
device" is `LineBurst(name, "error", 3, 60_000)`. What it returns (`LogRuleHit`) is counted
(`hub_log_rule_hits{rule}`) and logged by the logs service today. **This is where alarms plug
in**: when the alarms of the alarm issue land, `LogsHandler._hits` turns each hit into the alarm
transition (a raise keyed by rule and device), as the telemetry rules' alerts are; nothing here
depends on them. A rule sees only lines the limiter admitted, in the order of the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hub.core.contract import LOG_LEVELS, LogLine


@dataclass(frozen=True)
class LogRuleHit:
    """A log rule matched: `count` lines of `device` at `level` or above within `window_ms`, the last at `at_ms`."""

    rule: str
    device: str
    level: str
    count: int
    window_ms: int
    at_ms: int


class LogRule(Protocol):
    name: str

    def observe(self, line: LogLine) -> LogRuleHit | None:
        """See one stored line (its `ts` is the device's clock); a hit when the rule matches."""
        ...


@dataclass
class LineBurst:
    """`count` lines at `level` or above from one device within `window_ms` (by the lines' own `ts`).

    It hits once per burst: the lines counted are forgotten after a hit, so a steady stream of
    errors hits once per `count` lines, not at every line.
    """

    name: str
    level: str
    count: int
    window_ms: int
    _seen: dict[str, deque[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS or self.count < 1 or self.window_ms < 1:
            raise ValueError(f"log rule {self.name}: a level of {LOG_LEVELS}, count and window_ms at least 1")

    def observe(self, line: LogLine) -> LogRuleHit | None:
        if LOG_LEVELS.index(line.level) < LOG_LEVELS.index(self.level):
            return None
        times = self._seen.setdefault(line.device, deque())
        times.append(line.ts)
        while times and times[0] <= line.ts - self.window_ms:
            times.popleft()
        if len(times) < self.count:
            return None
        times.clear()
        return LogRuleHit(self.name, line.device, self.level, self.count, self.window_ms, line.ts)


def observe_all(rules: Sequence[LogRule], line: LogLine) -> list[LogRuleHit]:
    return [hit for rule in rules if (hit := rule.observe(line)) is not None]
