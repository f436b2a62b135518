"""Rolling statistics over the last N values of one sensor, plus the run length of the last value.

The mean and standard deviation are computed from the window itself (exactly rounded sums, two
passes) when a z-score rule asks, not kept as running totals: running totals drift with the
history before the window, so a window rebuilt after a restart would judge a borderline value
differently from the one that never stopped. The same window, the same decision.
"""

from __future__ import annotations

import math
from collections import deque


class Rolling:
    """A sliding window of values, its mean and standard deviation, and the last value's run."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.last: float | None = None
        self.last_ts = 0
        #: How many times in a row the last value was reported.
        self.repeats = 0

    def is_new(self, ts_ms: int) -> bool:
        """A reading after the last one pushed: one at or before it (a replay, or older) changes nothing."""
        return self.last is None or ts_ms > self.last_ts

    def push(self, value: float, ts_ms: int) -> None:
        self.values.append(value)
        self.repeats = self.repeats + 1 if value == self.last else 1
        self.last, self.last_ts = value, ts_ms

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values) if self.values else 0.0

    @property
    def std(self) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        mean = self.mean
        variance = math.fsum((value - mean) ** 2 for value in self.values) / (n - 1)
        return math.sqrt(variance)
