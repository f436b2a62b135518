"""The rules service: queue `hub.rules` -> engine -> alerts (published and stored) and commands.

Alerts and commands are published with publisher confirms before the reading is acked, and
alert points are written with the batch: a crash means at most a repeated alert, never a lost one.
Alerts are a broadcast (not mandatory): with nobody bound to `alerts.#` the broker drops them,
which is normal; they are in InfluxDB `alerts` regardless.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pika.spec import BasicProperties

from hub.core.contract import EXCHANGE, Alert, command_key, decode_reading, encode, now_ms
from hub.core.errors import InvalidMessage
from hub.core.points import Point
from hub.outputs.fanout import Refusal
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.consumer import Consumer, Delivery, protocol_of
from hub.runtime.metrics import ALERTS, RULE_COMMANDS
from hub.runtime.service import Service
from hub.services.presence.signs import SignsFeed
from hub.services.rules.engine import Engine
from hub.services.rules.model import Rule

#: AMQP app_id of commands sent by rules (the `origin` tag in `commands`).
RULE_ORIGIN = "rule"


def alert_point(alert: Alert) -> Point:
    return Point(
        "alerts",
        {
            "device": alert.device,
            "site": alert.site,
            "kind": alert.kind,
            "severity": alert.severity,
            "rule": alert.rule,
        },
        {"id": alert.id, "sensor": alert.sensor, "value": alert.value, "message": alert.message},
        alert.ts,
    )


class RulesService(Service):
    name = "rules"
    queue = topology.RULES

    def __init__(self, *args: Any, rules: list[Rule], signs: SignsFeed | None = None, **kwargs: Any) -> None:
        """With `signs`, every reading is also a sign of life for the presence service of this process."""
        super().__init__(*args, **kwargs)
        self.engine = Engine(rules)
        self.signs = signs

    def handle(self, delivery: Delivery) -> None:
        try:
            reading = decode_reading(delivery.body, delivery.routing_key)
        except InvalidMessage:
            self.outbox.add(delivery.tag)  # the store dead-letters its own copy
            return
        now = now_ms()
        if self.signs is not None:
            self.signs.sign(
                reading.device, reading.site, reading.kind, protocol_of(delivery.properties), reading.ts, now
            )
        for decision in self.engine.evaluate(reading, now):
            alert = decision.alert
            self.publish(
                EXCHANGE,
                alert.routing_key,
                encode(alert),
                BasicProperties(content_type="application/json", delivery_mode=2, app_id=RULE_ORIGIN),
                mandatory=False,  # a broadcast: nobody tailing alerts is normal, the point is stored anyway
            )
            self.outbox.add(0, alert_point(alert))
            ALERTS.labels(alert.severity, alert.rule).inc()
            if decision.command is not None:
                self.publish(
                    EXCHANGE,
                    command_key(reading.device),
                    encode(decision.command),
                    BasicProperties(content_type="application/json", delivery_mode=2, app_id=RULE_ORIGIN),
                    mandatory=True,  # always routable to hub.commands (commands.#); a return is logged
                )
                RULE_COMMANDS.labels(decision.command.command).inc()
        self.outbox.add(delivery.tag)

    def flush(self) -> None:
        """Writing and publishing, rules reads no signs: presence must not take that for silence."""
        if self.signs is None:
            super().flush()
            return
        self.signs.hold()
        try:
            super().flush()
        finally:
            self.signs.release(now_ms())

    def on_start(self, consumer: Consumer) -> None:
        super().on_start(consumer)
        if self.signs is not None:
            self.signs.resume(now_ms())

    def on_connection_lost(self) -> None:
        super().on_connection_lost()
        if self.signs is not None:  # no deliveries while reconnecting: no signs, no silence
            self.signs.pause()

    def on_write_failed(self) -> None:
        if self.signs is not None:  # deliveries stop while the batch is retried: no signs, no silence
            self.signs.pause()

    def after_flush(self, batch: Batch, refused: Mapping[int, Refusal], latency_s: float) -> None:
        if self.signs is not None:
            self.signs.resume(now_ms())
