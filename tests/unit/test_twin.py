"""The twins' decision core: validation, convergence, retries, coalescing, restarts, waiting commands."""

from __future__ import annotations

import itertools
from typing import Literal

import pytest
from pika.spec import Basic, BasicProperties

from hub.clients.influx import Series
from hub.core.contract import Ack, Command, Deferred, Desired, Presence, Rollout, encode
from hub.core.errors import ConfigError, InvalidMessage
from hub.core.models import default_models
from hub.core.twin import ABORTED, COMPLETED, FAILED, command_id
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, ROLE_ACTIVE, ROLE_STANDBY
from hub.services.twin.book import (
    ACK_GRACE_MS,
    COMMAND_TTL_MS,
    MAX_ATTEMPTS,
    MIN_SILENCE_MS,
    NOT_BACK,
    TwinBook,
    backoff_ms,
)
from hub.services.twin.service import TwinHandler
from hub.services.twin.stored import rollout_point, rollouts_from_series, twin_point, twins_from_series
from tests.empty_reader import EmptyReader

DEVICE = "th-0001"


def desired(value: object, change_id: str = "c1", prop: str = "setpoint") -> Desired:
    return Desired(id=change_id, device=DEVICE, kind="thermostat", desired={prop: value}, ts=1)  # type: ignore[dict-item]


def status(state: Literal["online", "offline"], at: int) -> Presence:
    return Presence(
        device=DEVICE,
        state=state,
        protocol="mqtt",
        kind="thermostat",
        site="s",
        interval_ms=1000,
        ts=at,
    )


def ack(command_id: str, status: str = "ok", at: int = 0, **state: object) -> Ack:
    return Ack(id=command_id, device=DEVICE, status=status, detail="why" if status != "ok" else "", state=state, ts=at)  # type: ignore[arg-type]


def test_a_desired_value_outside_its_range_is_refused_naming_the_range() -> None:
    book = TwinBook(default_models())
    with pytest.raises(ConfigError, match="setpoint of a thermostat must be a number from 5 to 35"):
        book.on_desired(desired(40), 0)
    with pytest.raises(ConfigError, match="no twin property 'relay'"):
        book.on_desired(desired(True, prop="relay"), 0)
    assert DEVICE not in book.twins


def test_an_offline_device_gets_nothing_until_it_comes_online_then_one_command_that_converges() -> None:
    book = TwinBook(default_models())
    book.on_desired(desired(23), 1_000)
    out = book.take(1_000)
    assert out.sends == [] and len(out.twins) == 1
    twin = book.twins[DEVICE]
    assert twin.delta == {"setpoint": 23} and not twin.in_sync and twin.version == 1
    book.on_status(status("online", 2_000), 2_000)
    [send] = book.take(2_000).sends
    assert send.command.command == "set_setpoint" and send.command.args == {"value": 23}
    assert send.command.id == command_id(DEVICE, "setpoint", 1, 1)
    book.on_ack(ack(send.command.id, at=2_100, setpoint=23.0, heating=True), 2_100)
    out = book.take(2_100)
    assert out.sends == [] and twin.in_sync and twin.reported["setpoint"] == 23.0
    assert twin.converging == {}
    book.due(60_000 + 2_100)
    assert book.take(3_000).sends == []


def test_two_changes_before_the_device_returns_send_only_the_last() -> None:
    book = TwinBook(default_models())
    book.on_desired(desired(21, "a"), 0)
    book.on_desired(desired(22, "b"), 1)
    book.on_desired(desired(22, "b"), 2)  # the same change delivered again
    assert book.twins[DEVICE].version == 2
    book.on_status(status("online", 5), 5)
    [send] = book.take(5).sends
    assert send.command.args == {"value": 22}


