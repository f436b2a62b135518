"""The telemetry service's handler: a delivery of partition `hub.telemetry.<p>` -> one decode ->
the reading's point, the rules' alerts and commands, and a sign of life for presence.

Its runner acks a batch of readings only once every output holds their points (readings and
alerts) and the broker confirmed what they published (alerts, rule commands, dead-letters). A
message that is not a valid reading is dead-lettered once, with its reason. Alerts are a
broadcast (not mandatory): with nobody bound to `alerts.#` the broker drops them, which is
normal; they are in InfluxDB `alerts` regardless. A crash means at most a repeated alert (the
redelivered readings are judged again), never a lost one.

Every partition is single-active-consumer: the readings of a device reach one process, in
order, so its rule state and its alarms are whole there. A process that consumes every partition
(the default) hands presence its signs of life in process, when presence runs beside it (`signs`),
and the twin service its readings, when the twin runs beside it (`twin`).

Exactly once: the rules' state and the alarms are rebuilt from the store (`hub.services.alarms.
rebuild`) at each (re)connect, and when a partition starts delivering to this process later than
that (a standby taking over): what was stored is what was acked, and a redelivered reading at or
before a sensor's last evaluated time changes nothing. Alarm changes are `alarms` points in the
reading's batch and, but for `updated`, messages `alarms.<severity>.<site>.<kind>.<device>`.
Acks of alarms (`python -m hub alarms ack`) come through the device's partition too, published
to `iot.telemetry` (no device can publish there), so the handler that owns an alarm acks it.

A batch (`{..., batch: [...]}`) is one delivery whose entries are readings: every entry is
judged before the rules see any (one refused entry dead-letters the whole message), then each
is evaluated as a single reading would be, in `ts` order, and stored as its own point.
"""

from __future__ import annotations

import logging

from pika.spec import BasicProperties

from hub.core.config import Settings
from hub.core.contract import (
    ALARM_ACK_TYPE,
    EXCHANGE,
    AlarmAck,
    Batch,
    Reading,
    Transport,
    command_key,
    decode,
    decode_telemetry,
    encode,
    now_ms,
)
from hub.core.errors import InvalidMessage, StorageUnavailable, Unreadable
from hub.core.models import load_models
from hub.core.points import Point
from hub.outputs.base import Reader
from hub.outputs.registry import open_reader
from hub.runtime import topology
from hub.runtime.delivery import Delivery, protocol_of
from hub.runtime.handler import NOTHING, Effects, Event, Publish
from hub.services.alarms.lifecycle import Change
from hub.services.alarms.rebuild import READINGS_LOOKBACK_S, Stored
from hub.services.alarms.transitions import change_point, change_publish
from hub.services.presence.signs import SignsFeed
from hub.services.rules.alerts import RULE_ORIGIN
from hub.services.rules.engine import Engine
from hub.services.rules.model import Rule
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.stage import Outcome, TelemetryStage
from hub.services.twin.feed import ReadingsFeed

log = logging.getLogger(__name__)

JSON_PERSISTENT = {"content_type": "application/json", "delivery_mode": 2, "app_id": RULE_ORIGIN}
#: A partition that first delivers this long after the last rebuild was another process's: its
#: devices' state is rebuilt from the store before its first reading is judged.
REBUILD_STALE_MS = 2_000


