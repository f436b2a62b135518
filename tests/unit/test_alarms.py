"""Exactly-once rules and the alarm lifecycle, without a server: the engine, the alarm book, the
telemetry stage's rebuild from what was stored, and the handler's acks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pika.spec import Basic, BasicProperties

from hub.clients.influx import Series
from hub.core.alarms import newest_per_alarm
from hub.core.contract import AlarmAck, AlarmTransition, Reading, decode, encode
from hub.core.errors import InvalidMessage
from hub.core.models import default_models
from hub.core.points import Point
from hub.runtime import topology
from hub.runtime.delivery import Delivery
from hub.services.alarms.lifecycle import AlarmBook, Change
from hub.services.alarms.rebuild import Stored
from hub.services.alarms.transitions import change_point
from hub.services.rules.engine import Engine, alert_id
from hub.services.rules.model import ClearPolicy, Rule, Stuck, Threshold, ZScore, clear_policy
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.service import TelemetryHandler
from hub.services.telemetry.stage import Outcome, TelemetryStage
from tests.empty_reader import EmptyReader

WARM = Threshold(name="warm", alarm="temp-high", sensor="temperature", above=26.0, cooldown_s=30, clear_after=2)
HOT = Threshold(
    name="hot", alarm="temp-high", sensor="temperature", above=30.0, severity="critical", cooldown_s=30, clear_after=2
)
ODD = ZScore(name="odd", sensor="temperature", window=20, min_samples=10, threshold=4.0, cooldown_s=0)


def _reading(ts: int, temperature: float, device: str = "th-1") -> Reading:
    return Reading(
        device=device, site="plant-a", kind="thermostat", seq=ts, ts=ts, readings={"temperature": temperature}
    )


def _stage(*rules: Rule) -> TelemetryStage:
    return TelemetryStage(ReadingJudge(default_models()), Engine(list(rules or (WARM, HOT))))


# --- the engine: exactly once --------------------------------------------------------------------


def test_a_reading_seen_twice_or_an_older_one_updates_nothing_and_fires_nothing() -> None:
    engine = Engine([Stuck(name="stuck", sensor="temperature", samples=3, cooldown_s=0), WARM])
    for ts in (1000, 2000):
        engine.evaluate(_reading(ts, 21.0), 0)
    rolling = engine.stats[("th-1", "temperature")]
    before = (rolling.count, rolling.repeats, rolling.last, rolling.last_ts)
    for replay in (_reading(2000, 21.0), _reading(1500, 21.0), _reading(2000, 40.0), _reading(10, 40.0)):
        evaluation = engine.evaluate(replay, 0)
        assert evaluation.decisions == [] and evaluation.conditions == {}
    assert (rolling.count, rolling.repeats, rolling.last, rolling.last_ts) == before
    [decision] = engine.evaluate(_reading(3000, 21.0), 0).decisions
    assert decision.alert.rule == "stuck", "the third repeat is the third, not the fifth"


def test_an_alert_is_identified_by_its_rule_device_and_reading_time_whatever_the_hub_clock() -> None:
    first = Engine([WARM]).evaluate(_reading(5000, 28.0), now_ms=111).decisions
    again = Engine([WARM]).evaluate(_reading(5000, 28.0), now_ms=999_999).decisions
    assert [d.alert for d in first] == [d.alert for d in again]
    assert first[0].alert.id == alert_id("warm", "th-1", 5000) and first[0].alert.ts == 5000
    assert first[0].command is None


# --- the alarm book: the lifecycle ---------------------------------------------------------------


def _changes(stage: TelemetryStage, *readings: Reading) -> list[tuple[str, str, int]]:
    return [(c.transition, c.alarm.severity, c.ts) for r in readings for c in stage.process(r, "mqtt", 0).changes]


def test_one_alarm_per_type_and_device_updated_while_active_escalated_then_cleared() -> None:
    stage = _stage()
    changes = _changes(
        stage,
        _reading(1_000, 27.0),  # warm trips: raised
        _reading(2_000, 27.5),  # within the cooldown: nothing
        _reading(40_000, 28.0),  # warm again: updated (count 2)
        _reading(41_000, 31.0),  # hot: escalated to critical
        _reading(42_000, 22.0),  # clear 1 of 2
        _reading(43_000, 22.0),  # cleared
        _reading(44_000, 22.0),  # nothing
    )
    assert changes == [
        ("raised", "warning", 1_000),
        ("updated", "warning", 40_000),
        ("escalated", "critical", 41_000),
        ("cleared", "critical", 43_000),
    ]
    [alarm] = stage.book.alarms.values()
    assert (alarm.id, alarm.count, alarm.value, alarm.rule) == ("temp-high:th-1:1000", 3, 31.0, "hot")
    assert (alarm.state, alarm.cleared_at) == ("cleared", 43_000)
    [(transition, _severity, _ts)] = _changes(stage, _reading(45_000, 27.0))
    assert transition == "raised", "a clear ends the cooldown: the next trip raises at once"
    assert stage.book.alarms[("temp-high", "th-1")].id == "temp-high:th-1:45000", "a new occurrence, a new id"


def test_a_condition_that_holds_within_the_cooldown_keeps_the_alarm_active() -> None:
    stage = _stage()
    changes = _changes(stage, _reading(1_000, 27.0), _reading(2_000, 22.0), _reading(3_000, 27.0))
    changes += _changes(stage, _reading(4_000, 22.0))
    assert changes == [("raised", "warning", 1_000)], "2 clean readings in a row are needed"


def test_clear_after_seconds_counts_reading_time_since_the_condition_last_held() -> None:
    rule = Threshold(name="warm", sensor="temperature", above=26.0, clear_after="10s")
    assert clear_policy(rule) == ClearPolicy(seconds=10.0)
    stage = _stage(rule)
    changes = _changes(stage, _reading(1_000, 27.0), _reading(5_000, 22.0), _reading(10_999, 22.0))
    changes += _changes(stage, _reading(11_000, 22.0))
    assert changes == [("raised", "warning", 1_000), ("cleared", "warning", 11_000)]


def test_each_rule_type_has_a_default_clear_after() -> None:
    assert clear_policy(WARM.__class__(name="w", sensor="t", above=1.0)) == ClearPolicy(readings=3)
    assert clear_policy(Stuck(name="s", sensor="t")) == ClearPolicy(readings=1)


def test_an_ack_marks_the_active_alarm_acked_once_and_names_who() -> None:
    book = AlarmBook()
    stage = _stage()
    stage.book = book
    stage.process(_reading(1_000, 27.0), "mqtt", 0)
    ack = AlarmAck(alarm_id="temp-high:th-1:1000", device="th-1", site="plant-a", kind="thermostat", by="ann", ts=9)
    change = book.ack(ack)
    assert change is not None and change.transition == "acked" and change.ts == 9
    assert (change.alarm.acked, change.alarm.acked_by) == (True, "ann")
    assert book.ack(ack) is None, "acked already"
    assert book.ack(AlarmAck(**{**_fields(ack), "alarm_id": "temp-high:th-1:5"})) is None, "not an alarm of ours"


def _fields(ack: AlarmAck) -> dict[str, Any]:
    return {name: getattr(ack, name) for name in ack.__struct_fields__}


def test_a_published_transition_is_the_agreed_message_with_its_idempotency_key() -> None:
    from hub.services.alarms.transitions import change_message, change_point, change_publish

    stage = _stage()
    [raised] = stage.process(_reading(1_000, 31.0), "mqtt", 0).changes
    publish = change_publish(raised)
    assert publish.routing_key == "alarms.critical.plant-a.thermostat.th-1"
    assert publish.properties.delivery_mode == 2 and not publish.mandatory
    body = decode(publish.body, AlarmTransition)
    assert body == change_message(raised)
    assert (body.key, body.transition, body.type, body.rule, body.count) == (
        "temp-high:th-1:1000/raised", "raised", "temp-high", "hot", 1,
    )  # fmt: skip
    assert (body.value, body.ts, body.raised_at, body.acked, body.acked_by) == (31.0, 1_000, 1_000, False, None)
    point = change_point(raised)
    assert point.measurement == "alarms" and point.ts_ms == 1_000
    assert point.tags == {
        "device": "th-1", "kind": "thermostat", "site": "plant-a", "transition": "raised", "type": "temp-high",
    }  # fmt: skip


# --- the rebuild: a restart decides what an uninterrupted run decides ----------------------------


class _Store:
    """What InfluxDB would hold of a run's points, read back as the readers answer."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, tuple[tuple[str, str], ...], int], Point] = {}

    def write(self, outcome: Outcome) -> None:
        from hub.services.alarms.transitions import change_point

        for point in [outcome.point, *outcome.alert_points, *map(change_point, outcome.changes)]:
            self.points[(point.measurement, tuple(sorted(point.tags.items())), point.ts_ms)] = point

    def rows(self, measurement: str) -> list[dict[str, Any]]:
        found = [p for p in self.points.values() if p.measurement == measurement]
        return [{**p.tags, **p.fields, "time": p.ts_ms} for p in sorted(found, key=lambda p: p.ts_ms)]

    def stored(self, per_device: int) -> Stored:
        readings: dict[str, Series] = {}
        for row in reversed(self.rows("thermostat")):
            one = readings.setdefault(row["device"], Series("thermostat", {"device": row["device"]}))
            if len(one.rows) < per_device:
                one.rows.append({k: v for k, v in row.items() if k != "device"})
        alerts: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self.rows("alerts"):
            alerts[(row["rule"], row["device"])] = row
        return Stored.from_rows(self.rows("alarms"), readings.values(), alerts.values())


