"""The store service: queue `hub.store` -> validated readings -> batched InfluxDB writes -> one ack.

At-least-once: a batch is acked only after InfluxDB accepted it. While InfluxDB is down the
batch is kept and retried with backoff (tenacity), nothing is acked, and the rest waits in
RabbitMQ. A message that is not a valid reading goes to iot.dlx with its reason and is settled
with the batch around it, so it never blocks nor loses the valid ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pika.spec import Basic, BasicProperties

from hub.core.contract import Protocol, decode_reading, now_ms
from hub.core.errors import InvalidMessage
from hub.outputs.influxdb import PointsRejected
from hub.outputs.lineprotocol import reading_line
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.consumer import AmqpService
from hub.runtime.metrics import BATCH_LATENCY, BATCH_SIZE, READING_AGE, RECEIVED, STORED

log = logging.getLogger(__name__)

#: Header RabbitMQ's MQTT plugin (3.10) puts on every message it publishes; STOMP ones never have it.
MQTT_HEADER = "x-mqtt-publish-qos"


def protocol_of(properties: BasicProperties) -> Protocol:
    """The device protocol a delivery came in on: only the MQTT plugin sets `x-mqtt-publish-qos`."""
    headers = properties.headers
    return "mqtt" if headers is not None and MQTT_HEADER in headers else "stomp"


class StoreService(AmqpService):
    name = "store"
    queue = topology.STORE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch = Batch()
        #: Per point in `batch`: (delivery, protocol), to dead-letter points InfluxDB refuses.
        self.sources: list[tuple[Basic.Deliver, BasicProperties, bytes]] = []
        self.protocols: dict[Protocol, int] = {"mqtt": 0, "stomp": 0}
        self.newest_ts = 0

    def on_message(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        try:
            reading = decode_reading(body, method.routing_key)
        except InvalidMessage as exc:
            self.dead_letter(method, properties, body, exc.reason, exc.detail)
            self.batch.add(method.delivery_tag, None)
            return
        protocol = protocol_of(properties)
        self.batch.add(method.delivery_tag, reading_line(reading, protocol))
        self.sources.append((method, properties, body))
        self.protocols[protocol] += 1
        if reading.ts > self.newest_ts:
            self.newest_ts = reading.ts

    def tick(self) -> None:
        if self.batch.due():
            self.flush()

    def on_stop(self) -> None:
        self.flush()

    def on_connection_lost(self) -> None:
        self.batch.reset()
        self.sources = []
        self.protocols = {"mqtt": 0, "stomp": 0}

    def flush(self) -> None:
        """Write the open batch (retrying until it succeeds or the hub stops), then ack it."""
        if self.batch.empty:
            return
        batch, sources, protocols = self.batch, self.sources, self.protocols
        self.batch, self.sources, self.protocols = Batch(), [], {"mqtt": 0, "stomp": 0}
        started = time.monotonic()
        stored = protocols
        if batch.lines:
            try:
                self.write_with_retries(batch.payload())
            except PointsRejected as exc:
                stored = self._write_one_by_one(batch.lines, sources, str(exc))
        self.ack_through(batch.last_tag)
        latency = time.monotonic() - started
        points = len(batch.lines)
        for protocol, count in protocols.items():
            if count:
                RECEIVED.labels(self.name, protocol).inc(count)
        for protocol, count in stored.items():
            if count:
                STORED.labels(protocol).inc(count)
        BATCH_SIZE.observe(points)
        BATCH_LATENCY.observe(latency)
        if self.newest_ts:
            READING_AGE.labels(self.name).set(max(0.0, (now_ms() - self.newest_ts) / 1000))
        with self.stats.lock:
            self.stats.received += batch.deliveries
            self.stats.stored += sum(stored.values())
        self.stats.add_batch(latency)

    def _write_one_by_one(
        self, lines: list[str], sources: list[tuple[Basic.Deliver, BasicProperties, bytes]], why: str
    ) -> dict[Protocol, int]:
        """InfluxDB refused the batch: write each point alone and dead-letter the ones it refuses."""
        log.warning("service=%s event=batch_rejected points=%d error=%r", self.name, len(lines), why)
        stored: dict[Protocol, int] = {"mqtt": 0, "stomp": 0}
        for line, (method, properties, body) in zip(lines, sources, strict=True):
            try:
                self.write_with_retries(line.encode())
            except PointsRejected as exc:
                self.dead_letter(method, properties, body, "rejected_by_influxdb", str(exc))
                continue
            stored[protocol_of(properties)] += 1
        return stored
