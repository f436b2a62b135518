"""The consumer of the services not yet on the runner (`hub.runtime.runner`); goes once they all are.

The AMQP side of a service: connect, declare, prefetch, deliver, ack, publish, reconnect.

A `Consumer` owns one connection with two channels: one consuming one or more queues (each with
its own prefetch window; delivery tags count per channel, so one `multiple` ack settles
deliveries of every queue up to a tag), one publishing many messages and waiting for their
confirms once (`hub.runtime.confirms`). It hands each delivery to its `Handler`. After each read
from the broker it tells the handler whether anything arrived, so a batch can be written as soon
as the deliveries stop coming instead of waiting for its timer. It acks only what the handler
settles; a lost connection drops whatever was not acked, the broker redelivers it, and every
effect downstream is idempotent. The handler decides; this module only moves bytes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import Protocol

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from hub.clients.amqp import connect
from hub.core.backoff import HUB_RECONNECT, Backoff
from hub.core.config import Settings
from hub.core.errors import BrokerUnavailable, HubError, StorageUnavailable
from hub.runtime import topology
from hub.runtime.confirms import ConfirmBatch
from hub.runtime.consumer import instance_name
from hub.runtime.delivery import Delivery, protocol_of

log = logging.getLogger(__name__)

#: Returned (unroutable) mandatory messages are logged the 1st, 10th and every this many times.
UNROUTABLE_LOG_EVERY = 100
#: A retry's wait (`Consumer.sleep`) looks at the stop event at least this often.
SLEEP_SLICE_S = 0.1
#: What may pass by itself: the consumer reconnects after these, anything else stops the service.
TRANSIENT_ERRORS = (pika.exceptions.AMQPError, OSError, BrokerUnavailable, StorageUnavailable)


class Handler(Protocol):
    """What a consumer drives; every call happens on the consumer's thread."""

    def on_connect(self, connection: pika.BlockingConnection) -> None:
        """After each connection, before the queues are declared: refuse a topology it cannot use."""

    def on_start(self, consumer: Consumer) -> None:
        """After each (re)connection, before consuming: open outputs, add subscriptions."""

    def deliver(self, delivery: Delivery) -> None: ...

    def tick(self, idle: bool) -> None:
        """After each wait for input (`idle`: no delivery came during it): flush batches, fire timers."""

    def next_tick_s(self) -> float:
        """How long the consumer may wait for input before the next `tick` (it returns early on input)."""

    def on_stop(self) -> None:
        """On a clean stop while still connected: settle what can be settled."""

    def on_connection_lost(self) -> None:
        """Forget per-channel state (delivery tags): unacked deliveries come back."""

    def on_connected(self, connected: bool) -> None: ...


