"""The store service: queue `hub.store` -> validated readings -> batched writes to the outputs -> one ack.

At-least-once: a batch is acked only after every output holds it. While an output is down the
batch is kept and retried with backoff, nothing is acked, and the rest waits in RabbitMQ. A
message that is not a valid reading goes to iot.dlx with its reason and is settled with the
batch around it, so it never blocks nor loses the valid ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from hub.core.contract import decode_reading, now_ms
from hub.core.models import load_models
from hub.outputs.fanout import Refusal
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.consumer import Delivery, protocol_of
from hub.runtime.metrics import READING_AGE, RECEIVED, STORED
from hub.runtime.service import Service
from hub.services.store.judge import ReadingJudge
from hub.services.store.readings import reading_point


class StoreService(Service):
    name = "store"
    queue = topology.STORE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.newest_ts = 0
        self.judge = ReadingJudge(load_models(self.settings.models_file), self.settings.unknown_sensors)

    def handle(self, delivery: Delivery) -> None:
        reading = decode_reading(delivery.body, delivery.routing_key)
        out_of_range = self.judge.out_of_range(reading)
        point = reading_point(reading, protocol_of(delivery.properties), out_of_range)
        self.outbox.add(delivery.tag, point, source=delivery)
        if reading.ts > self.newest_ts:
            self.newest_ts = reading.ts

    def after_flush(self, batch: Batch, refused: Mapping[int, Refusal], latency_s: float) -> None:
        received = Counter(point.tags["protocol"] for point in batch.points)
        for protocol, count in received.items():
            RECEIVED.labels(self.name, protocol).inc(count)
        stored = received
        if refused:
            stored = Counter(point.tags["protocol"] for i, point in enumerate(batch.points) if i not in refused)
        for protocol, count in stored.items():
            STORED.labels(protocol).inc(count)
        if self.newest_ts:
            READING_AGE.labels(self.name).set(max(0.0, (now_ms() - self.newest_ts) / 1000))
