"""The broker side of a runner, over pika: connect, declare, consume, ack, publish with confirms.

A `Consumer` owns one connection with up to three channels: one consuming the hub queues (each
with its own prefetch window; delivery tags count per channel, so one `multiple` ack settles
deliveries of every queue up to a tag), one publishing many messages and waiting for their
confirms once (`hub.runtime.confirms`), and, when a service has side queues, one consuming them
without acks. It hands each delivery to the runner's callbacks while the runner waits (`serve`,
`sleep`, `wait_for_confirms`). It decides nothing: the runner says what to ack and publish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from hub.clients.amqp import connect
from hub.core.config import Settings
from hub.runtime import topology
from hub.runtime.confirms import ConfirmBatch
from hub.runtime.delivery import MQTT_HEADER, STOMP_HEADER, Delivery, protocol_of
from hub.runtime.handler import Publish

log = logging.getLogger(__name__)

#: Returned (unroutable) mandatory messages are logged the 1st, 10th and every this many times.
UNROUTABLE_LOG_EVERY = 100
#: A retry's wait (`Consumer.sleep`) looks at the stop event at least this often.
SLEEP_SLICE_S = 0.1

OnDelivery = Callable[[Delivery], None]
PikaCallback = Callable[[BlockingChannel, Basic.Deliver, BasicProperties, bytes], None]


def instance_name() -> str:
    """This hub process among others (`hub_stats` tag, connection names): host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Consumer:
    """One broker connection of one service (`name`), for its runner; `stop` cuts waits short."""

    def __init__(self, settings: Settings, name: str, stop: threading.Event) -> None:
        self.settings, self.name, self.stop = settings, name, stop
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.publisher: ConfirmBatch | None = None
        #: Mandatory messages the broker returned as unroutable (see `publish`).
        self.unroutable = 0
        #: Queue -> the broker's name for this subscription to it while consuming (the management
        #: API lists it, with whether a single-active-consumer queue delivers to it or keeps it waiting).
        self.consumer_tags: dict[str, str] = {}

    def connect(self, declaration: topology.Declaration) -> None:
        # The instance in the name tells, in the management API, which hub is the active consumer.
        self.connection = connect(self.settings, f"hub-{self.name} {instance_name()}")
        if declaration.partitions is not None:
            # Queues that would fill with nobody consuming them stop the hub.
            topology.refuse_leftovers(self.connection, declaration.partitions)
        self.channel = self.connection.channel()
        for queue in (*declaration.declare_also, *declaration.queues):
            topology.declare(self.channel, queue)
        self.publisher = ConfirmBatch(self.connection, self._returned)

    def consume(self, declaration: topology.Declaration, on_delivery: OnDelivery, on_side: OnDelivery) -> None:
        assert self.connection is not None and self.channel is not None
        for queue in declaration.queues:
            # Not global: the window applies to each consumer (each queue) started after it.
            self.channel.basic_qos(prefetch_count=queue.prefetch)
            self.consumer_tags[queue.name] = self.channel.basic_consume(
                queue.name, _handing_to(on_delivery, queue.name)
            )
        if declaration.side:
            side = self.connection.channel()
            for side_queue in declaration.side:
                name = side_queue.name
                side.queue_declare(name, exclusive=True, auto_delete=True, arguments=dict(side_queue.arguments))
                for pattern in side_queue.bindings:
                    side.queue_bind(name, side_queue.exchange, routing_key=pattern)
                side.basic_consume(name, _handing_to(on_side, name), auto_ack=True)

    def serve(self, timeout_s: float) -> None:
        assert self.connection is not None
        self.connection.process_data_events(time_limit=timeout_s)

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

    def ack(self, tag: int, multiple: bool) -> None:
        assert self.channel is not None
        self.channel.basic_ack(delivery_tag=tag, multiple=multiple)

    def publish(self, message: Publish) -> None:
        """Publish without waiting: `wait_for_confirms` says when the broker holds the message.

        A mandatory message the broker returns as unroutable is logged and counted, never raised:
        a missing binding must not disconnect the service, whose redelivered input would only be
        returned again. A broker nack raises in `wait_for_confirms`: the message was not taken,
        so its input must not be acked.
        """
        assert self.publisher is not None
        self.publisher.publish(
            message.exchange, message.routing_key, message.body, message.properties, mandatory=message.mandatory
        )

    def wait_for_confirms(self) -> None:
        if self.publisher is not None:
            self.publisher.wait()

    def close(self) -> None:
        connection, self.connection, self.channel, self.publisher = self.connection, None, None, None
        self.consumer_tags = {}
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection fails to close in many ways
                connection.close()

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


def _handing_to(callback: OnDelivery, queue: str) -> PikaCallback:
    def deliver(_channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        callback(Delivery(method, properties, body, queue))

    return deliver


__all__ = ["MQTT_HEADER", "STOMP_HEADER", "Consumer", "Delivery", "instance_name", "protocol_of"]
