"""The runner: one service's handler, driven over one broker connection until the hub stops.

The runner owns what every service needs and none does itself (dramatiq's worker):

- connecting, declaring what the handler declares, consuming, and reconnecting with backoff
  after any broker or storage outage (the backoff starts afresh after each successful connect);
- handing each delivery to the handler and doing what its `Effects` say: publishing at once,
  collecting points and the deliveries they settle in the open batch (`Batch` says when it is due);
- the write: every output takes the batch (each retrying on its own); a point an output refuses
  dead-letters the delivery it stands for; then the broker's confirms of everything the batch
  published are awaited once, and only then is the batch acked, at once (`multiple`, stopping
  below a delivery the handler holds);
- dead-lettering a delivery the handler refuses (`InvalidMessage`: its reason) or fails on (any
  other exception: `internal`, that delivery alone, no reconnect, no redelivery of the window);
- the signals: each delivery received, each point stored, each dead-letter, each write retry and
  each batch's latency, once, to the middleware, when its batch is settled; and a `Snapshot` of
  itself for the other threads.

Deliveries arrive while the runner waits for input, and also while it waits for a write's retry
or for confirms: they go into the next batch, the one being written is not touched. A lost
connection drops the open batch and what the handler held: nothing of it was acked, the broker
delivers it again, and every effect downstream is keyed so that a replay repeats nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

import pika.exceptions

from hub.core.backoff import HUB_RECONNECT, Backoff
from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_EXCHANGE, now_ms
from hub.core.errors import BrokerUnavailable, HubError, InvalidMessage, StorageUnavailable
from hub.outputs.fanout import OutputSet, Refusal
from hub.runtime.batch import BATCH_MAX_POINTS, Batch
from hub.runtime.consumer import Consumer
from hub.runtime.deadletter import INTERNAL_REASON, dead_letter_properties, internal_detail
from hub.runtime.delivery import Delivery
from hub.runtime.handler import ROLE_UNKNOWN, Effects, Handler, Publish
from hub.runtime.middleware import BatchReport, Middleware, default_middleware
from hub.runtime.snapshot import STALL_S, Snapshot
from hub.runtime.topology import Declaration, HubQueue

log = logging.getLogger(__name__)

#: How often the runner calls its handler's `tick` while consuming.
TICK_INTERVAL_S = 0.2
#: What may pass by itself: the runner reconnects after these, anything else stops the service.
TRANSIENT_ERRORS = (pika.exceptions.AMQPError, OSError, BrokerUnavailable, StorageUnavailable)


class Transport(Protocol):
    """What a runner needs of the broker: `hub.runtime.consumer.Consumer` (pika), or
    `hub.runtime.stub.StubConsumer` (in memory, for tests). Deliveries reach the runner's
    callbacks during `serve`, `sleep` and `wait_for_confirms`, never at another time."""

    @property
    def consumer_tags(self) -> Mapping[str, str]:
        """Queue -> the broker's consumer tag of this connection on it, while consuming."""

    def connect(self, declaration: Declaration) -> None:
        """Connect and declare; nothing is consumed yet."""

    def consume(
        self, declaration: Declaration, on_delivery: Callable[[Delivery], None], on_side: Callable[[Delivery], None]
    ) -> None:
        """Start consuming the declared queues (`on_delivery`) and side queues (`on_side`, no acks)."""

    def serve(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for input, handing over what comes (returns early once some came)."""

    def sleep(self, seconds: float) -> None:
        """Wait while serving the connection; returns early once the hub stops."""

    def ack(self, tag: int, multiple: bool) -> None: ...

    def publish(self, message: Publish) -> None:
        """Publish without waiting for the confirm."""

    def wait_for_confirms(self) -> None:
        """Return once the broker confirmed everything published so far (raises on a nack)."""

    def close(self) -> None: ...


class Runner:
    """Runs `handler` over `transport` until `stop` is set (`run`), in the thread that calls it."""

    def __init__(
        self,
        handler: Handler,
        transport: Transport,
        outputs: OutputSet,
        middleware: Sequence[Middleware],
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
        hub_clock: Callable[[], int] = now_ms,
    ) -> None:
        """`clock`: the monotonic clock of batches and ticks; `wait`: how the reconnect backoff
        waits (default: `stop.wait`); `hub_clock`: the epoch ms the handler's `tick` and
        `on_consuming` are given. Tests pass fake clocks."""
        self.handler = handler
        self.name = handler.name
        self.transport = transport
        self.outputs = outputs
        self.middleware = list(middleware)
        self.stop = stop
        self._clock = clock
        self._wait = wait or stop.wait
        self._now_ms = hub_clock
        #: The role the monitor's thread found for this process on the handler's queues.
        self.role = ROLE_UNKNOWN
        self._declaration = handler.declaration
        self._queue_names = self._declaration.queue_names
        windows = [queue.prefetch for queue in self._declaration.queues]
        #: The most deliveries the broker can have handed over unacked (no limit if a window is 0).
        self._window = sum(windows) if windows and all(windows) else BATCH_MAX_POINTS
        self._open = self._new_batch()
        self._writing: Batch | None = None
        #: Deliveries the handler holds, by tag: settled when it releases or refuses them.
        self._held: dict[int, Delivery] = {}
        #: Per queue, the tags taken and not acked yet, in order (what `Snapshot.held` counts).
        self._unacked: dict[str, deque[int]] = {name: deque() for name in self._queue_names}
        self._delivered = 0
        self._internal_errors: set[str] = set()
        self._connected = False
        self._connects = 0
        self._reading_since_ms = 0
        self._writing_since = 0.0
        self._retrying = False
        self._progressed_at = clock()
        self.snapshot = Snapshot(self.name, self._queue_names, progressed_at=self._progressed_at)

    @classmethod
    def from_settings(
        cls, settings: Settings, handler: Handler, stop: threading.Event, middleware: Sequence[Middleware] | None = None
    ) -> Runner:
        """`handler` over its own broker connection and its own outputs, as IOT_* says."""
        middleware = default_middleware() if middleware is None else middleware
        return cls(handler, Consumer(settings, handler.name, stop), OutputSet(settings), middleware, stop)

    @property
    def queues(self) -> tuple[HubQueue, ...]:
        """The hub queues it consumes (what its handler declared)."""
        return self._declaration.queues

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stop` is set; reconnect with backoff after any broker or storage outage.

        A `HubError` that is not an outage (a queue made by an older hub) stops the service."""
        backoff = Backoff(HUB_RECONNECT)
        while not self.stop.is_set():
            try:
                self._consume(backoff)
            except TRANSIENT_ERRORS as exc:
                log.warning("service=%s event=disconnected error=%r", self.name, exc)
            except HubError:
                raise
            except Exception:
                log.exception("service=%s event=crashed", self.name)
            finally:
                self._lost()
            if not self.stop.is_set():
                delay = backoff.next_delay_s()
                log.info("service=%s event=reconnecting in_s=%.1f", self.name, delay)
                self._wait(delay)

    def _consume(self, backoff: Backoff) -> None:
        declaration = self._declaration
        self.transport.connect(declaration)
        self.outputs.open()
        self.handler.on_consuming(self._now_ms())
        self.transport.consume(declaration, self._deliver, self._side)
        backoff.reset()  # connected: the next outage starts again from the shortest wait
        self._connected = True
        self._connects += 1
        self._reading_since_ms = self._now_ms()
        for middleware in self.middleware:
            middleware.after_connect(self.name)
        log.info(
            "service=%s event=consuming queues=%s prefetch=%s",
            self.name,
            ",".join(self._queue_names),
            ",".join(str(q.prefetch) for q in declaration.queues),
        )
        self._publish()
        clock, transport, handler = self._clock, self.transport, self.handler
        next_tick = clock()
        while not self.stop.is_set():
            seen = self._delivered
            now = clock()
            transport.serve(max(0.0, min(self._open.next_check_s(now), next_tick - now)))
            now = clock()
            if now >= next_tick:
                next_tick = now + TICK_INTERVAL_S
                self._apply(handler.tick(self._now_ms(), self.role), None)
            if self._open.due(now, idle=self._delivered == seen):
                self._flush()
        self._flush()  # a clean stop: what can be settled is

    def _lost(self) -> None:
        """The connection is gone (or never came): nothing unacked counts any more."""
        self._connected = False
        for middleware in self.middleware:
            middleware.after_disconnect(self.name)
        self._open = self._new_batch()
        self._writing = None
        self._held.clear()
        for tags in self._unacked.values():
            tags.clear()
        self._writing_since, self._retrying = 0.0, False
        self.transport.close()
        self._publish()

    def _new_batch(self) -> Batch:
        return Batch(max_deliveries=self._window)

    # --- deliveries --------------------------------------------------------------------------------

    def _deliver(self, delivery: Delivery) -> None:
        self._delivered += 1
        self._unacked[delivery.queue].append(delivery.method.delivery_tag)
        try:
            effects = self.handler.handle(delivery)
        except InvalidMessage as exc:
            self._refuse(delivery, exc.reason, exc.detail)
            return
        except Exception as exc:
            self._note_internal(exc, delivery)
            self._refuse(delivery, INTERNAL_REASON, internal_detail(exc))
            return
        self._apply(effects, delivery)

    def _side(self, delivery: Delivery) -> None:
        """A delivery of a side queue: taken without an ack, so nothing to settle or dead-letter
        (it is a copy; the hub queue that holds the original judges that)."""
        try:
            effects = self.handler.handle(delivery)
        except InvalidMessage:
            return
        except Exception as exc:
            self._note_internal(exc, delivery)
            return
        self._apply(effects, None)

    def _note_internal(self, exc: Exception, delivery: Delivery) -> None:
        kind = type(exc).__name__
        if kind not in self._internal_errors:  # the traceback once per error class, then counted
            self._internal_errors.add(kind)
            log.error(
                "service=%s event=internal_error error=%s routing_key=%s",
                self.name,
                kind,
                delivery.routing_key,
                exc_info=exc,
            )

    def _refuse(self, delivery: Delivery, reason: str, detail: str) -> None:
        batch = self._open
        self._dead_letter(batch, delivery, reason, detail)
        batch.settle(delivery.tag, delivery)
        if batch.opened_at is None:
            batch.open(self._clock())
            self._publish()

    def _apply(self, effects: Effects, delivery: Delivery | None) -> None:
        """Do what `effects` say: publish now, the rest into the open batch."""
        batch = self._open
        for message in effects.publishes:
            self.transport.publish(message)
        record = effects.record
        if record is not None:
            batch.points.append(record)
            batch.sources.append(delivery)
            if not batch.oldest_record_ms or record.ts_ms < batch.oldest_record_ms:
                batch.oldest_record_ms = record.ts_ms
        for more in effects.records:
            batch.points.append(more)
            batch.sources.append(delivery)
            if more.ts_ms < batch.oldest_record_ms:
                batch.oldest_record_ms = more.ts_ms
        points = effects.points
        if points:
            batch.points.extend(points)
            batch.sources.extend([None] * len(points))
        if effects.events:
            batch.events.extend(effects.events)
        if delivery is not None:
            if effects.hold:
                self._held[delivery.method.delivery_tag] = delivery
            else:
                batch.settle(delivery.method.delivery_tag, delivery)
        held = self._held
        for tag in effects.release:
            released = held.pop(tag, None)
            if released is not None:
                batch.settle(tag, released)
        for tag, reason, detail in effects.refuse:
            refused = held.pop(tag, None)
            if refused is not None:
                self._dead_letter(batch, refused, reason, detail)
                batch.settle(tag, refused)
        if batch.opened_at is None and not batch.empty:
            batch.open(self._clock())
            self._publish()

    def _dead_letter(self, batch: Batch, delivery: Delivery, reason: str, detail: str) -> None:
        """To iot.dlx with the reason, mandatory (iot.dead-letter is declared at every connect);
        its confirm is awaited before `batch` is acked, and it is counted once that is done."""
        properties = dead_letter_properties(delivery.properties, reason, detail, delivery.queue)
        self.transport.publish(Publish(DEAD_LETTER_EXCHANGE, delivery.routing_key, delivery.body, properties, True))
        batch.dead_lettered.append(reason)

    # --- a batch -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the open batch to every output (retrying until they hold it), await the confirms
        of what it published, ack it, report it."""
        batch = self._open
        if batch.empty:
            return
        self._open = self._new_batch()
        self._writing = batch
        started = self._clock()
        self._writing_since = started
        self._publish()
        refused: dict[int, Refusal] = {}
        if batch.points:
            refused = self.outputs.write(batch.points, self.stop, self.transport.sleep, partial(self._failed, batch))
            letters: set[int] = set()  # a batch's delivery is dead-lettered once, whatever of it was refused
            for index, refusal in refused.items():
                source = batch.sources[index]
                if isinstance(source, Delivery) and id(source) not in letters:
                    letters.add(id(source))
                    self._dead_letter(batch, source, refusal.reason, refusal.detail)
        self.transport.wait_for_confirms()  # what the batch published is durable before its ack
        self._settle(batch)
        latency = self._clock() - started
        settled_at = self._now_ms()
        if self._retrying or latency > STALL_S:
            self._reading_since_ms = settled_at
        self._writing, self._writing_since, self._retrying = None, 0.0, False
        self._progressed_at = self._clock()
        records = [
            point
            for index, (point, source) in enumerate(zip(batch.points, batch.sources, strict=True))
            if source is not None and index not in refused
        ]
        report = BatchReport(
            batch.settled,
            len(batch.points),
            len(batch.points) - len(refused),
            records,
            batch.events,
            latency,
            settled_at,
        )
        for middleware in self.middleware:
            for reason in batch.dead_lettered:
                middleware.after_dead_letter(self.name, reason)
            middleware.after_settle(self.name, report)
        self._publish()

    def _failed(self, batch: Batch, output: str, attempt: int, error: Exception) -> None:
        self._retrying = True
        self._publish()
        for middleware in self.middleware:
            middleware.after_write_failure(self.name, output, attempt, error, len(batch.points))

    def _settle(self, batch: Batch) -> None:
        """Ack what `batch` settles with one `multiple` ack, but never a held delivery nor one of the
        batch opened meanwhile: the few above the lowest of those are acked one by one."""
        if not batch.settled:
            return
        floor = self._open.low_tag
        if self._held:
            lowest_held = min(self._held)
            floor = min(floor, lowest_held) if floor else lowest_held
        transport = self.transport
        if not floor or floor > batch.last_tag:
            transport.ack(batch.last_tag, True)
            self._acked_through(batch.last_tag)
            return
        tags = sorted(int(delivery.method.delivery_tag) for delivery in batch.settled)
        below = [tag for tag in tags if tag < floor]
        if below:
            transport.ack(below[-1], True)
            self._acked_through(below[-1])
        for tag in tags:
            if tag > floor:
                transport.ack(tag, False)
                self._acked_one(tag)

    def _acked_through(self, tag: int) -> None:
        for tags in self._unacked.values():
            while tags and tags[0] <= tag:
                tags.popleft()

    def _acked_one(self, tag: int) -> None:
        for tags in self._unacked.values():
            if tag in tags:
                tags.remove(tag)
                return

    # --- what other threads see --------------------------------------------------------------------

    def _publish(self) -> None:
        """Replace the snapshot (one reference swap: readers never see a half-made one)."""
        writing = self._writing
        waiting = [ts for ts in (self._open.oldest_record_ms, writing.oldest_record_ms if writing else 0) if ts]
        self.snapshot = Snapshot(
            service=self.name,
            queues=self._queue_names,
            connected=self._connected,
            connects=self._connects,
            consumer_tags=dict(self.transport.consumer_tags) if self._connected else {},
            held={queue: len(tags) for queue, tags in self._unacked.items()},
            reading_since_ms=self._reading_since_ms,
            writing_since=self._writing_since,
            retrying=self._retrying,
            progressed_at=self._progressed_at,
            unstored_since_ms=min(waiting) if waiting else 0,
        )
