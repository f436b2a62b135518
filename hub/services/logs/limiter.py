"""How many log lines a device may have stored: a token bucket per device, the excess counted.

A device that floods its log must not cost the hub more than `rate` lines a second (after a
burst of `burst`): the lines above it are dropped (acked, not stored) and counted, and every
`summary_ms` a device that lost lines gets one `Summary` saying how many. Pure: the clock is
passed in, in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `capacity` kept; one token per line. Starts full."""

    rate: float
    capacity: float
    tokens: float
    stamp_ms: int

    @classmethod
    def full(cls, rate: float, capacity: float, now_ms: int) -> TokenBucket:
        return cls(rate, capacity, capacity, now_ms)

    def take(self, now_ms: int) -> bool:
        """Take a token if one is there (refilled for the time since the last call)."""
        self.refill(now_ms)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def refill(self, now_ms: int) -> None:
        # A clock that went back (another hub's, a standby's) refills nothing and takes nothing.
        if now_ms > self.stamp_ms:
            self.tokens = min(self.capacity, self.tokens + (now_ms - self.stamp_ms) * self.rate / 1000.0)
            self.stamp_ms = now_ms

    def is_full(self, now_ms: int) -> bool:
        self.refill(now_ms)
        return self.tokens >= self.capacity


@dataclass(frozen=True)
class Summary:
    """What the limiter dropped of one device's lines between `since_ms` and `until_ms`."""

    device: str
    dropped: int
    since_ms: int
    until_ms: int


class LogLimiter:
    """A `TokenBucket` per device, and what each dropped since its last `Summary`."""

    def __init__(self, rate: float, burst: int, summary_ms: int) -> None:
        if rate <= 0 or burst < 1 or summary_ms <= 0:
            raise ValueError("rate and summary_ms must be positive, burst at least 1")
        self.rate = rate
        self.burst = burst
        self.summary_ms = summary_ms
        self._buckets: dict[str, TokenBucket] = {}
        #: Per device that lost lines: (how many, when the first of them was dropped).
        self._dropped: dict[str, tuple[int, int]] = {}

    def admit(self, device: str, now_ms: int) -> bool:
        """True if this line of `device` may be stored; False: it is dropped, and counted."""
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = TokenBucket.full(self.rate, self.burst, now_ms)
        if bucket.take(now_ms):
            return True
        count, since = self._dropped.get(device, (0, now_ms))
        self._dropped[device] = (count + 1, since)
        return False

    def summaries(self, now_ms: int) -> list[Summary]:
        """One `Summary` per device whose drops began `summary_ms` ago or more; their counts start over.

        Buckets that are full again and owe no summary are forgotten (a device not heard from is no cost).
        """
        due = [
            Summary(device, count, since, now_ms)
            for device, (count, since) in self._dropped.items()
            if now_ms - since >= self.summary_ms
        ]
        for summary in due:
            del self._dropped[summary.device]
        idle = [d for d, bucket in self._buckets.items() if d not in self._dropped and bucket.is_full(now_ms)]
        for device in idle:
            del self._buckets[device]
        return due

    def pending(self) -> dict[str, int]:
        """Lines dropped per device since its last summary."""
        return {device: count for device, (count, _since) in self._dropped.items()}
