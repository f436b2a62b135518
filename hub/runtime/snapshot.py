"""What a runner says about itself to other threads: a frozen `Snapshot` it replaces as it goes.

The monitor (health, `hub_queue_held`, roles), the Prometheus gauge of the oldest unstored
reading and presence (is the telemetry beside it reading?) read the latest snapshot of a runner,
never its live state: a runner publishes one when it connects or disconnects, opens a batch,
starts, retries and ends a write. Reading it takes no lock; it is at most one batch old.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: A write (with its confirms and acks) longer than this is a gap in reading: nothing was read
#: meanwhile, so a listener that judges silence from what the runner reads must not judge it
#: then, and counts again from its end. Shorter ones are normal (milliseconds) and do not matter
#: against 3 intervals of a device's silence.
STALL_S = 0.3


@dataclass(frozen=True)
class Snapshot:
    service: str
    #: The hub queues it consumes with acks (its side queues are not listed).
    queues: tuple[str, ...] = ()
    connected: bool = False
    #: Connects so far (a reconnect makes it 2): each one redelivers whatever was not acked.
    connects: int = 0
    #: Queue -> the broker's consumer tag of this process on it (the management API tells by it
    #: whether a single-active-consumer queue delivers to this process or keeps it waiting).
    consumer_tags: Mapping[str, str] = field(default_factory=dict)
    #: Queue -> deliveries taken and not acked yet (batching, writing, held).
    held: Mapping[str, int] = field(default_factory=dict)
    #: Hub clock (ms) since when it has read without a gap: its last connect, or the end of its
    #: last stall (a write that failed, or lasted longer than `STALL_S`).
    reading_since_ms: int = 0
    #: Monotonic clock at the start of a write still going on (0.0: none).
    writing_since: float = 0.0
    #: The write going on failed at least once and is retried.
    retrying: bool = False
    #: Monotonic clock when it last settled or stored something (its start until then).
    progressed_at: float = 0.0
    #: Device timestamp (ms) of the oldest record waiting to be stored, open or being written (0: none).
    unstored_since_ms: int = 0

    def stalled(self, now: float) -> bool:
        """Not reading now (`now`: the monotonic clock): disconnected, retrying a write, or in a
        write longer than `STALL_S`."""
        if not self.connected or self.retrying:
            return True
        return self.writing_since > 0 and now - self.writing_since > STALL_S

    @property
    def held_total(self) -> int:
        return sum(self.held.values())
