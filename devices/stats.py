"""What a running fleet reports: per-protocol counters and the schedule lag of its readings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

#: Resolution of the whole-run lag histogram: buckets per factor e of (1 + lag in ms).
LAG_BUCKETS_PER_E = 100
#: Enough buckets for lags up to about 10 minutes.
LAG_BUCKETS = 1_400


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
    #: Devices the broker refused at their last login (credential unknown or revoked, or its auth service down);
    #: they try again every few seconds.
    refused: int = 0

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
    """Collects lag samples on the event loop: a log-scale histogram for the whole run, a list for the recent ones.

    The histogram keeps `summary()` cheap however long the run (no sorting of every sample while
    the event loop waits for the GIL); its percentiles are good to a few per cent.
    """

    def __init__(self) -> None:
        self._counts = [0] * LAG_BUCKETS
        self._samples = 0
        self._max_s = 0.0
        self._recent: list[float] = []

    def add(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self._counts[min(LAG_BUCKETS - 1, int(math.log1p(lag_s * 1000.0) * LAG_BUCKETS_PER_E))] += 1
        self._samples += 1
        self._max_s = max(self._max_s, lag_s)
        self._recent.append(lag_s)

    def take_recent(self) -> list[float]:
        """Samples since the last call (swapping the list is atomic, so any thread may call this)."""
        recent, self._recent = self._recent, []
        return recent

    def summary(self) -> LagSummary:
        counts, total = list(self._counts), self._samples
        if not total:
            return LagSummary()
        return LagSummary(
            samples=total,
            p50_ms=min(self._bucket_quantile(counts, total, 0.50), self._max_s * 1000.0),
            p99_ms=min(self._bucket_quantile(counts, total, 0.99), self._max_s * 1000.0),
            max_ms=self._max_s * 1000.0,
        )

    @staticmethod
    def _bucket_quantile(counts: list[int], total: int, fraction: float) -> float:
        wanted, seen = fraction * total, 0
        for index, count in enumerate(counts):
            seen += count
            if seen >= wanted:
                return math.expm1((index + 0.5) / LAG_BUCKETS_PER_E)
        return math.expm1(len(counts) / LAG_BUCKETS_PER_E)


#: Commands whose times `CommandTimes` keeps (the oldest are forgotten first).
COMMAND_TIMES_KEPT = 10_000


@dataclass(frozen=True)
class CommandTiming:
    """When a device took one command and when its ack went out, in `time.monotonic()` seconds."""

    taken: float
    #: When the event loop, at the end of the turn that took the command, wrote the connection's bytes (the ack's).
    ack_written: float

    @property
    def handling_s(self) -> float:
        return self.ack_written - self.taken


class CommandTimes:
    """Device-side stamps of each command by id, so a caller in the fleet's process can split a round trip.

    Stamped on the event loop (two clock reads per command); read from any thread. Not part of
    the wire contract: acks carry only the device's epoch-ms `ts`.
    """

    def __init__(self, kept: int = COMMAND_TIMES_KEPT) -> None:
        self._kept = kept
        self._done: dict[str, CommandTiming] = {}
        self._unwritten: list[tuple[str, float]] = []

    def ack_queued(self, command_id: str, taken: float) -> None:
        """The device took the command at `taken` and has handed its ack to the connection."""
        self._unwritten.append((command_id, taken))

    def acks_writing(self, at: float) -> None:
        """At `at` the loop writes every ack queued so far to its connection."""
        if not self._unwritten:
            return
        unwritten, self._unwritten = self._unwritten, []
        for command_id, taken in unwritten:
            self._done[command_id] = CommandTiming(taken, at)
        while len(self._done) > self._kept:
            del self._done[next(iter(self._done))]

    def get(self, command_id: str) -> CommandTiming | None:
        return self._done.get(command_id)