class TelemetryHandler:
    name = "telemetry"

    def __init__(
        self,
        stage: TelemetryStage,
        declaration: topology.Declaration,
        signs: SignsFeed | None = None,
        reader: Reader | None = None,
        twin: ReadingsFeed | None = None,
    ) -> None:
        """`signs`: every reading is also a sign of life for the presence service of this process.
        `reader`: where the rules' state and the alarms are rebuilt from (none: from nothing).
        `twin`: every reading also goes to the twin service of this process."""
        self.stage = stage
        self.declaration = declaration
        self.signs = signs
        self.reader = reader
        self.twin = twin
        self._rebuilt_at = -REBUILD_STALE_MS
        #: Since the last rebuild: the queues that delivered, and each device's queue.
        self._queues: set[str] = set()
        self._devices: dict[str, str] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        rules: list[Rule],
        partitions: tuple[int, ...] | None = None,
        signs: SignsFeed | None = None,
        twin: ReadingsFeed | None = None,
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
        return cls(TelemetryStage(judge, Engine(rules)), declaration, signs, open_reader(settings), twin)

    def handle(self, delivery: Delivery) -> Effects:
        now = now_ms()
        if delivery.queue not in self._queues:
            self._first_of_queue(delivery.queue, now)
        if delivery.properties.type == ALARM_ACK_TYPE and delivery.method.exchange == topology.TELEMETRY_EXCHANGE:
            return self._ack(delivery)
        message = decode_telemetry(delivery.body, delivery.routing_key)
        self._devices[message.device] = delivery.queue
        protocol = protocol_of(delivery.properties)
        if isinstance(message, Batch):
            return self._handle_batch(message.readings(), protocol, now)
        reading = message
        if self.signs is not None:  # a reading the judge refuses still proves its device alive
            self.signs.sign(reading.device, reading.site, reading.kind, protocol, reading.ts, now)
        if self.twin is not None:
            self.twin.reading(reading, now)
        outcome = self.stage.process(reading, protocol, now)
        if not outcome.decisions and not outcome.changes:
            if not outcome.flags:
                return Effects(outcome.point)  # nearly every reading
            return Effects(outcome.point, events=[("flagged", flag) for flag in outcome.flags])
        points: list[Point] = []
        publishes: list[Publish] = []
        events: list[Event] = []
        _consequences(reading.device, outcome, points, publishes, events)
        return Effects(outcome.point, points, publishes, events)

    def _handle_batch(self, readings: list[Reading], protocol: Transport, now: int) -> Effects:
        """Each reading of a batch as a single one would be, in `ts` order; every point is the delivery's own."""
        if self.signs is not None:
            newest = readings[-1]
            self.signs.sign(newest.device, newest.site, newest.kind, protocol, newest.ts, now)
        if self.twin is not None:
            self.twin.batch(readings, now)
        outcomes = self.stage.process_batch(readings, protocol, now)
        points: list[Point] = []
        publishes: list[Publish] = []
        events: list[Event] = []
        for reading, outcome in zip(readings, outcomes, strict=True):
            _consequences(reading.device, outcome, points, publishes, events)
        records = [outcome.point for outcome in outcomes]
        return Effects(records[0], points, publishes, events, records=records[1:])

    def _ack(self, delivery: Delivery) -> Effects:
        ack = decode(delivery.body, AlarmAck)
        if delivery.routing_key != f"telemetry.{ack.site}.{ack.kind}.{ack.device}":
            raise InvalidMessage("routing_mismatch", f"ack of a {ack.device} alarm routed as {delivery.routing_key}")
        change = self.stage.ack(ack)
        if change is None:  # acked already, cleared meanwhile, or not an alarm of ours: nothing to do
            log.info("service=telemetry event=alarm_ack_ignored alarm=%s", ack.alarm_id)
            return NOTHING
        return Effects(points=[change_point(change)], publishes=[change_publish(change)], events=[_alarm_event(change)])

    def tick(self, now_ms: int, role: str) -> Effects:
        return NOTHING

    def on_consuming(self, now_ms: int) -> None:
        """After each (re)connect the broker delivers again what was not acked: the rules' state and
        the alarms start again from what was stored (and so acked), which the replay then extends."""
        self._rebuild(frozenset(), strict=True)

    def _first_of_queue(self, queue: str, now: int) -> None:
        """A partition delivers for the first time since the last rebuild: if that was a while ago,
        the broker just handed it over (its devices' state is in the store, not here)."""
        self._queues.add(queue)
        if now - self._rebuilt_at > REBUILD_STALE_MS:
            keep = frozenset(device for device, seen_on in self._devices.items() if seen_on != queue)
            self._rebuild(keep, strict=False)
            self._queues.add(queue)

    def _rebuild(self, keep: frozenset[str], strict: bool) -> None:
        """`strict`: a store that does not answer stops the consuming (the runner reconnects and
        tries again); else (a delivery in hand) the state goes on as it is, said in a log line."""
        self._rebuilt_at = now_ms()  # the clock `handle` compares with
        self._queues = set()
        self._devices = {device: queue for device, queue in self._devices.items() if device in keep}
        if self.reader is None:
            return
        stage = self.stage
        try:
            stored = Stored.from_rows(
                self.reader.alarm_rows(),
                self.reader.recent_readings(READINGS_LOOKBACK_S, stage.history_needed),
                # Cooldowns count in the devices' time: an alert's age by the hub clock says nothing.
                self.reader.last_alerts(READINGS_LOOKBACK_S),
            )
        except Unreadable as exc:
            log.warning("service=telemetry event=no_rebuild reason=unreadable detail=%r", str(exc))
            return
        except (StorageUnavailable, OSError) as exc:
            if strict:
                raise StorageUnavailable(f"rebuilding the rules' state and the alarms: {exc}") from exc
            log.warning("service=telemetry event=no_rebuild error=%r", exc)
            return
        rebuilt = stage.rebuild(stored, keep)
        log.info(
            "service=telemetry event=rebuilt alarms=%d active=%d readings=%d cooldowns=%d kept=%d",
            rebuilt.alarms,
            rebuilt.active,
            rebuilt.readings,
            rebuilt.cooldowns,
            len(keep),
        )


def _consequences(
    device: str, outcome: Outcome, points: list[Point], publishes: list[Publish], events: list[Event]
) -> None:
    """What a reading's outcome adds to its delivery's effects: its flags, the rules' alerts and
    commands, and its alarms' changes."""
    events.extend(("flagged", flag) for flag in outcome.flags)
    for decision in outcome.decisions:
        alert = decision.alert
        # A broadcast: nobody tailing alerts is normal, the point is stored anyway.
        publishes.append(Publish(EXCHANGE, alert.routing_key, encode(alert), _json(), mandatory=False))
        events.append(("alert", alert.severity, alert.rule))
        if decision.command is not None:
            # Always routable to hub.commands (commands.#); a return is logged.
            publishes.append(Publish(EXCHANGE, command_key(device), encode(decision.command), _json(), mandatory=True))
            events.append(("rule_command", decision.command.command))
    points.extend(outcome.alert_points)
    for change in outcome.changes:
        points.append(change_point(change))
        if change.published:
            publishes.append(change_publish(change))
            events.append(_alarm_event(change))


def _alarm_event(change: Change) -> Event:
    return ("alarm", change.transition, change.alarm.severity)


def _json() -> BasicProperties:
    return BasicProperties(**JSON_PERSISTENT)