class Consumer:
    """One connection that consumes `queues` on one channel for `handler` until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        queues: tuple[topology.HubQueue, ...],
        stop: threading.Event,
        handler: Handler,
    ) -> None:
        self.settings, self.name, self.queues, self.stop, self.handler = settings, name, queues, stop, handler
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.publisher: ConfirmBatch | None = None
        #: Deliveries handed to the handler on this connection (tells `tick` whether any came).
        self.delivered = 0
        #: Mandatory messages the broker returned as unroutable (see `publish`).
        self.unroutable = 0
        #: Queue -> the broker's name for this subscription to it while consuming (the management
        #: API lists it, with whether a single-active-consumer queue delivers to it or keeps it waiting).
        self.consumer_tags: dict[str, str] = {}
        self._queue_by_tag: dict[str, str] = {}
        # What `held` counts: delivery tags seen and acked on the current channel.
        self._last_tag = 0
        self._acked_through = 0
        self._acked_singly: set[int] = set()
        #: With several queues: per queue, its unacked delivery tags in order (acked `multiple` only).
        self._unacked: dict[str, deque[int]] = {q.name: deque() for q in queues} if len(queues) > 1 else {}

    # --- what handlers use -----------------------------------------------------------------------

    def ack_through(self, tag: int) -> None:
        """Ack every delivery up to `tag` at once (`multiple`)."""
        assert self.channel is not None
        if tag:
            self.channel.basic_ack(delivery_tag=tag, multiple=True)
            if tag > self._acked_through:
                self._acked_through = tag
                self._acked_singly = {t for t in self._acked_singly if t > tag}
            for tags in self._unacked.values():
                while tags and tags[0] <= tag:
                    tags.popleft()

    def ack(self, tag: int) -> None:
        assert self.channel is not None
        self.channel.basic_ack(delivery_tag=tag, multiple=False)
        if tag > self._acked_through:
            self._acked_singly.add(tag)

    def queue_of(self, delivery: Delivery) -> str:
        """The queue `delivery` came from."""
        return self._queue_by_tag.get(str(delivery.method.consumer_tag), self.queues[0].name)

    def held(self, queue: str | None = None) -> int:
        """Deliveries this consumer has taken from its queues (or from `queue`) and not yet acked
        (read from any thread); the broker counts them as unacked, not as ready.

        Delivery tags count up from 1 on each channel, so the total is the highest tag seen
        minus those acked; per queue, with several, the tags not acked yet are kept in order.
        """
        if queue is not None and self._unacked:
            return len(self._unacked.get(queue, ()))
        return max(0, self._last_tag - self._acked_through - len(self._acked_singly))

    def sleep(self, seconds: float) -> None:
        """Wait while still serving the connection (heartbeats, deliveries into the next batch).

        Returns early once `stop` is set (within `SLEEP_SLICE_S`): a write retry's backoff of up
        to 10 s must not hold a SIGTERM.
        """
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.connection is not None and self.connection.is_open:
                self.connection.sleep(min(SLEEP_SLICE_S, remaining))
            else:
                self.stop.wait(remaining)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: BasicProperties, *, mandatory: bool
    ) -> None:
        """Publish without waiting: `wait_for_confirms` says when the broker holds the message.

        `mandatory` is the caller's choice: a broadcast (alerts) nobody is bound to is normal and
        silently dropped by the broker. A mandatory message the broker returns as unroutable is
        logged and counted, never raised: a missing binding must not disconnect the service, whose
        redelivered input would only be returned again. A broker nack raises in
        `wait_for_confirms`: the message was not taken, so the input must not be acked.
        """
        assert self.publisher is not None
        self.publisher.publish(exchange, routing_key, body, properties, mandatory=mandatory)

    def wait_for_confirms(self) -> None:
        """Return once the broker confirmed every message published so far (raises on a nack)."""
        if self.publisher is not None:
            self.publisher.wait()

    def _returned(self, exchange: str, routing_key: str) -> None:
        self.unroutable += 1
        if self.unroutable in (1, 10) or self.unroutable % UNROUTABLE_LOG_EVERY == 0:
            log.error(
                "service=%s event=unroutable exchange=%s routing_key=%s returned_total=%d",
                self.name,
                exchange,
                routing_key,
                self.unroutable,
            )

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stop` is set; reconnect with backoff after any broker or storage outage."""
        backoff = Backoff(HUB_RECONNECT)
        while not self.stop.is_set():
            try:
                self._connect_and_consume()
                backoff.reset()
            except TRANSIENT_ERRORS as exc:
                log.warning("service=%s event=disconnected error=%r", self.name, exc)
            except HubError:
                raise
            except Exception:
                log.exception("service=%s event=crashed", self.name)
            finally:
                self.handler.on_connected(False)
                self.handler.on_connection_lost()
                self._close()
            if not self.stop.is_set():
                delay = backoff.next_delay_s()
                log.info("service=%s event=reconnecting in_s=%.1f", self.name, delay)
                self.stop.wait(delay)

    def _connect_and_consume(self) -> None:
        # The instance in the name tells, in the management API, which hub is the active consumer.
        self.connection = connect(self.settings, f"hub-{self.name} {instance_name()}")
        self._last_tag, self._acked_through, self._acked_singly = 0, 0, set()
        for tags in self._unacked.values():
            tags.clear()
        self.handler.on_connect(self.connection)
        self.channel = self.connection.channel()
        for queue in self.queues:
            topology.declare(self.channel, queue)
        self.publisher = ConfirmBatch(self.connection, self._returned)
        self.handler.on_start(self)
        for queue in self.queues:
            # Not global: the window applies to each consumer (each queue) started after it.
            self.channel.basic_qos(prefetch_count=queue.prefetch)
            tag = self.channel.basic_consume(queue.name, self._deliver)
            self.consumer_tags[queue.name] = tag
            self._queue_by_tag[tag] = queue.name
        self.handler.on_connected(True)
        log.info(
            "service=%s event=consuming queues=%s prefetch=%s",
            self.name,
            ",".join(q.name for q in self.queues),
            ",".join(str(q.prefetch) for q in self.queues),
        )
        while not self.stop.is_set():
            seen = self.delivered
            self.connection.process_data_events(time_limit=self.handler.next_tick_s())
            self.handler.tick(idle=self.delivered == seen)
        self.handler.on_stop()

    def _deliver(
        self, _channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        self._last_tag = method.delivery_tag
        if self._unacked:
            self._unacked[self._queue_by_tag[method.consumer_tag]].append(method.delivery_tag)
        self.delivered += 1
        self.handler.deliver(Delivery(method, properties, body))

    def _close(self) -> None:
        connection, self.connection, self.channel, self.publisher = self.connection, None, None, None
        self.consumer_tags, self._queue_by_tag = {}, {}
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection fails to close in many ways
                connection.close()


__all__ = ["Consumer", "Delivery", "Handler", "protocol_of"]
