"""When a batch is due and what acks it: the outbox's decisions, without I/O.

Deliveries on one channel arrive in delivery-tag order, and every delivery a service has seen
is in the open batch: with its points to write, or dead-lettered (published, its confirm awaited
before the ack). So once the batch is written and the dead-letters confirmed, one
`basic_ack(highest_tag, multiple=True)` settles exactly everything seen so far.

A batch is due when it is full, when its oldest entry has waited `FLUSH_INTERVAL_S`, or, once it
is `LINGER_S` old and holds points, as soon as the deliveries pause (`idle`: none came for
`IDLE_GAP_S`): under a backlog batches stay large, while a steady trickle of readings is stored
within tens of milliseconds. A batch with no point (acks only, e.g. refused messages) waits
for its timer: acking sooner would show nobody anything and cost a round trip.
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
#: ...or when it is this old and the deliveries pause: bounds the writes to ~1/LINGER_S per second.
LINGER_S = 0.05
#: A pause: no delivery came for this long (under a backlog the next one is always in hand).
IDLE_GAP_S = 0.001


@dataclass
class Batch:
    max_points: int = BATCH_MAX_POINTS
    flush_interval_s: float = FLUSH_INTERVAL_S
    linger_s: float = LINGER_S
    points: list[Point] = field(default_factory=list)
    #: Per point, what to dead-letter if an output refuses it (None: nothing, e.g. the hub's own points).
    sources: list[Any] = field(default_factory=list)
    #: Highest delivery tag covered by this batch (0 = nothing to ack).
    last_tag: int = 0
    #: Deliveries covered (points plus settled ones), for counting.
    deliveries: int = 0
    opened_at: float | None = None
    #: The deliveries this batch settles (acked once it is written, dead-lettered ones included).
    settled: list[Any] = field(default_factory=list)
    #: Lowest delivery tag it settles (0 = none): a `multiple` ack must stop below a held one.
    low_tag: int = 0
    #: What its effects count (see `hub.runtime.handler.Event`), handed to the middleware once settled.
    events: list[tuple[str, ...]] = field(default_factory=list)
    #: The device timestamp (ms) of the oldest record it holds (0 = none): how long a reading waits.
    oldest_record_ms: int = 0
    #: The reason of each delivery it dead-letters, counted once it is settled.
    dead_lettered: list[str] = field(default_factory=list)

    def open(self, now: float) -> None:
        if self.opened_at is None:
            self.opened_at = now

    def settle(self, tag: int, delivery: Any) -> None:
        """Settle `delivery` (tag `tag`) with this batch: acked once it is written."""
        self.settled.append(delivery)
        self.deliveries += 1
        if tag > self.last_tag:
            self.last_tag = tag
        if not self.low_tag or tag < self.low_tag:
            self.low_tag = tag

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
            if tag > self.last_tag:
                self.last_tag = tag
            self.deliveries += 1

    @property
    def empty(self) -> bool:
        return self.deliveries == 0 and not self.points

    def full(self) -> bool:
        """Enough points, or enough deliveries (a burst of refused ones writes no point)."""
        return len(self.points) >= self.max_points or self.deliveries >= self.max_points

    def due(self, now: float | None = None, idle: bool = False) -> bool:
        """Full, or as old as `flush_interval_s`, or with points, `linger_s` old and `idle` (deliveries paused)."""
        if self.empty or self.opened_at is None:
            return False
        if self.full():
            return True
        age = (time.monotonic() if now is None else now) - self.opened_at
        return age >= self.flush_interval_s or (idle and bool(self.points) and age >= self.linger_s)

    def next_check_s(self, now: float | None = None) -> float:
        """How long to wait for more deliveries before looking again: to the end of the linger,
        then `IDLE_GAP_S` (a wait that brings nothing is a pause), never past `flush_interval_s`."""
        if self.empty or self.opened_at is None:
            return self.flush_interval_s
        age = (time.monotonic() if now is None else now) - self.opened_at
        until_due = max(0.0, self.flush_interval_s - age)
        return min(until_due, max(IDLE_GAP_S, self.linger_s - age)) if self.points else until_due

    def reset(self) -> None:
        self.points = []
        self.sources = []
        self.last_tag = 0
        self.deliveries = 0
        self.opened_at = None
        self.settled = []
        self.low_tag = 0
        self.events = []
        self.oldest_record_ms = 0
        self.dead_lettered = []
