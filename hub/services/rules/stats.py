"""Rolling statistics over the last N values of one sensor, plus the run length of the last value.

The sums behind the mean and standard deviation are kept in integers (values in millionths),
so they are exactly the window's own, whatever came before it: float running totals drift with
the history before the window, and a window rebuilt after a restart would then judge a
borderline value differently from the one that never stopped. The same window, the same decision.
"""

from __future__ import annotations

import math
from collections import deque

#: Values are summed as integers of this many parts per unit (a millionth: far below any sensor's noise).
SCALE = 1_000_000


class Rolling:
    """A sliding window of values, its mean and standard deviation, and the last value's run."""

    def __init__(self, window: int) -> None:
        self.scaled: deque[int] = deque(maxlen=window)
        self.total = 0
        self.total_sq = 0
        self.last: float | None = None
        self.last_ts = 0
        #: How many times in a row the last value was reported.
        self.repeats = 0

    def is_new(self, ts_ms: int) -> bool:
        """A reading after the last one pushed: one at or before it (a replay, or older) changes nothing."""
        return self.last is None or ts_ms > self.last_ts

    def push(self, value: float, ts_ms: int) -> None:
        scaled = round(value * SCALE)
        if len(self.scaled) == self.scaled.maxlen:
            old = self.scaled[0]
            self.total -= old
            self.total_sq -= old * old
        self.scaled.append(scaled)
        self.total += scaled
        self.total_sq += scaled * scaled
        self.repeats = self.repeats + 1 if value == self.last else 1
        self.last, self.last_ts = value, ts_ms

    @property
    def count(self) -> int:
        return len(self.scaled)

    @property
    def mean(self) -> float:
        return self.total / len(self.scaled) / SCALE if self.scaled else 0.0

    @property
    def std(self) -> float:
        n = len(self.scaled)
        if n < 2:
            return 0.0
        # n·Σx² − (Σx)² is exact in integers: 0 for a constant window, never negative.
        spread = n * self.total_sq - self.total * self.total
        return math.sqrt(spread / (n * (n - 1))) / SCALE