def _run(stage: TelemetryStage, readings: list[Reading], store: _Store) -> list[Change]:
    changes: list[Change] = []
    for reading in readings:
        outcome = stage.process(reading, "mqtt", 0)
        store.write(outcome)
        changes.extend(outcome.changes)
    return changes


SCRIPT = [
    *(_reading(1000 * i, 21.0 + (i % 3) * 0.1) for i in range(1, 15)),
    _reading(15_000, 27.0),  # raised (warm), odd too
    *(_reading(1000 * i, 27.0) for i in range(16, 50)),  # updates every 30 s of reading time
    _reading(50_000, 31.0),  # escalated
    _reading(51_000, 22.0),
    _reading(52_000, 22.0),  # cleared
    *(_reading(1000 * i, 21.0 + (i % 3) * 0.1) for i in range(53, 60)),
    _reading(60_000, 28.0),  # raised again
]


@pytest.mark.parametrize("cut", [5, 15, 16, 30, 47, 50, 51, 52, 58])
def test_a_restart_anywhere_replayed_from_the_store_gives_the_same_alarms_and_alerts(cut: int) -> None:
    rules: list[Rule] = [WARM, HOT, ODD]
    whole_store = _Store()
    whole = _run(_stage(*rules), SCRIPT, whole_store)
    store = _Store()
    before = _run(_stage(*rules), SCRIPT[:cut], store)
    restarted = _stage(*rules)
    restarted.rebuild(store.stored(restarted.history_needed))
    # the broker redelivers the unacked window (here: the last 3 readings, stored already) and the rest
    after = _run(restarted, SCRIPT[max(0, cut - 3) :], store)
    assert [(c.key, c.ts) for c in before + after] == [(c.key, c.ts) for c in whole]
    assert store.points == whole_store.points, "the same points: alerts and alarm rows alike"


