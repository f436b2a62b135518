"""In-memory stand-ins for a runner's broker and outputs, as dramatiq's `StubBroker` is for its
workers: the ack, settle, retry and redelivery logic of `Runner` tested in one thread, in
milliseconds, on a fake clock, with no server.

- `StubConsumer`: queues with prefetch windows, delivery tags per connection, `multiple` acks,
  publisher confirms (and nacks on demand), connection loss with redelivery of everything unacked
  (`redelivered` set); an ack of a tag it never delivered, or acked already, is an error, as it is
  for RabbitMQ (which closes the channel).
- `MemoryOutput`: keeps the points it was given; fails a number of writes, or refuses chosen points.
- `FakeClock`: the monotonic clock of batches and ticks, advanced by waiting.

They are for tests; the hub itself never uses them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pika.spec import Basic, BasicProperties

from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_REASON_HEADER
from hub.core.errors import BrokerUnavailable, PointsRejected, StorageUnavailable
from hub.core.points import Point
from hub.runtime.delivery import Delivery
from hub.runtime.handler import Publish
from hub.runtime.topology import Declaration

#: A stub runs at most this many `serve` rounds, then stops the runner (a test that never ends is a bug).
MAX_ROUNDS = 10_000


class FakeClock:
    """Monotonic seconds that move only when told to (or when a stub waits)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass
class StubMessage:
    queue: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] | None = None
    redelivered: bool = False
    #: How many times it was delivered.
    deliveries: int = 0


