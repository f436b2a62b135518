"""When a batch is due and what acks it: the outbox's decisions, without I/O.

Deliveries on one channel arrive in delivery-tag order, and every delivery a runner has seen is
in the open batch (with its points to write, or dead-lettered: published, its confirm awaited
before the ack) or held by its handler. So once the batch is written and what it published is
confirmed, one `basic_ack(highest_tag, multiple=True)` settles exactly what it covers, unless a
held delivery lies below that tag (see `Runner._settle`).

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
    """What one write covers: its points, the deliveries it settles, and when it is due."""

    max_points: int = BATCH_MAX_POINTS
    #: Deliveries that make it full: the broker sends no more than the prefetch windows allow, so
    #: a batch holding that many waits for nothing (a notify worker's window is 1 delivery).
    max_deliveries: int = BATCH_MAX_POINTS
    flush_interval_s: float = FLUSH_INTERVAL_S
    linger_s: float = LINGER_S
    points: list[Point] = field(default_factory=list)
    #: Per point, the delivery to dead-letter if an output refuses it (None: nothing, e.g. an alert).
    sources: list[Any] = field(default_factory=list)
    #: Highest and lowest delivery tag it settles (0 = none): a `multiple` ack must stop below a held one.
    last_tag: int = 0
    low_tag: int = 0
    #: Deliveries it settles (acked once it is written, dead-lettered ones included).
    deliveries: int = 0
    settled: list[Any] = field(default_factory=list)
    opened_at: float | None = None
    #: What its effects count (see `hub.runtime.handler.Event`), handed to the middleware once settled.
    events: list[tuple[str, ...]] = field(default_factory=list)
    #: The device timestamp (ms) of the oldest record it holds (0 = none): how long a reading waits.
    oldest_record_ms: int = 0
    #: The reason of each delivery it dead-letters, counted once it is settled.
    dead_lettered: list[str] = field(default_factory=list)

    def open(self, now: float | None = None) -> None:
        """Start its clock (at the first thing it holds)."""
        if self.opened_at is None:
            self.opened_at = time.monotonic() if now is None else now

    def write(self, point: Point, source: Any = None) -> None:
        """A point to write; `source`: the delivery it stands for (dead-lettered if an output refuses it)."""
        self.points.append(point)
        self.sources.append(source)

    def settle(self, tag: int, delivery: Any) -> None:
        """Settle `delivery` (tag `tag`) with this batch: acked once it is written."""
        self.settled.append(delivery)
        self.deliveries += 1
        if tag > self.last_tag:
            self.last_tag = tag
        if not self.low_tag or tag < self.low_tag:
            self.low_tag = tag

    @property
    def empty(self) -> bool:
        return self.deliveries == 0 and not self.points

    def full(self) -> bool:
        """Enough points, or enough deliveries (a burst of refused ones writes no point, a window
        of prefetch 1 brings no second one)."""
        return len(self.points) >= self.max_points or self.deliveries >= min(self.max_points, self.max_deliveries)

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
