"""The base of the hub's services: a consumer, an outbox, dead-lettering and middleware, joined.

A service implements `handle(delivery)`: it adds points to `self.outbox` (with the delivery's
tag, so the delivery is acked once they are written), publishes messages (`publish`, confirmed
before that ack) or raises `InvalidMessage`, which dead-letters that delivery with the reason.
Any other exception dead-letters that one delivery with reason `internal` and the error class:
the rest of the prefetch window proceeds, nothing is redelivered, no connection is dropped.
Nothing published waits for its confirm: a batch is written to every output, the confirms of
everything it published (dead-letters, alerts, commands) are awaited once, then it is acked at once.
A hub killed between the two loses nothing: the broker redelivers and the refused messages are
dead-lettered again (a second copy in iot.dead-letter, never none).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import pika
from pika.spec import BasicProperties

from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_EXCHANGE
from hub.core.errors import InvalidMessage
from hub.outputs.fanout import OutputSet, Refusal, RetryHook
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.deadletter import INTERNAL_REASON, dead_letter_properties, internal_detail
from hub.runtime.legacy_consumer import Consumer, Delivery
from hub.runtime.metrics import ServiceStats
from hub.runtime.middleware import Middleware, Stats, default_middleware
from hub.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

#: A service's role on a single-active-consumer queue, as the broker decides it (see `on_role`).
ROLE_ACTIVE, ROLE_STANDBY, ROLE_UNKNOWN = "active", "standby", "unknown"


class Service:
    """One of the hub's services, run in its own thread by `run()`."""

    name: str = "service"
    #: The queue a service with one consumes (a service with several sets `queues` instead).
    queue: topology.HubQueue
    tick_interval_s: float = 0.2

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        outputs: OutputSet | None = None,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.stats = ServiceStats(self.name)
        self.middleware = list(middleware) if middleware is not None else default_middleware(Stats(self.stats))
        self.outputs = outputs if outputs is not None else OutputSet(settings)
        self.consumer = Consumer(settings, self.name, self.queues, stop, self)
        #: Points this service caused and the deliveries they settle, written by `flush`.
        self.outbox = self.new_outbox()
        self._internal_errors: set[str] = set()
        #: Set by the monitor's thread from the management API; `unknown` until it can say.
        self.role = ROLE_UNKNOWN

    def run(self) -> None:
        self.consumer.run()

    @property
    def snapshot(self) -> Snapshot:
        """What the monitor reads of a service not yet on the runner (goes with this class)."""
        consumer = self.consumer
        return Snapshot(
            self.name,
            tuple(q.name for q in self.queues),
            connected=consumer.channel is not None,
            consumer_tags=dict(consumer.consumer_tags),
            held={q.name: consumer.held(q.name) for q in self.queues},
            progressed_at=time.monotonic(),
        )

    @property
    def queues(self) -> tuple[topology.HubQueue, ...]:
        """The queues this service consumes, all on one channel."""
        return (self.queue,)

    # --- what a service implements -----------------------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        raise NotImplementedError

    def new_outbox(self) -> Batch:
        return Batch()

    def settle(self, batch: Batch) -> None:
        """Ack the deliveries `batch` covers, once its points are written."""
        self.consumer.ack_through(batch.last_tag)

    def after_flush(self, batch: Batch, refused: Mapping[int, Refusal], latency_s: float) -> None:
        """Once a batch is written and acked: a service's own metrics."""

    def stored_count(self, batch: Batch, refused: Mapping[int, Refusal]) -> int:
        """What `hub_stats` counts as stored of a written batch: every point the outputs took."""
        return len(batch.points) - len(refused)

    def on_write_failed(self) -> None:
        """A write of this service's batch failed and will be retried (deliveries wait meanwhile)."""

    def on_role(self, role: str) -> None:
        """The broker delivers this service's queue to it (`active`) or keeps it `standby`
        (called from the monitor's thread; a service acts on a change in its own thread)."""
        self.role = role

    def idle_s(self) -> float | None:
        """Seconds since this service last stored something, for /health/ready (None: not judged)."""
        return None

    # --- the consumer's handler ---------------------------------------------------------------------

    def on_connect(self, connection: pika.BlockingConnection) -> None:
        """Before the queues are declared: nothing to check by default."""

    def on_start(self, consumer: Consumer) -> None:
        self.outputs.open()

    def deliver(self, delivery: Delivery) -> None:
        try:
            self.handle(delivery)
        except InvalidMessage as exc:
            self.dead_letter(delivery, exc.reason, exc.detail)
            self.outbox.add(delivery.tag)
        except Exception as exc:
            kind = type(exc).__name__
            if kind not in self._internal_errors:  # the traceback once per error class, then counted
                self._internal_errors.add(kind)
                log.exception(
                    "service=%s event=internal_error error=%s routing_key=%s", self.name, kind, delivery.routing_key
                )
            self.dead_letter(delivery, INTERNAL_REASON, internal_detail(exc))
            self.outbox.add(delivery.tag)

    def tick(self, idle: bool = False) -> None:
        if self.outbox.due(idle=idle):
            self.flush()

    def next_tick_s(self) -> float:
        return min(self.tick_interval_s, self.outbox.next_check_s())

    def on_stop(self) -> None:
        self.flush()

    def on_connection_lost(self) -> None:
        self.outbox.reset()

    def on_connected(self, connected: bool) -> None:
        for middleware in self.middleware:
            if connected:
                middleware.after_connect(self.name)
            else:
                middleware.after_disconnect(self.name)

    # --- what services use -------------------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Send the delivery to iot.dlx with the reason; `flush` awaits the confirm before the ack.

        Mandatory: iot.dead-letter is declared at every connect, a return is logged and counted.
        """
        self.consumer.publish(
            DEAD_LETTER_EXCHANGE,
            delivery.routing_key,
            delivery.body,
            dead_letter_properties(delivery.properties, reason, detail, self.consumer.queue_of(delivery)),
            mandatory=True,
        )
        for middleware in self.middleware:
            middleware.after_dead_letter(self.name, reason)

    def flush(self) -> None:
        """Write the outbox's points to every output (retrying until they hold them), then ack."""
        if self.outbox.empty:
            return
        batch, self.outbox = self.outbox, self.new_outbox()
        started = time.monotonic()
        refused: dict[int, Refusal] = {}
        if batch.points:
            refused = self.outputs.write(batch.points, self.stop, self.consumer.sleep, self._write_failed(batch))
        for index, refusal in refused.items():
            source = batch.sources[index]
            if isinstance(source, Delivery):
                self.dead_letter(source, refusal.reason, refusal.detail)
        self.consumer.wait_for_confirms()  # what the batch published (dead-letters, alerts) durable before its ack
        self.settle(batch)
        latency = time.monotonic() - started
        for middleware in self.middleware:
            middleware.after_batch(self.name, batch.deliveries, self.stored_count(batch, refused), latency)
        self.after_flush(batch, refused, latency)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: BasicProperties, *, mandatory: bool
    ) -> None:
        """Publish what a delivery caused; `flush` awaits the broker's confirm before the delivery's ack."""
        self.consumer.publish(exchange, routing_key, body, properties, mandatory=mandatory)

    def _write_failed(self, batch: Batch) -> RetryHook:
        def note(output: str, attempt: int, error: Exception) -> None:
            self.on_write_failed()
            for middleware in self.middleware:
                middleware.after_write_failure(self.name, output, attempt, error, len(batch.points))

        return note
