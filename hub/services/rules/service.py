"""The rules service: queue `hub.rules` -> engine -> alerts (published and stored) and commands.

Alerts and commands are published with publisher confirms before the reading is acked, and
alert points are written with the batch: a crash means at most a repeated alert, never a lost one.
Alerts are a broadcast (not mandatory): with nobody bound to `alerts.#` the broker drops them,
which is normal; they are in InfluxDB `alerts` regardless.
The readings are also the presence tracker's signs of life (same process, no third copy).
"""

from __future__ import annotations

from pika.spec import Basic, BasicProperties

from hub.core.contract import EXCHANGE, Alert, command_key, decode_reading, encode, now_ms
from hub.core.errors import InvalidMessage
from hub.outputs.lineprotocol import point
from hub.runtime import topology
from hub.runtime.consumer import AmqpService
from hub.runtime.metrics import ALERTS, RULE_COMMANDS
from hub.services.presence.tracker import PresenceTracker
from hub.services.rules.engine import Engine
from hub.services.rules.model import Rule
from hub.services.store.service import protocol_of

#: AMQP app_id of commands sent by rules (the `origin` tag in `commands`).
RULE_ORIGIN = "rule"


def alert_line(alert: Alert) -> str:
    return point(
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


class RulesService(AmqpService):
    name = "rules"
    queue = topology.RULES

    def __init__(self, *args: object, rules: list[Rule], tracker: PresenceTracker, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.engine = Engine(rules)
        self.tracker = tracker

    def on_message(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        try:
            reading = decode_reading(body, method.routing_key)
        except InvalidMessage:
            self.outbox.add(method.delivery_tag, None)  # the store dead-letters its own copy
            return
        now = now_ms()
        transition = self.tracker.on_telemetry(
            reading.device, reading.site, reading.kind, protocol_of(properties), reading.ts, now
        )
        if transition is not None:
            self.outbox.add(0, transition.line())
        for decision in self.engine.evaluate(reading, now):
            alert = decision.alert
            self.publish(
                EXCHANGE,
                alert.routing_key,
                encode(alert),
                BasicProperties(content_type="application/json", delivery_mode=2, app_id=RULE_ORIGIN),
                mandatory=False,  # a broadcast: nobody tailing alerts is normal, the point is stored anyway
            )
            self.outbox.add(0, alert_line(alert))
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
        self.outbox.add(method.delivery_tag, None)