def test_unsupported_leaves_the_property_failed_and_it_is_not_retried() -> None:
    book = TwinBook(default_models())
    book.on_status(status("online", 0), 0)
    book.on_desired(desired(23), 0)
    [send] = book.take(0).sends
    book.on_ack(ack(send.command.id, "unsupported", 10), 10)
    book.take(10)
    twin = book.twins[DEVICE]
    assert twin.failed == {"setpoint": "unsupported: why"}
    for now in range(20, 10 * 60_000, 1_000):
        book.on_reading(DEVICE, "s", "thermostat", {"temperature": 20.0}, now, now)
        book.due(now)
        assert book.take(now).sends == []
    book.on_desired(desired(24, "next"), 700_000)  # a new change tries again
    assert len(book.take(700_000).sends) == 1


def test_no_answer_is_retried_with_backoff_a_bounded_number_of_times_then_again_on_return() -> None:
    book = TwinBook(default_models())
    book.on_status(status("online", 0), 0)
    book.on_desired(desired(23), 0)
    sent_at = []
    now = 0
    while now < 30 * 60_000:
        book.on_reading(DEVICE, "s", "thermostat", {"temperature": 20.0}, now, now)  # alive, never answering
        book.due(now)
        for send in book.take(now).sends:
            sent_at.append(now)
            change = book.twins[DEVICE].converging["setpoint"].change
            assert send.command.id == command_id(DEVICE, "setpoint", change, len(sent_at))
        now += 500
    assert len(sent_at) == MAX_ATTEMPTS
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert all(gap >= COMMAND_TTL_MS + ACK_GRACE_MS for gap in gaps)
    assert gaps[-1] >= backoff_ms(MAX_ATTEMPTS - 1)
    twin = book.twins[DEVICE]
    assert twin.converging["setpoint"].state == FAILED and "no answer" in twin.failed["setpoint"]
    book.on_status(status("offline", now), now)
    book.on_status(status("online", now + 1), now + 1)
    assert len(book.take(now + 1).sends) == 1


def test_a_stored_twin_goes_on_after_a_restart_with_the_same_command_and_its_late_ack() -> None:
    book = TwinBook(default_models())
    book.on_status(status("online", 0), 0)
    book.on_desired(desired(23), 0)
    out = book.take(0)
    [send] = out.sends
    point = twin_point(out.twins[-1])
    assert point.measurement == "twins" and point.tags["device"] == DEVICE and point.fields["in_sync"] is False
    row = {"time": point.ts_ms, **point.fields}
    restarted = TwinBook(default_models())
    restarted.seed(twins_from_series([Series("twins", {"device": DEVICE}, [row])]), 100)
    twin = restarted.twins[DEVICE]
    assert twin.desired == {"setpoint": 23} and twin.converging["setpoint"].command_id == send.command.id
    assert restarted.take(100).sends == []  # sent already: its ack is awaited, not a second command
    restarted.on_ack(ack(send.command.id, at=200, setpoint=23), 200)
    restarted.take(200)
    assert twin.in_sync


def test_an_older_report_never_replaces_a_newer_one() -> None:
    book = TwinBook(default_models())
    book.on_status(status("online", 0), 0)
    book.on_ack(ack("x", at=500, setpoint=25), 500)  # no twin yet for an ack alone
    book.on_reading(DEVICE, "s", "thermostat", {"setpoint": 24.0}, 1_000, 1_000)
    book.on_reading(DEVICE, "s", "thermostat", {"setpoint": 21.0}, 900, 1_001)  # replayed, older
    assert book.twins[DEVICE].reported["setpoint"] == 24.0


def test_a_reading_after_silence_is_a_return_that_converges() -> None:
    book = TwinBook(default_models())
    book.on_reading(DEVICE, "s", "thermostat", {"setpoint": 20.0}, 0, 0)
    book.take(0)
    book.due(MIN_SILENCE_MS + 1)
    assert not book.twins[DEVICE].online
    book.on_desired(desired(23), MIN_SILENCE_MS + 2)
    assert book.take(MIN_SILENCE_MS + 2).sends == []
    book.on_reading(DEVICE, "s", "thermostat", {"setpoint": 20.0}, MIN_SILENCE_MS + 3, MIN_SILENCE_MS + 3)
    assert len(book.take(MIN_SILENCE_MS + 3).sends) == 1


