"""The pika shell every hub service shares: connect, declare, consume, tick, reconnect.

A service implements `on_message` (called for each delivery) and `tick` (called at least every
`tick_interval_s`, where batches are flushed and timers fire). Deliveries are settled by the
service with `ack_through(tag)`, one `basic_ack(multiple=True)` for many. A lost connection
drops whatever was not acked: the broker redelivers it, and every effect is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import pika
import pika.exceptions
import tenacity
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_REASON_HEADER, VHOST
from hub.core.errors import HubError, StorageUnavailable
from hub.outputs.influxdb import Writer, open_writer
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.metrics import CONNECTED, DEAD_LETTERED, WRITE_RETRIES, ServiceStats

log = logging.getLogger(__name__)

#: Longest wait between two reconnection attempts.
RECONNECT_MAX_S = 10.0
RECONNECT_MIN_S = 0.5
#: Backoff between failed InfluxDB writes: exponential from RETRY_MIN_S to RETRY_MAX_S, with jitter.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 10.0
#: AMQP heartbeat; the event loop runs at least every tick, so it is always answered.
HEARTBEAT_S = 30
#: Header carrying the human-readable detail of a dead-lettering (the reason code is x-iot-reason).
DEAD_LETTER_DETAIL_HEADER = "x-iot-detail"
DETAIL_MAX_CHARS = 500
#: Returned (unroutable) mandatory messages are logged the 1st, 10th and every this many times.
UNROUTABLE_LOG_EVERY = 100

Delivery = tuple[Basic.Deliver, BasicProperties, bytes]


def connection_parameters(settings: Settings, name: str) -> pika.ConnectionParameters:
    amqp = settings.amqp
    return pika.ConnectionParameters(
        host=amqp.host,
        port=amqp.port,
        virtual_host=amqp.vhost if amqp.vhost != "/" else VHOST,
        credentials=pika.PlainCredentials(amqp.user, amqp.password),
        heartbeat=HEARTBEAT_S,
        client_properties={"connection_name": f"hub-{name}"},
        connection_attempts=1,
        blocked_connection_timeout=60,
    )


class AmqpService:
    """Base of the hub's consumers; one instance runs in one thread with its own connection."""

    name: str = "service"
    queue: topology.HubQueue
    tick_interval_s: float = 0.2

    def __init__(self, settings: Settings, stop: threading.Event, writer: Writer | None = None) -> None:
        self.settings = settings
        self.stop = stop
        self.stats = ServiceStats(self.name)
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.publisher: BlockingChannel | None = None
        self.writer = writer
        #: Points this service caused and the deliveries they settle, written by `flush_outbox`.
        self.outbox = self.new_outbox()
        #: Mandatory messages the broker returned as unroutable (see `publish`).
        self.unroutable = 0

    # --- hooks -------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Called after each (re)connection, before consuming."""
        if self.writer is None:
            self.writer = open_writer(self.settings)

    def on_message(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Periodic work: flush batches, fire timers."""
        if self.outbox.due():
            self.flush_outbox()

    def on_stop(self) -> None:
        """Called on a clean stop while still connected: settle what can be settled."""
        self.flush_outbox()

    def new_outbox(self) -> Batch:
        return Batch()

    def settle(self, batch: Batch) -> None:
        """Ack the deliveries `batch` covers, once its points are written."""
        self.ack_through(batch.last_tag)

    def on_connection_lost(self) -> None:
        """Forget per-channel state (delivery tags); unacked deliveries come back."""
        self.outbox.reset()

    def flush_outbox(self) -> None:
        """Write the outbox's points, then ack every delivery it covers."""
        if self.outbox.empty:
            return
        batch, self.outbox = self.outbox, self.new_outbox()
        if batch.lines:
            self.write_with_retries(batch.payload())
        self.settle(batch)
        with self.stats.lock:
            self.stats.received += batch.deliveries
            self.stats.stored += len(batch.lines)

    def write_with_retries(self, payload: bytes) -> None:
        """Write until InfluxDB takes it or the hub stops; the connection is served meanwhile."""
        assert self.writer is not None

        def note_retry(state: tenacity.RetryCallState) -> None:
            WRITE_RETRIES.labels(self.name).inc()
            with self.stats.lock:
                self.stats.write_retries += 1
            if state.attempt_number in (1, 10) or state.attempt_number % 50 == 0:
                log.warning(
                    "service=%s event=write_failed attempt=%d points_kept=%d error=%r",
                    self.name,
                    state.attempt_number,
                    payload.count(b"\n") + 1,
                    state.outcome.exception() if state.outcome else None,
                )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StorageUnavailable),
            wait=tenacity.wait_exponential_jitter(initial=RETRY_MIN_S, max=RETRY_MAX_S),
            stop=lambda _state: self.stop.is_set(),
            sleep=self.sleep,
            before_sleep=note_retry,
            reraise=True,
        )
        retrying(self.writer.write, payload)

    # --- helpers for services ------------------------------------------------------------------

    def ack_through(self, tag: int) -> None:
        assert self.channel is not None
        if tag:
            self.channel.basic_ack(delivery_tag=tag, multiple=True)

    def sleep(self, seconds: float) -> None:
        """Wait while still serving the connection (heartbeats, deliveries into the next batch)."""
        if self.connection is not None and self.connection.is_open:
            self.connection.sleep(seconds)
        else:
            time.sleep(seconds)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: BasicProperties, *, mandatory: bool
    ) -> bool:
        """Publish with a publisher confirm: returns only once the broker has taken the message.

        `mandatory` is the caller's choice: a broadcast (alerts) nobody is bound to is normal and
        silently dropped by the broker. A mandatory message the broker returns as unroutable is
        reported (returns False, logged, counted) and never raised: a missing binding must not
        disconnect the service, whose redelivered input would only be returned again.
        A broker nack still raises: the message was not taken, so the input must not be acked.
        """
        assert self.publisher is not None
        try:
            self.publisher.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        except pika.exceptions.UnroutableError:
            self.unroutable += 1
            if self.unroutable in (1, 10) or self.unroutable % UNROUTABLE_LOG_EVERY == 0:
                log.error(
                    "service=%s event=unroutable exchange=%s routing_key=%s returned_total=%d",
                    self.name,
                    exchange,
                    routing_key,
                    self.unroutable,
                )
            return False
        return True

    def dead_letter(
        self, method: Basic.Deliver, properties: BasicProperties, body: bytes, reason: str, detail: str
    ) -> None:
        """Send the delivery to iot.dlx with the reason; the caller settles (acks) the original."""
        headers: dict[str, Any] = dict(properties.headers or {})
        headers[DEAD_LETTER_REASON_HEADER] = reason
        headers[DEAD_LETTER_DETAIL_HEADER] = detail[:DETAIL_MAX_CHARS]
        headers["x-iot-queue"] = self.queue.name
        self.publish(
            DEAD_LETTER_EXCHANGE,
            method.routing_key,
            body,
            BasicProperties(
                headers=headers,
                delivery_mode=2,
                content_type=properties.content_type,
                app_id=properties.app_id,
                timestamp=properties.timestamp,
            ),
            mandatory=True,  # iot.dead-letter is declared at every connect; a return is logged
        )
        DEAD_LETTERED.labels(self.name, reason).inc()
        with self.stats.lock:
            self.stats.dead_lettered += 1

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stop` is set; reconnect with backoff on any broker or storage outage."""
        backoff = RECONNECT_MIN_S
        while not self.stop.is_set():
            try:
                self._connect_and_consume()
                backoff = RECONNECT_MIN_S
            except (pika.exceptions.AMQPError, StorageUnavailable, OSError) as exc:
                log.warning("service=%s event=disconnected error=%r retry_in_s=%.1f", self.name, exc, backoff)
            except HubError:
                raise
            except Exception:
                log.exception("service=%s event=crashed retry_in_s=%.1f", self.name, backoff)
            finally:
                CONNECTED.labels(self.name).set(0)
                self.on_connection_lost()
                self._close()
            if not self.stop.is_set():
                self.stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)

    def _connect_and_consume(self) -> None:
        self.connection = pika.BlockingConnection(connection_parameters(self.settings, self.name))
        self.channel = self.connection.channel()
        topology.declare(self.channel, self.queue)
        self.channel.basic_qos(prefetch_count=self.queue.prefetch)
        self.publisher = self.connection.channel()
        self.publisher.confirm_delivery()
        self.on_start()
        self.channel.basic_consume(self.queue.name, self._deliver)
        CONNECTED.labels(self.name).set(1)
        log.info("service=%s event=consuming queue=%s prefetch=%d", self.name, self.queue.name, self.queue.prefetch)
        while not self.stop.is_set():
            self.connection.process_data_events(time_limit=self.tick_interval_s)
            self.tick()
        self.on_stop()

    def _deliver(
        self, _channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        self.on_message(method, properties, body)

    def _close(self) -> None:
        connection, self.connection, self.channel, self.publisher = self.connection, None, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection fails to close in many ways
                connection.close()