def test_newest_per_alarm_folds_rows_into_alarms_by_their_order_not_their_times() -> None:
    store = _Store()
    stage = _stage()
    _run(stage, SCRIPT[:20], store)
    # an ack dated by the hub's clock, later than the device's readings that follow it
    ack = AlarmAck(
        alarm_id="temp-high:th-1:15000", device="th-1", site="plant-a", kind="thermostat", by="ann", ts=10**9
    )
    acked = stage.ack(ack)
    assert acked is not None
    store.points[("alarms", (("acked", "x"),), acked.ts)] = change_point(acked)
    _run(stage, SCRIPT[20:], store)
    alarms = newest_per_alarm(store.rows("alarms"))
    assert [(a.id, a.state, a.severity, a.acked) for a in alarms] == [
        ("temp-high:th-1:15000", "cleared", "critical", True),
        ("temp-high:th-1:60000", "active", "warning", False),
    ]


# --- the handler: acks come through the device's partition --------------------------------------


def _delivery(
    body: bytes, exchange: str, key: str = "telemetry.plant-a.thermostat.th-1", type_: str | None = None
) -> Delivery:
    method = Basic.Deliver(delivery_tag=1, exchange=exchange, routing_key=key)
    return Delivery(method, BasicProperties(type=type_), body, "hub.telemetry.0")