@dataclass
class StubConsumer:
    """One runner's broker connection, in memory. `put` messages, then run the runner."""

    stop: threading.Event
    clock: FakeClock = field(default_factory=FakeClock)
    #: Connect attempts that fail (BrokerUnavailable) before one succeeds.
    failing_connects: int = 0
    #: `stop` is set once this is true (checked at each `serve`), so `Runner.run` returns.
    stop_when: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self.ready: dict[str, deque[StubMessage]] = {}
        self.prefetch: dict[str, int] = {}
        #: Delivery tag -> the message, on the current connection.
        self.unacked: dict[int, StubMessage] = {}
        self.acked: list[StubMessage] = []
        #: Confirmed publishes, in order; those waiting for their confirm.
        self.published: list[Publish] = []
        self.unconfirmed: list[Publish] = []
        self.consumer_tags: dict[str, str] = {}
        self.connected = False
        self.connects = 0
        self.rounds = 0
        #: The next `wait_for_confirms` raises as a broker nack does (the messages were not taken).
        self.nack_next = False
        #: The connection breaks at the next call that uses it (`drop` sets it).
        self.broken = False
        self._next_tag = 1
        self._on_delivery: Callable[[Delivery], None] | None = None
        self._declared: Declaration | None = None

    # --- the test's side ---------------------------------------------------------------------------

    def put(self, queue: str, routing_key: str, body: bytes, headers: dict[str, Any] | None = None) -> StubMessage:
        message = StubMessage(queue, routing_key, body, headers)
        self.ready.setdefault(queue, deque()).append(message)
        return message

    def drop(self) -> None:
        """The connection breaks: the next broker call raises, everything unacked comes back."""
        self.broken = True

    @property
    def dead_letters(self) -> list[tuple[str, str]]:
        """(routing key, reason) of every confirmed dead-letter, in order."""
        return [
            (message.routing_key, str((message.properties.headers or {})[DEAD_LETTER_REASON_HEADER]))
            for message in self.published
            if message.exchange == DEAD_LETTER_EXCHANGE
        ]

    @property
    def idle(self) -> bool:
        """Nothing waits to be delivered and nothing is unacked."""
        return not self.unacked and not any(self.ready.values())

    # --- the runner's side (hub.runtime.runner.Transport) ------------------------------------------

    def connect(self, declaration: Declaration) -> None:
        if self.failing_connects > 0:
            self.failing_connects -= 1
            raise BrokerUnavailable("the stub broker refuses this connect")
        self.connected, self.broken = True, False
        self.connects += 1
        self._next_tag = 1
        self._declared = declaration
        for queue in declaration.queues:
            self.ready.setdefault(queue.name, deque())
            self.prefetch[queue.name] = queue.prefetch

    def consume(
        self, declaration: Declaration, on_delivery: Callable[[Delivery], None], on_side: Callable[[Delivery], None]
    ) -> None:
        self._check()
        self._on_delivery = on_delivery
        self.consumer_tags = {queue.name: f"ctag-{self.connects}-{queue.name}" for queue in declaration.queues}

    def serve(self, timeout_s: float) -> None:
        self._check()
        self.rounds += 1
        if self.stop_when() or self.rounds > MAX_ROUNDS:
            self.stop.set()
            return
        if not self._deliver_ready():
            self.clock.advance(timeout_s)

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        if self.connected and not self.broken:
            self._deliver_ready()

    def ack(self, tag: int, multiple: bool) -> None:
        self._check()
        if tag not in self.unacked:
            self.broken = True  # RabbitMQ closes the channel: PRECONDITION_FAILED - unknown delivery tag
            raise BrokerUnavailable(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        for settled in [t for t in self.unacked if t <= tag] if multiple else [tag]:
            self.acked.append(self.unacked.pop(settled))

    def publish(self, message: Publish) -> None:
        self._check()
        self.unconfirmed.append(message)

    def wait_for_confirms(self) -> None:
        self._check()
        if self.nack_next:
            self.nack_next = False
            self.unconfirmed.clear()
            raise BrokerUnavailable("the broker refused 1 published message(s) (basic.nack)")
        self.published.extend(self.unconfirmed)
        self.unconfirmed.clear()

    def close(self) -> None:
        """Whatever was unacked goes back to the head of its queue, in order, marked redelivered;
        what waited for its confirm may be lost (the worst case)."""
        for tag in sorted(self.unacked, reverse=True):
            message = self.unacked.pop(tag)
            message.redelivered = True
            self.ready[message.queue].appendleft(message)
        self.unconfirmed.clear()
        self.consumer_tags = {}
        self.connected = False
        self._on_delivery = None

    # --- inside -------------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.connected:
            raise BrokerUnavailable("the stub broker is not connected")
        if self.broken:
            raise ConnectionResetError("the stub broker dropped the connection")

    def _deliver_ready(self) -> bool:
        """Hand over what the prefetch windows allow; True if anything was."""
        delivered = False
        for queue, waiting in self.ready.items():
            window = self.prefetch.get(queue, 0)
            while waiting and self._on_delivery is not None and not self.broken:
                if sum(1 for m in self.unacked.values() if m.queue == queue) >= window:
                    break
                message = waiting.popleft()
                tag = self._next_tag
                self._next_tag += 1
                self.unacked[tag] = message
                message.deliveries += 1
                method = Basic.Deliver(
                    consumer_tag=self.consumer_tags.get(queue, ""),
                    delivery_tag=tag,
                    redelivered=message.redelivered,
                    exchange="iot",
                    routing_key=message.routing_key,
                )
                properties = BasicProperties(headers=message.headers, delivery_mode=2)
                self._on_delivery(Delivery(method, properties, message.body, queue))
                delivered = True
        return delivered


@dataclass
class MemoryOutput:
    """An output that keeps every point it takes (`points`, in order, repeats included)."""

    name: str = "memory"
    family: str = "memory"
    #: Writes that fail (StorageUnavailable) before they pass.
    failing_writes: int = 0
    #: A point this says to refuse is refused by the server (PointsRejected), the others stored.
    refuses: Callable[[Point], bool] = lambda _point: False
    points: list[Point] = field(default_factory=list)
    writes: int = 0

    def write(self, points: Sequence[Point]) -> None:
        self.writes += 1
        if self.failing_writes > 0:
            self.failing_writes -= 1
            raise StorageUnavailable("the memory output is down")
        refused = [point for point in points if self.refuses(point)]
        if refused:
            raise PointsRejected(f"refused {len(refused)} point(s)")
        self.points.extend(points)

    def ping(self) -> bool:
        return self.failing_writes == 0

    def close(self) -> None:
        pass
