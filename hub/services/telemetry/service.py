"""The telemetry service's handler: a delivery of partition `hub.telemetry.<p>` -> one decode ->
the reading's point, the rules' alerts and commands, and a sign of life for presence.

Its runner acks a batch of readings only once every output holds their points (readings and
alerts) and the broker confirmed what they published (alerts, rule commands, dead-letters). A
message that is not a valid reading is dead-lettered once, with its reason. Alerts are a
broadcast (not mandatory): with nobody bound to `alerts.#` the broker drops them, which is
normal; they are in InfluxDB `alerts` regardless. A crash means at most a repeated alert (the
redelivered readings are judged again), never a lost one.

Every partition is single-active-consumer: the readings of a device reach one process, in
order, so its rule state is whole. A process that consumes every partition (the default)
hands presence its signs of life in process, when presence runs beside it (`signs`).
"""

from __future__ import annotations

from pika.spec import BasicProperties

from hub.core.config import Settings
from hub.core.contract import EXCHANGE, Batch, Reading, Transport, command_key, decode_telemetry, encode, now_ms
from hub.core.models import load_models
from hub.core.points import Point
from hub.runtime import topology
from hub.runtime.delivery import Delivery, protocol_of
from hub.runtime.handler import NOTHING, Effects, Event, Publish
from hub.services.presence.signs import SignsFeed
from hub.services.rules.alerts import RULE_ORIGIN
from hub.services.rules.engine import Engine
from hub.services.rules.model import Rule
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.stage import TelemetryStage

JSON_PERSISTENT = {"content_type": "application/json", "delivery_mode": 2, "app_id": RULE_ORIGIN}


class TelemetryHandler:
    name = "telemetry"

    def __init__(
        self, stage: TelemetryStage, declaration: topology.Declaration, signs: SignsFeed | None = None
    ) -> None:
        """`signs`: every reading is also a sign of life for the presence service of this process."""
        self.stage = stage
        self.declaration = declaration
        self.signs = signs

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        rules: list[Rule],
        partitions: tuple[int, ...] | None = None,
        signs: SignsFeed | None = None,
    ) -> TelemetryHandler:
        """`partitions`: the ones this process consumes (default: IOT_HUB_PARTITIONS). Every
        partition is declared (those of other processes too), so the hash ring is whole whichever
        process starts first, and queues nobody consumes any more stop the hub."""
        ids = settings.hub_partition_ids if partitions is None else partitions
        declaration = topology.Declaration(
            tuple(topology.partition(p) for p in ids),
            declare_also=topology.partitions(settings.partitions),
            partitions=settings.partitions,
        )
        judge = ReadingJudge(load_models(settings.models_file), settings.unknown_sensors)
        return cls(TelemetryStage(judge, Engine(rules)), declaration, signs)

    def handle(self, delivery: Delivery) -> Effects:
        reading = decode_telemetry(delivery.body, delivery.routing_key)
        protocol = protocol_of(delivery.properties)
        now = now_ms()
        if isinstance(reading, Batch):
            return self._handle_batch(reading.readings(), protocol, now)
        if self.signs is not None:  # a reading the judge refuses still proves its device alive
            self.signs.sign(reading.device, reading.site, reading.kind, protocol, reading.ts, now)
        outcome = self.stage.process(reading, protocol, now)
        if not outcome.decisions:
            if not outcome.flags:
                return Effects(outcome.point)  # nearly every reading
            return Effects(outcome.point, events=[("flagged", flag) for flag in outcome.flags])
        publishes: list[Publish] = []
        events: list[Event] = [("flagged", flag) for flag in outcome.flags]
        for decision in outcome.decisions:
            alert = decision.alert
            # A broadcast: nobody tailing alerts is normal, the point is stored anyway.
            publishes.append(Publish(EXCHANGE, alert.routing_key, encode(alert), _json(), mandatory=False))
            events.append(("alert", alert.severity, alert.rule))
            if decision.command is not None:
                # Always routable to hub.commands (commands.#); a return is logged.
                key = command_key(reading.device)
                publishes.append(Publish(EXCHANGE, key, encode(decision.command), _json(), mandatory=True))
                events.append(("rule_command", decision.command.command))
        return Effects(outcome.point, outcome.alert_points, publishes, events)

    def _handle_batch(self, readings: list[Reading], protocol: Transport, now: int) -> Effects:
        """Each reading of a batch as a single one would be, in `ts` order; every point is the delivery's own."""
        outcomes = self.stage.process_batch(readings, protocol, now)
        if self.signs is not None:
            newest = readings[-1]
            self.signs.sign(newest.device, newest.site, newest.kind, protocol, newest.ts, now)
        points: list[Point] = []
        publishes: list[Publish] = []
        events: list[Event] = []
        for reading, outcome in zip(readings, outcomes, strict=True):
            points.extend(outcome.alert_points)
            events.extend(("flagged", flag) for flag in outcome.flags)
            for decision in outcome.decisions:
                publishes.append(Publish(EXCHANGE, decision.alert.routing_key, encode(decision.alert), _json(), False))
                events.append(("alert", decision.alert.severity, decision.alert.rule))
                if decision.command is not None:
                    key = command_key(reading.device)
                    publishes.append(Publish(EXCHANGE, key, encode(decision.command), _json(), mandatory=True))
                    events.append(("rule_command", decision.command.command))
        records = [outcome.point for outcome in outcomes]
        return Effects(records[0], points, publishes, events, records=records[1:])

    def tick(self, now_ms: int, role: str) -> Effects:
        return NOTHING

    def on_consuming(self, now_ms: int) -> None:
        """Nothing is held across deliveries; the rules' state stays (the partition's devices are still ours)."""


def _json() -> BasicProperties:
    return BasicProperties(**JSON_PERSISTENT)
