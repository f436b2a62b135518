"""When a batch is due and what acks it: the store's decisions, without I/O.

Deliveries on one channel arrive in delivery-tag order, and every delivery the store has seen
is either in the open batch (a line to write) or settled (dead-lettered with confirms). So once
the batch is written, one `basic_ack(highest_tag, multiple=True)` settles exactly everything
seen so far, dead-lettered deliveries included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: A batch is written when it holds this many points...
BATCH_MAX_POINTS = 5_000
#: ...or when its oldest point has waited this long.
FLUSH_INTERVAL_S = 0.2


@dataclass
class Batch:
    max_points: int = BATCH_MAX_POINTS
    flush_interval_s: float = FLUSH_INTERVAL_S
    lines: list[str] = field(default_factory=list)
    #: Highest delivery tag covered by this batch (0 = nothing to ack).
    last_tag: int = 0
    #: Deliveries covered (points plus settled ones), for counting.
    deliveries: int = 0
    opened_at: float | None = None

    def add(self, tag: int, line: str | None, now: float | None = None) -> None:
        """Record delivery `tag`: a line to write, or None for a delivery already settled elsewhere.

        Tag 0 adds a point that settles no delivery (e.g. a presence timeout the clock found).
        """
        if self.opened_at is None:
            self.opened_at = time.monotonic() if now is None else now
        if line is not None:
            self.lines.append(line)
        if tag:
            self.last_tag = max(self.last_tag, tag)
            self.deliveries += 1

    @property
    def empty(self) -> bool:
        return self.deliveries == 0 and not self.lines

    def full(self) -> bool:
        return len(self.lines) >= self.max_points

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

    def payload(self) -> bytes:
        return "\n".join(self.lines).encode()

    def reset(self) -> None:
        self.lines = []
        self.last_tag = 0
        self.deliveries = 0
        self.opened_at = None