def test_an_ack_through_iot_telemetry_acks_the_alarm_once_and_publishes_the_transition() -> None:
    handler = TelemetryHandler(_stage(), topology.Declaration((topology.partition(0),)))
    reading = _reading(1_000, 27.0)
    raised = handler.handle(_delivery(encode(reading), "iot"))
    assert [p.routing_key for p in raised.publishes] == [
        "alerts.warning.plant-a.th-1",  # the alert event stays, for compatibility
        "alarms.warning.plant-a.thermostat.th-1",
    ]
    ack = AlarmAck(alarm_id="temp-high:th-1:1000", device="th-1", site="plant-a", kind="thermostat", by="ann", ts=5)
    effects = handler.handle(_delivery(encode(ack), topology.TELEMETRY_EXCHANGE, type_="alarm_ack"))
    [publish] = effects.publishes
    assert decode(publish.body, AlarmTransition).transition == "acked"
    [point] = effects.points
    assert point.tags["transition"] == "acked" and point.fields["acked_by"] == "ann"
    assert not handler.handle(_delivery(encode(ack), topology.TELEMETRY_EXCHANGE, type_="alarm_ack")).publishes, "once"
    # `stack migrate` re-publishes readings to iot.telemetry: without the ack's type, a reading
    migrated = handler.handle(_delivery(encode(_reading(2_000, 27.0)), topology.TELEMETRY_EXCHANGE))
    assert migrated.record is not None


def test_an_ack_a_device_publishes_on_iot_is_no_ack() -> None:
    handler = TelemetryHandler(_stage(), topology.Declaration((topology.partition(0),)))
    ack = AlarmAck(alarm_id="temp-high:th-1:1000", device="th-1", site="plant-a", kind="thermostat", by="me", ts=5)
    for type_ in (None, "alarm_ack"):  # a STOMP device may set the type: the exchange is still `iot`
        with pytest.raises(InvalidMessage):
            handler.handle(_delivery(encode(ack), "iot", type_=type_))


def test_the_demo_tells_one_alarm_raised_then_cleared() -> None:
    from hub.demo.activity import Snapshot
    from hub.demo.view import final_report

    rows = [
        {
            "time": 1_000,
            "id": "hot:th-1:1000",
            "transition": "raised",
            "severity": "warning",
            "sensor": "t",
            "value": 52.5,
        },
        {"time": 2_000, "id": "odd:th-2:2000", "transition": "raised", "severity": "info"},
        {"time": 4_000, "id": "hot:th-1:1000", "transition": "cleared", "count": 1},
    ]
    snapshot = Snapshot(alarm_rows=rows)
    assert (snapshot.alarms("raised"), snapshot.alarms("cleared")) == (2, 1)
    story = snapshot.alarm_story()
    assert story is not None and story.startswith("alarm hot:th-1:1000 raised ") and "(warning t 52.5)" in story
    assert "cleared by itself" in story and story in final_report(snapshot, [], 60.0)
    assert Snapshot(alarm_rows=rows[:2]).alarm_story() is None


class _Reader(EmptyReader):
    """The read side in memory: what another hub stored meanwhile."""

    def __init__(self) -> None:
        self.alarms: list[dict[str, Any]] = []
        self.reads = 0

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        self.reads += 1
        return self.alarms


def _row(device: str, transition: str, version: int) -> dict[str, Any]:
    return {
        "time": 1_000 * version, "type": "temp-high", "device": device, "site": "plant-a", "kind": "thermostat",
        "transition": transition, "id": f"temp-high:{device}:1000", "rule": "warm", "severity": "warning",
        "sensor": "temperature", "state": "cleared" if transition == "cleared" else "active", "acked": False,
        "count": 1, "value": 27.0, "raised_at": 1_000, "last_ts": 1_000, "version": version,
        "cleared_at": 1_000 * version if transition == "cleared" else 0,
    }  # fmt: skip


