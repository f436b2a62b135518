"""The store service: queue `hub.store` -> validated readings -> batched writes to the outputs -> one ack.

At-least-once: a batch is acked only after every output holds it. While an output is down the
batch is kept and retried with backoff, nothing is acked, and the rest waits in RabbitMQ. A
message that is not a valid reading goes to iot.dlx with its reason and is settled with the
batch around it, so it never blocks nor loses the valid ones.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hub.core.contract import decode_reading, now_ms
from hub.core.models import load_models
from hub.outputs.fanout import Refusal
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.consumer import Delivery, protocol_of
from hub.runtime.metrics import OLDEST_UNSTORED_AGE, READING_AGE, READING_AGE_AT_STORAGE, RECEIVED, STORED
from hub.runtime.service import Service
from hub.services.store.judge import ReadingJudge
from hub.services.store.readings import reading_point


class StoreService(Service):
    name = "store"
    queue = topology.STORE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.newest_ts = 0
        #: Oldest reading timestamp (ms) in the open outbox, and in the batch being written (0: none).
        self.open_oldest_ts = 0
        self.writing_oldest_ts = 0
        #: When the store last settled a batch (monotonic; its start until then), for /health/ready.
        self.stored_at = time.monotonic()
        OLDEST_UNSTORED_AGE.set_function(self.oldest_unstored_age_s)
        self.judge = ReadingJudge(load_models(self.settings.models_file), self.settings.unknown_sensors)

    def handle(self, delivery: Delivery) -> None:
        reading = decode_reading(delivery.body, delivery.routing_key)
        out_of_range = self.judge.out_of_range(reading)
        point = reading_point(reading, protocol_of(delivery.properties), out_of_range)
        self.outbox.add(delivery.tag, point, source=delivery)
        if reading.ts > self.newest_ts:
            self.newest_ts = reading.ts
        if not self.open_oldest_ts or reading.ts < self.open_oldest_ts:
            self.open_oldest_ts = reading.ts

    def flush(self) -> None:
        if self.outbox.empty:
            return
        # The open batch becomes the one being written (and retried); deliveries that arrive
        # meanwhile open the next one.
        self.writing_oldest_ts, self.open_oldest_ts = self.open_oldest_ts, 0
        try:
            super().flush()
        finally:
            self.writing_oldest_ts = 0

    def on_connection_lost(self) -> None:
        super().on_connection_lost()
        self.open_oldest_ts = 0

    def oldest_unstored_age_s(self) -> float:
        """Age of the oldest reading waiting in the open batch or being retried; 0 when none waits.

        Read at scrape time from the HTTP thread: two integers, no walk over the batch.
        """
        waiting = [ts for ts in (self.open_oldest_ts, self.writing_oldest_ts) if ts]
        return max(0.0, (now_ms() - min(waiting)) / 1000) if waiting else 0.0

    def idle_s(self) -> float:
        return time.monotonic() - self.stored_at

    def after_flush(self, batch: Batch, refused: Mapping[int, Refusal], latency_s: float) -> None:
        received = Counter(point.tags["protocol"] for point in batch.points)
        for protocol, count in received.items():
            RECEIVED.labels(self.name, protocol).inc(count)
        stored = received
        if refused:
            stored = Counter(point.tags["protocol"] for i, point in enumerate(batch.points) if i not in refused)
        for protocol, count in stored.items():
            STORED.labels(protocol).inc(count)
        now = now_ms()
        READING_AGE_AT_STORAGE.observe_many(
            max(0.0, (now - point.ts_ms) / 1000) for index, point in enumerate(batch.points) if index not in refused
        )
        if stored or batch.deliveries:  # dead-lettering a batch of bad readings is progress too
            self.stored_at = time.monotonic()
        if self.newest_ts:
            READING_AGE.labels(self.name).set(max(0.0, (now - self.newest_ts) / 1000))
