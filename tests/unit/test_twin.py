"""The twins' decision core: validation, convergence, retries, coalescing, restarts, waiting commands."""

from __future__ import annotations

import itertools
from typing import Literal

import pytest

from hub.clients.influx import Series
from hub.core.contract import Ack, Command, Deferred, Desired, Presence
from hub.core.errors import ConfigError
from hub.core.models import default_models
from hub.core.twin import FAILED, command_id
from hub.services.twin.book import (
    ACK_GRACE_MS,
    COMMAND_TTL_MS,
    MAX_ATTEMPTS,
    MIN_SILENCE_MS,
    NOT_BACK,
    TwinBook,
    backoff_ms,
)
from hub.services.twin.stored import twin_point, twins_from_series

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
