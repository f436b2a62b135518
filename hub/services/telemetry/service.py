"""The telemetry service: partition queues `hub.telemetry.<p>` -> one decode per reading -> its point,
the rules' alerts and commands, and a sign of life -> batched writes -> one ack.

At-least-once: a batch is acked only after every output holds its points (readings and alerts)
and the broker confirmed what it published (alerts, rule commands, dead-letters). While an
output is down the batch is kept and retried with backoff, nothing is acked, and the rest waits
in RabbitMQ. A message that is not a valid reading goes to iot.dlx once, with its reason, and is
settled with the batch around it. Alerts are a broadcast (not mandatory): with nobody bound to
`alerts.#` the broker drops them, which is normal; they are in InfluxDB `alerts` regardless. A
crash means at most a repeated alert (the redelivered readings are judged again), never a lost one.

Every partition is single-active-consumer: the readings of a device reach one process, in
order, so its rule state is whole. A process that subscribes to every partition (the default)
feeds presence's signs of life in process, when presence runs beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pika
from pika.spec import BasicProperties

from hub.core.config import Settings
from hub.core.contract import EXCHANGE, Reading, command_key, decode_reading, encode, now_ms
from hub.core.models import load_models
from hub.core.points import Point
from hub.outputs.fanout import Refusal
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.legacy_consumer import Consumer, Delivery, protocol_of
from hub.runtime.metrics import (
    ALERTS,
    OLDEST_UNSTORED_AGE,
    READING_AGE,
    READING_AGE_AT_STORAGE,
    RECEIVED,
    RULE_COMMANDS,
    STORED,
)
from hub.runtime.service import Service
from hub.services.presence.signs import SignsFeed
from hub.services.rules.alerts import RULE_ORIGIN
from hub.services.rules.engine import Engine
from hub.services.rules.model import Rule
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.stage import TelemetryStage

log = logging.getLogger(__name__)

JSON_PERSISTENT = {"content_type": "application/json", "delivery_mode": 2, "app_id": RULE_ORIGIN}


class TelemetryService(Service):
    name = "telemetry"

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        *,
        rules: list[Rule],
        partitions: tuple[int, ...] | None = None,
        signs: SignsFeed | None = None,
        **kwargs: Any,
    ) -> None:
        """`partitions`: the ones this process consumes (default: IOT_HUB_PARTITIONS). With `signs`,
        every reading is also a sign of life for the presence service of this process."""
        self.partition_ids = settings.hub_partition_ids if partitions is None else partitions
        super().__init__(settings, stop, **kwargs)
        self.stage = TelemetryStage(
            ReadingJudge(load_models(self.settings.models_file), self.settings.unknown_sensors), Engine(rules)
        )
        self.signs = signs
        self.newest_ts = 0
        #: Oldest reading timestamp (ms) in the open outbox, and in the batch being written (0: none).
        self.open_oldest_ts = 0
        self.writing_oldest_ts = 0
        #: When a batch was last settled (monotonic; the start until then), for /health/ready.
        self.stored_at = time.monotonic()
        OLDEST_UNSTORED_AGE.set_function(self.oldest_unstored_age_s)

    @property
    def queues(self) -> tuple[topology.HubQueue, ...]:
        return tuple(topology.partition(p) for p in self.partition_ids)

    # --- a reading -----------------------------------------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        reading = decode_reading(delivery.body, delivery.routing_key)
        protocol = protocol_of(delivery.properties)
        now = now_ms()
        if self.signs is not None:  # a reading the judge refuses still proves its device alive
            self.signs.sign(reading.device, reading.site, reading.kind, protocol, reading.ts, now)
        outcome = self.stage.process(reading, protocol, now)
        for decision, point in zip(outcome.decisions, outcome.alert_points, strict=True):
            alert = decision.alert
            # A broadcast: nobody tailing alerts is normal, the point is stored anyway.
            self.publish(
                EXCHANGE, alert.routing_key, encode(alert), BasicProperties(**JSON_PERSISTENT), mandatory=False
            )
            self.outbox.add(0, point)
            ALERTS.labels(alert.severity, alert.rule).inc()
            if decision.command is not None:
                self.publish(
                    EXCHANGE,
                    command_key(reading.device),
                    encode(decision.command),
                    BasicProperties(**JSON_PERSISTENT),
                    mandatory=True,  # always routable to hub.commands (commands.#); a return is logged
                )
                RULE_COMMANDS.labels(decision.command.command).inc()
        self.outbox.add(delivery.tag, outcome.point, source=delivery)
        self._note(reading)

    def _note(self, reading: Reading) -> None:
        if reading.ts > self.newest_ts:
            self.newest_ts = reading.ts
        if not self.open_oldest_ts or reading.ts < self.open_oldest_ts:
            self.open_oldest_ts = reading.ts

    # --- the consumer's handler ----------------------------------------------------------------------

    def on_connect(self, connection: pika.BlockingConnection) -> None:
        """Refuse queues that would fill with nobody consuming them; declare every partition (those
        of other processes too), so the hash ring is whole whichever process starts first."""
        count = self.settings.partitions
        topology.refuse_leftovers(connection, count)
        channel = connection.channel()
        for queue in topology.partitions(count):
            topology.declare(channel, queue)
        channel.close()

    def on_start(self, consumer: Consumer) -> None:
        super().on_start(consumer)
        if self.signs is not None:
            self.signs.resume(now_ms())

    def flush(self) -> None:
        """Write the batch; meanwhile no signs are read, which presence must not take for silence."""
        if self.outbox.empty:
            return
        # The open batch becomes the one being written (and retried); deliveries that arrive
        # meanwhile open the next one.
        self.writing_oldest_ts, self.open_oldest_ts = self.open_oldest_ts, 0
        if self.signs is not None:
            self.signs.hold()
        try:
            super().flush()
        finally:
            self.writing_oldest_ts = 0
            if self.signs is not None:
                self.signs.release(now_ms())

    def on_connection_lost(self) -> None:
        super().on_connection_lost()
        self.open_oldest_ts = 0
        if self.signs is not None:  # no deliveries while reconnecting: no signs, no silence
            self.signs.pause()

    def on_write_failed(self) -> None:
        if self.signs is not None:  # deliveries stop while the batch is retried: no signs, no silence
            self.signs.pause()

    # --- health and metrics --------------------------------------------------------------------------

    def oldest_unstored_age_s(self) -> float:
        """Age of the oldest reading waiting in the open batch or being retried; 0 when none waits.

        Read at scrape time from the HTTP thread: two integers, no walk over the batch.
        """
        waiting = [ts for ts in (self.open_oldest_ts, self.writing_oldest_ts) if ts]
        return max(0.0, (now_ms() - min(waiting)) / 1000) if waiting else 0.0

    def idle_s(self) -> float:
        return time.monotonic() - self.stored_at

    def stored_count(self, batch: Batch, refused: Mapping[int, Refusal]) -> int:
        """Readings, not the alert points written with them."""
        return sum(1 for i, _p in _readings(batch) if i not in refused)

    def after_flush(self, batch: Batch, refused: Mapping[int, Refusal], latency_s: float) -> None:
        readings = _readings(batch)
        received = Counter(point.tags["protocol"] for _i, point in readings)
        for protocol, count in received.items():
            RECEIVED.labels(self.name, protocol).inc(count)
        stored = Counter(point.tags["protocol"] for i, point in readings if i not in refused)
        for protocol, count in stored.items():
            STORED.labels(protocol).inc(count)
        now = now_ms()
        READING_AGE_AT_STORAGE.observe_many(
            max(0.0, (now - point.ts_ms) / 1000) for i, point in readings if i not in refused
        )
        if stored or batch.deliveries:  # dead-lettering a batch of bad readings is progress too
            self.stored_at = time.monotonic()
        if self.newest_ts:
            READING_AGE.labels(self.name).set(max(0.0, (now - self.newest_ts) / 1000))
        if self.signs is not None:
            self.signs.resume(now)


def _readings(batch: Batch) -> list[tuple[int, Point]]:
    """The batch's readings with their index: the points a delivery is the source of (alert points have none)."""
    return [(i, point) for i, point in enumerate(batch.points) if isinstance(batch.sources[i], Delivery)]