def test_a_waiting_command_is_sent_when_its_device_returns_or_recorded_expired() -> None:
    book = TwinBook(default_models())
    book.on_status(status("offline", 0), 0)
    soon = Command(id="late", command="ping", ts=0, expires=10_000)
    later = Command(id="kept", command="ping", ts=0, expires=3_600_000)
    for command in (soon, later):
        book.on_deferred(Deferred(device=DEVICE, command=command), 0)
    out = book.take(0)
    assert [(p.tags["status"], p.fields["id"]) for p in out.points] == [("queued", "late"), ("queued", "kept")]
    book.due(20_000)
    out = book.take(20_000)
    assert [(p.tags["status"], p.fields["id"], p.fields["detail"]) for p in out.points] == [
        ("expired", "late", NOT_BACK)
    ]
    book.on_status(status("online", 30_000), 30_000)
    [send] = book.take(30_000).sends
    assert send.command.id == "kept" and send.origin == "cli"
    book.on_ack(ack("kept", at=30_100), 30_100)
    book.take(30_100)
    assert book.twins[DEVICE].waiting == []


def test_the_history_shows_a_waiting_command_queued_then_sent_then_its_outcome() -> None:
    from hub.control.history import build_history

    queued = {"time": 1000, "id": "w", "device": "th-1", "command": "ping", "origin": "cli", "status": "queued"}
    sent = {**queued, "status": "sent"}
    ok = {**queued, "time": 9000, "status": "ok", "rtt_ms": 5.0}
    assert [r.status for r in build_history([queued])] == ["queued"]
    assert [r.status for r in build_history([sent, queued])] == ["sent"]
    assert [(r.status, r.sent_at) for r in build_history([ok, sent, queued])] == [("ok", 1000)]


def test_a_ttl_is_a_duration() -> None:
    from hub.control.args import parse_duration

    assert [parse_duration(text, "--ttl") for text in ("90", "90s", "15m", "1h", "2d")] == [90, 90, 900, 3600, 172800]
    with pytest.raises(ConfigError, match="--ttl 'soon' is not a duration"):
        parse_duration("soon", "--ttl")


def test_a_simulated_thermostat_set_to_23_reports_it_and_its_temperature_follows() -> None:
    from devices.device import DeviceSpec, SimulatedDevice

    device = SimulatedDevice.create(DeviceSpec("th-0001", "thermostat", "mqtt", "s"), seed=3, start_s=0.0)
    command = Command(id="c", command="set_setpoint", args={"value": 23}, ts=0, expires=10_000)
    outcome = device.execute(command, 1)
    assert outcome.ack.status == "ok" and outcome.ack.state["setpoint"] == 23
    reading = None
    for second in range(1, 20 * 60):  # twenty simulated minutes, a reading a second
        reading = device.produce(second * 1000)
    assert reading is not None and reading.readings["setpoint"] == 23
    assert abs(float(reading.readings["temperature"]) - 23) < 1.0


def _rollout_fleet(book: TwinBook, count: int) -> list[str]:
    devices = [f"th-{n:04d}" for n in range(1, count + 1)]
    for device in devices:
        book.on_status(
            Presence(
                device=device, state="online", protocol="mqtt", kind="thermostat", site="s", interval_ms=1000, ts=0
            ),
            0,
        )
    book.take(0)
    return devices