def test_a_partition_handed_over_later_is_rebuilt_from_the_store_keeping_the_devices_of_the_others() -> None:
    reader = _Reader()
    reader.alarms = [_row("th-9", "raised", 1)]
    declaration = topology.Declaration((topology.partition(0), topology.partition(1)))
    handler = TelemetryHandler(_stage(), declaration, reader=reader)
    handler.on_consuming(0)
    assert [a.id for a in handler.stage.book.active()] == ["temp-high:th-9:1000"]
    mine = Delivery(Basic.Deliver(delivery_tag=1, exchange="iot", routing_key="telemetry.plant-a.thermostat.th-1"),
                    BasicProperties(), encode(_reading(5_000, 27.0)), "hub.telemetry.0")  # fmt: skip
    handler.handle(mine)
    # meanwhile the hub that held partition 1 cleared th-9's alarm, then died: partition 1 comes to us
    reader.alarms = [_row("th-9", "raised", 1), _row("th-9", "cleared", 2)]
    handler._rebuilt_at -= 60_000
    reads = reader.reads
    theirs = _reading(9_000, 21.0, device="th-9")
    handler.handle(Delivery(Basic.Deliver(delivery_tag=2, exchange="iot", routing_key=theirs.routing_key),
                            BasicProperties(), encode(theirs), "hub.telemetry.1"))  # fmt: skip
    assert reader.reads == reads + 1, "rebuilt on the handed-over partition's first delivery"
    assert [a.id for a in handler.stage.book.active()] == ["temp-high:th-1:5000"], "th-1 kept, th-9 as stored"
    handler.handle(mine._replace(method=Basic.Deliver(delivery_tag=3, exchange="iot", routing_key=mine.routing_key)))
    assert reader.reads == reads + 1, "a queue that delivered since the rebuild rebuilds nothing"


# --- the CLI ---------------------------------------------------------------------------------------


def _records() -> list[Any]:
    store = _Store()
    _run(_stage(), SCRIPT, store)
    return newest_per_alarm(store.rows("alarms"))


def test_the_alarms_command_lists_the_active_ones_with_the_fields_the_issue_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from hub.cli import alarms as cli
    from hub.cli.main import cli as hub

    # through the command group, as `python -m hub` runs it (click keeps the help option it first built)
    monkeypatch.setattr(cli, "read_alarms", lambda _settings, _since_s=0: _records())
    listed = CliRunner().invoke(hub, ["alarms", "--json"])
    assert listed.exit_code == 0, listed.output
    [alarm] = json.loads(listed.output)
    expected = {"id", "type", "rule", "device", "severity", "state", "acked", "count", "raised_at", "cleared_at"}
    assert expected | {"last_value"} <= set(alarm)
    assert (alarm["id"], alarm["state"], alarm["cleared_at"]) == ("temp-high:th-1:60000", "active", None)
    everything = CliRunner().invoke(hub, ["alarms", "--state", "all", "--severity", "critical"])
    assert "temp-high:th-1:15000" in everything.output and "cleared" in everything.output
    assert "60000" not in everything.output, "--severity critical leaves the warning out"
    bad = CliRunner().invoke(hub, ["alarms", "--device", "Not A Name"])
    assert bad.exit_code != 0


def test_an_ack_of_an_unknown_or_cleared_alarm_is_refused_before_anything_is_sent() -> None:
    from hub.control.alarms import UnknownAlarm, acks_for

    records = _records()
    [ack] = acks_for(records, ["temp-high:th-1:60000"], "ann", "on it", 5)
    assert (ack.device, ack.site, ack.kind, ack.by, ack.note) == ("th-1", "plant-a", "thermostat", "ann", "on it")
    with pytest.raises(UnknownAlarm, match="unknown alarm temp-high:th-1:1"):
        acks_for(records, ["temp-high:th-1:60000", "temp-high:th-1:1"], "ann", "", 5)
    with pytest.raises(UnknownAlarm, match="is cleared"):
        acks_for(records, ["temp-high:th-1:15000"], "ann", "", 5)
    assert UnknownAlarm.exit_code == 2


def test_tail_tells_an_alarm_transition_in_a_line() -> None:
    from hub.control.tail import describe
    from hub.services.alarms.transitions import change_publish

    stage = _stage()
    [raised] = stage.process(_reading(1_000, 31.0), "mqtt", 0).changes
    publish = change_publish(raised)
    line = describe(publish.routing_key, publish.body)
    assert line.text == "raised critical temp-high:th-1:1000 (hot: temperature=31, 1 trips)", line.text
