"""When a batch is due and what acks it: the outbox's decisions, without I/O.

Deliveries on one channel arrive in delivery-tag order, and every delivery a service has seen
is either in the open batch (its points to write) or settled (dead-lettered with confirms). So
once the batch is written, one `basic_ack(highest_tag, multiple=True)` settles exactly everything
seen so far, dead-lettered deliveries included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hub.core.points import Point

#: A batch is written when it holds this many points...
BATCH_MAX_POINTS = 5_000
#: ...or when its oldest point has waited this long.
FLUSH_INTERVAL_S = 0.2


@dataclass
class Batch:
    max_points: int = BATCH_MAX_POINTS
    flush_interval_s: float = FLUSH_INTERVAL_S
    points: list[Point] = field(default_factory=list)
    #: Per point, what to dead-letter if an output refuses it (None: nothing, e.g. the hub's own points).
    sources: list[Any] = field(default_factory=list)
    #: Highest delivery tag covered by this batch (0 = nothing to ack).
    last_tag: int = 0
    #: Deliveries covered (points plus settled ones), for counting.
    deliveries: int = 0
    opened_at: float | None = None

    def add(self, tag: int, point: Point | None = None, now: float | None = None, source: Any = None) -> None:
        """Record delivery `tag`: with a point to write, or None for a delivery settled elsewhere.

        Tag 0 adds a point that settles no delivery (e.g. a presence timeout the clock found).
        """
        if self.opened_at is None:
            self.opened_at = time.monotonic() if now is None else now
        if point is not None:
            self.points.append(point)
            self.sources.append(source)
        if tag:
            self.last_tag = max(self.last_tag, tag)
            self.deliveries += 1

    @property
    def empty(self) -> bool:
        return self.deliveries == 0 and not self.points

    def full(self) -> bool:
        return len(self.points) >= self.max_points

    def due(self, now: float | None = None) -> bool:
        if self.empty:
            return False
        if self.full():
            return True
        now = time.monotonic() if now is None else now
        return self.opened_at is not None and now - self.opened_at >= self.flush_interval_s

    def seconds_until_due(self, now: float | None = None) -> float:
        if self.empty or self.opened_at is None:
            return self.flush_interval_s
        now = time.monotonic() if now is None else now
        return max(0.0, self.flush_interval_s - (now - self.opened_at))

    def reset(self) -> None:
        self.points = []
        self.sources = []
        self.last_tag = 0
        self.deliveries = 0
        self.opened_at = None