def _answer_all(book: TwinBook, now: int, refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for send in book.take(now).sends:
        status = "unsupported" if send.device in refuse else "ok"
        state = {} if send.device in refuse else {"setpoint": send.command.args["value"]}
        book.on_ack(
            Ack(id=send.command.id, device=send.device, status=status, state=state, ts=now),  # type: ignore[arg-type]
            now,
        )


def _rollout(devices: list[str], pause_ms: int = 30_000) -> Rollout:
    return Rollout(
        id="r1",
        desired={"setpoint": 20},
        devices=[(device, "thermostat") for device in devices],
        stages=[10, 50, 100],
        pause_ms=pause_ms,
        abort_failures=5,
        ts=0,
    )


def test_a_rollout_whose_first_devices_fail_stops_at_the_first_stage() -> None:
    book = TwinBook(default_models())
    devices = _rollout_fleet(book, 20)
    book.on_rollout(_rollout(devices), 1)
    for now in range(1, 120_000, 1_000):
        _answer_all(book, now, refuse={"th-0001", "th-0002"})
        book.due(now)
    rollout = book.rollouts["r1"]
    assert (rollout.state, rollout.stage, rollout.reached, rollout.failed) == (ABORTED, 0, 2, 2)
    assert [d for d in devices if book.twins[d].desired] == ["th-0001", "th-0002"]
    assert "2 of 2 devices failed at stage 1" in rollout.reason


def test_a_rollout_goes_stage_by_stage_and_completes_and_goes_on_after_a_restart() -> None:
    book = TwinBook(default_models())
    devices = _rollout_fleet(book, 20)
    book.on_rollout(_rollout(devices), 1)
    out = book.take(1)
    assert len(out.sends) == 2 and [r.reached for r in out.rollouts] == [2]
    stored = [rollout_point(out.rollouts[0])]
    twins = [twin_point(t) for t in book.twins.values()]
    restarted = TwinBook(default_models())
    restarted.seed(twins_from_series([Series("twins", {}, [{"time": p.ts_ms, **p.fields}]) for p in twins]), 2)
    restarted.seed_rollouts(
        rollouts_from_series([Series("rollouts", {}, [{"time": p.ts_ms, **p.fields}]) for p in stored])
    )
    for send in out.sends:  # the acks of what the first hub sent reach the restarted one
        restarted.on_ack(Ack(id=send.command.id, device=send.device, status="ok", state={"setpoint": 20}, ts=3), 3)
    stages = [restarted.rollouts["r1"].reached]
    for now in range(3, 60_000, 500):
        restarted.due(now)
        _answer_all(restarted, now)
        stages.append(restarted.rollouts["r1"].reached)
    rollout = restarted.rollouts["r1"]
    assert rollout.state == COMPLETED and rollout.in_sync == 20
    assert sorted(set(stages)) == [2, 10, 20]
    assert all(restarted.twins[d].in_sync for d in devices)


def test_a_stage_that_does_not_sync_goes_on_when_its_pause_ends() -> None:
    book = TwinBook(default_models())
    devices = _rollout_fleet(book, 10)
    book.on_rollout(_rollout(devices, pause_ms=5_000), 1)
    book.take(1)  # sent, never answered
    book.due(4_000)
    assert book.rollouts["r1"].reached == 1
    book.due(5_002)
    assert book.rollouts["r1"].reached == 5


class _StoredTwins(EmptyReader):
    """A reader of what `twins` holds (the read side's protocol, in memory)."""

    def __init__(self) -> None:
        self.rows: list[Series] = []

    def twins(self) -> list[Series]:
        return self.rows


def _delivery(routing_key: str, body: bytes, tag: int = 1) -> Delivery:
    return Delivery(Basic.Deliver(delivery_tag=tag, routing_key=routing_key), BasicProperties(), body, "hub.twin")


def test_the_handler_stores_a_change_refuses_a_bad_one_and_a_standby_takes_over_from_what_is_stored() -> None:
    reader = _StoredTwins()
    active = TwinHandler(TwinBook(default_models()), reader)
    active.on_consuming(0)
    with pytest.raises(InvalidMessage) as refused:
        active.handle(_delivery("twin.desired.th-0001", encode(desired(99))))
    assert refused.value.reason == "twin_property" and "from 5 to 35" in refused.value.detail
    effects = active.handle(_delivery("twin.desired.th-0001", encode(desired(23)), tag=2))
    [point] = effects.points
    assert point.measurement == "twins" and not effects.hold
    reader.rows = [Series("twins", {"device": DEVICE}, [{"time": point.ts_ms, **point.fields}])]

    standby = TwinHandler(TwinBook(default_models()), _StoredTwins())
    standby.on_consuming(0)
    standby.handle(_delivery(f"telemetry.s.thermostat.{DEVICE}", b"", tag=1)._replace(queue=standby._side_queue))
    assert standby.tick(1_000, ROLE_STANDBY) is NOTHING
    standby.reader = reader
    standby.tick(2_000, ROLE_ACTIVE)  # the broker made it active: it starts from what the other stored
    assert standby.book.twins[DEVICE].desired == {"setpoint": 23}


def test_the_dashboard_shows_a_twin_property_by_property() -> None:
    from hub.dashboard.queries import twin_rows

    book = TwinBook(default_models())
    book.on_status(status("online", 0), 0)
    book.on_desired(desired(23), 0)
    book.take(0)
    point = twin_point(book.twins[DEVICE])
    shown = twin_rows([Series("twins", {"device": DEVICE}, [{"time": point.ts_ms, **point.fields}])])
    assert shown is not None and shown["in_sync"] is False
    assert shown["properties"] == [
        {"name": "interval_ms", "desired": None, "reported": 1000, "state": "reported"},
        {"name": "setpoint", "desired": 23, "reported": None, "state": "sent"},
    ]
    assert twin_rows([]) is None


def test_the_twin_table_says_each_property_s_state() -> None:
    from rich.console import Console

    from hub.cli.twin import _property_table

    book = TwinBook(default_models())
    book.on_status(status("online", 0), 0)
    book.on_desired(desired(23), 0)
    [send] = book.take(0).sends
    book.on_ack(ack(send.command.id, "error", 10), 10)
    book.take(10)
    console = Console(width=200, record=True)
    console.print(_property_table([book.twins[DEVICE]], 5_000))
    text = console.export_text()
    assert "setpoint" in text and "failed: error: why" in text and "interval_ms" in text and "reported" in text


def test_a_change_of_many_devices_goes_as_few_one_stage_rollouts_that_complete() -> None:
    from hub.control.twin import BULK_CHUNK, Target, bulk_rollouts

    chosen = [Target(f"th-{n:04d}", "thermostat") for n in range(1, BULK_CHUNK + 6)]
    bulk = bulk_rollouts(default_models(), chosen, {"setpoint": 20})
    assert [len(r.devices) for r in bulk] == [BULK_CHUNK, 5] and all(r.stages == [100] for r in bulk)
    assert all(len(encode(r)) < 64 * 1024 for r in bulk)
    with pytest.raises(ConfigError, match="from 5 to 35"):
        bulk_rollouts(default_models(), chosen[:1], {"setpoint": 50})
    book = TwinBook(default_models())
    devices = _rollout_fleet(book, 3)
    [small] = bulk_rollouts(default_models(), [Target(d, "thermostat") for d in devices], {"setpoint": 20})
    book.on_rollout(small, 1)
    sends = book.take(1).sends
    assert len(sends) == 3  # every device at once
    for send in sends:
        book.on_ack(Ack(id=send.command.id, device=send.device, status="ok", state={"setpoint": 20}, ts=2), 2)
    book.due(3)
    assert book.rollouts[small.id].state == COMPLETED


def test_a_standby_the_monitor_never_saw_reads_the_stored_twins_when_the_broker_first_hands_it_the_queue() -> None:
    reader = _StoredTwins()
    other = TwinBook(default_models())
    other.on_desired(desired(23), 0)
    quiet = TwinHandler(TwinBook(default_models()), reader)
    quiet.on_consuming(0)  # nothing stored yet; it waits, its role unknown
    reader.rows = [Series("twins", {"device": DEVICE}, [{"time": 1, **twin_point(other.twins[DEVICE]).fields}])]
    effects = quiet.handle(_delivery(f"status.{DEVICE}", encode(status("online", 20_000))))
    assert quiet.book.twins[DEVICE].desired == {"setpoint": 23}, "the active hub's change is kept"
    assert any(p.measurement == "twins" and '"setpoint":23' in str(p.fields["doc"]) for p in effects.points)
