"""Rolling statistics over the last N values of one sensor, O(1) per value."""

from __future__ import annotations

import math
from collections import deque


class Rolling:
    """Mean and standard deviation of a sliding window, plus the run length of the last value."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.total_sq = 0.0
        self.last: float | None = None
        self.last_ts = 0
        #: How many times in a row the last value was reported.
        self.repeats = 0

    def push(self, value: float, ts_ms: int) -> None:
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            self.total -= old
            self.total_sq -= old * old
        self.values.append(value)
        self.total += value
        self.total_sq += value * value
        self.repeats = self.repeats + 1 if value == self.last else 1
        self.last, self.last_ts = value, ts_ms

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return self.total / len(self.values) if self.values else 0.0

    @property
    def std(self) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        variance = (self.total_sq - self.total * self.total / n) / (n - 1)
        return math.sqrt(variance) if variance > 0 else 0.0
