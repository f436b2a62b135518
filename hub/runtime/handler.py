"""A service as the runner sees it: a handler that takes a delivery and returns what must happen.

In dramatiq an actor is a function, and the broker and the worker own the lifecycle. Here a
service is a `Handler` and its `Runner` (`hub.runtime.runner`) owns connecting, consuming,
batching, the outputs, publisher confirms, dead-lettering, settling and every metric. A handler

- declares what it consumes (`declaration`: its hub queues, and side queues read without acks);
- turns each delivery into `Effects` (`handle`): the points to write, the messages to publish,
  whether the delivery is settled with its batch or held, which held deliveries are now released
  or refused, and the events the metrics count. Raising `InvalidMessage` dead-letters the
  delivery with the exception's reason; any other exception dead-letters it as `internal`;
- fires its timers in `tick` (called every `TICK_INTERVAL_S` with the hub clock and the role the
  broker gives this process on its single-active-consumer queues);
- hears in `on_consuming` that the runner (re)connected and is about to consume: whatever it
  held is gone (the broker sends it all again), and the time away is not the devices' silence.

A handler does no broker or output I/O of its own: the runner does what `Effects` says, in order,
and acks a delivery only after its points are written and what it published is confirmed.
The notify service's delivery workers are the one handler with I/O of their own: the send to a
receiver (a webhook POST, an SMTP session, each with a timeout) is their whole job, one delivery
at a time; what follows from the answer is still `Effects` (`hub/services/notify/worker.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from pika.spec import BasicProperties

from hub.core.points import Point
from hub.runtime.delivery import Delivery
from hub.runtime.topology import Declaration

#: A service's role on its single-active-consumer queues, as the broker decides it (the monitor
#: reads it from the management API): the broker delivers to it, keeps it waiting, or cannot say yet.
ROLE_ACTIVE, ROLE_STANDBY, ROLE_UNKNOWN = "active", "standby", "unknown"

#: Something a metric counts, e.g. ("alert", severity, rule): a name from `metrics.EVENT_COUNTERS`
#: and its label values. The runner hands them to the middleware once their batch is settled.
Event = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Publish:
    """A message to publish; the runner awaits the broker's confirm before it acks what caused it.

    `mandatory`: the broker returns it if nothing is bound to take it (logged and counted, never
    raised); a broadcast (alerts) nobody listens to is not mandatory.
    """

    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    mandatory: bool


class Refusal(NamedTuple):
    """A held delivery to dead-letter instead of settling, with its reason."""

    tag: int
    reason: str
    detail: str


class Effects:
    """What one delivery, or one tick, must cause; the runner carries it out.

    - `record`: the delivery itself as stored (a reading). If an output refuses that point, the
      delivery is dead-lettered `rejected_by_<family>` instead of stored.
    - `records`: more points that are the delivery itself (a batch's other readings), as `record`.
    - `points`: what else it caused (alerts, transitions, lifecycle records), written in the same batch.
    - `publishes`: sent at once, confirmed before the batch is acked.
    - `events`: counted by the middleware once the batch is settled.
    - `hold`: the delivery is not settled with its batch; the handler keeps its tag and later
      releases or refuses it (in the `Effects` of a delivery or a tick).
    - `release`: tags of held deliveries (the current one too) to settle with this batch.
    - `refuse`: held deliveries to dead-letter, each with its reason, then settle.
    """

    __slots__ = ("events", "hold", "points", "publishes", "record", "records", "refuse", "release")

    def __init__(
        self,
        record: Point | None = None,
        points: Sequence[Point] = (),
        publishes: Sequence[Publish] = (),
        events: Sequence[Event] = (),
        hold: bool = False,
        release: Sequence[int] = (),
        refuse: Sequence[Refusal] = (),
        records: Sequence[Point] = (),
    ) -> None:
        self.record = record
        self.records = records
        self.points = points
        self.publishes = publishes
        self.events = events
        self.hold = hold
        self.release = release
        self.refuse = refuse

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__ if getattr(self, name))
        return f"Effects({shown})"


#: Nothing to do (a delivery settled with its batch and nothing else; a quiet tick).
NOTHING = Effects()


class Handler(Protocol):
    """A service: what it consumes, and what each delivery and each tick cause. Every call comes
    from its runner's thread."""

    #: The service's name: its thread, its log lines (`service=<name>`), its metrics' label.
    name: str
    #: What its runner declares and consumes on each connect.
    declaration: Declaration

    def handle(self, delivery: Delivery) -> Effects: ...

    def tick(self, now_ms: int, role: str) -> Effects:
        """Timers (silence, timeouts): called every `TICK_INTERVAL_S` while consuming."""
        ...

    def on_consuming(self, now_ms: int) -> None:
        """After each (re)connect, before the first delivery: forget what was held, which the broker
        hands over again (delivery tags start afresh on the new channel)."""
        ...
