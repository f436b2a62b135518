"""What a running fleet reports: per-protocol counters and the schedule lag of its readings."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

#: Lag samples kept for the whole-run summary (the newest win).
LAG_SAMPLES_KEPT = 500_000


@dataclass(frozen=True)
class ProtocolStats:
    """Counters for the devices of one protocol; all cumulative except `online` and `buffered`."""

    devices: int = 0
    online: int = 0
    produced: int = 0
    sent: int = 0
    confirmed: int = 0
    buffered: int = 0
    dropped: int = 0
    reconnects: int = 0
    commands: int = 0
    errors: int = 0

    def __add__(self, other: ProtocolStats) -> ProtocolStats:
        return ProtocolStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class LagSummary:
    """Schedule lag in milliseconds: how late readings were produced relative to their due time."""

    samples: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, lags_s: Iterable[float]) -> LagSummary:
        ordered = sorted(lags_s)
        if not ordered:
            return cls()
        return cls(
            samples=len(ordered),
            p50_ms=percentile(ordered, 0.50) * 1000.0,
            p99_ms=percentile(ordered, 0.99) * 1000.0,
            max_ms=ordered[-1] * 1000.0,
        )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass(frozen=True)
class FleetStats:
    by_protocol: dict[str, ProtocolStats]
    elapsed_s: float
    lag: LagSummary

    @property
    def total(self) -> ProtocolStats:
        total = ProtocolStats()
        for stats in self.by_protocol.values():
            total = total + stats
        return total


class LagRecorder:
    """Collects lag samples on the event loop; readers take the recent ones or summarise them all."""

    def __init__(self) -> None:
        self._all: deque[float] = deque(maxlen=LAG_SAMPLES_KEPT)
        self._recent: list[float] = []

    def add(self, lag_s: float) -> None:
        self._all.append(lag_s)
        self._recent.append(lag_s)

    def take_recent(self) -> list[float]:
        """Samples since the last call (swapping the list is atomic, so any thread may call this)."""
        recent, self._recent = self._recent, []
        return recent

    def summary(self) -> LagSummary:
        return LagSummary.of(list(self._all))
