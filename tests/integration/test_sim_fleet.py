"""The simulated fleet on the real broker: telemetry and presence, commands, reconnects without gaps."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from devices.fleet import Fleet
from hub.control.identity import revoke
from hub.core.config import Settings
from hub.core.contract import (
    Reading,
)
from hub.core.credentials import Credential, forget_credentials
from hub.core.errors import BrokerUnavailable
from tests.support import Watcher, fleet_credentials, wait_until

FAST_INTERVAL_S = 0.1


@pytest.fixture
def watcher(stack: Settings) -> Iterator[Watcher]:
    w = Watcher(stack, "telemetry.#", "status.#", "acks.#")
    yield w
    w.close()


def _seqs(readings: list[Reading]) -> list[int]:
    return sorted({r.seq for r in readings})


def test_devices_of_both_protocols_send_contract_valid_telemetry_and_online_then_offline(
    stack: Settings, watcher: Watcher
) -> None:
    with Fleet(stack, count=8, interval_s=FAST_INTERVAL_S, site="plant-t", seed=1) as fleet:
        protocols = {d.device_id: d.protocol for d in fleet.devices}
        wait_until(lambda: fleet.stats().total.confirmed >= 8 * 5)
    for device in fleet.devices:  # a device's readings are queued ahead of its offline status
        watcher.wait_states(device.device_id, ["online", "offline"])
    assert set(protocols.values()) == {"mqtt", "stomp"}
    for device in fleet.devices:
        readings = watcher.readings[device.device_id]
        assert len(readings) >= 3, device.device_id
        assert {(r.site, r.kind) for r in readings} == {("plant-t", device.kind)}
        assert _seqs(readings) == list(range(1, device.seq + 1)), "every reading made arrives, in one seq run"
        assert watcher.states(device.device_id) == ["online", "offline"]
        assert {p.protocol for p in watcher.presence[device.device_id]} == {device.protocol}
    totals = fleet.stats().total
    assert totals.confirmed == totals.produced and totals.buffered == 0 and totals.errors == 0


@pytest.mark.parametrize("protocol", ["mqtt", "stomp"])
def test_command_round_trip_changes_the_readings_that_follow(stack: Settings, watcher: Watcher, protocol: str) -> None:
    with Fleet(stack, count=4, protocol=protocol, interval_s=FAST_INTERVAL_S, site="plant-c") as fleet:  # type: ignore[arg-type]
        ids = {d.kind: d.device_id for d in fleet.devices}
        thermostat, meter = ids["thermostat"], ids["power_meter"]

        setpoint = watcher.ack_for(watcher.send(thermostat, "set_setpoint", value=27.5))
        relay = watcher.ack_for(watcher.send(meter, "set_relay", on=False))
        unsupported = watcher.ack_for(watcher.send(ids["environment"], "set_relay", on=True))
        unknown = watcher.ack_for(watcher.send(thermostat, "launch"))
        expired = watcher.ack_for(watcher.send(thermostat, "set_setpoint", expires_in_ms=-1_000, value=10.0))
        bad = watcher.ack_for(watcher.send(thermostat, "set_setpoint", value="warm"))
        ping = watcher.ack_for(watcher.send(ids["air_quality"], "ping"))
        after = fleet.device(thermostat).seq
        wait_until(lambda: fleet.device(thermostat).seq > after + 3 and fleet.device(meter).seq > after + 3)

    assert (setpoint.status, setpoint.device, setpoint.state["setpoint"]) == ("ok", thermostat, 27.5)
    assert (relay.status, relay.state["relay"]) == ("ok", False)
    assert unsupported.status == "unsupported" and "power_meter" in unsupported.detail
    assert unknown.status == "unsupported"
    assert expired.status == "expired" and fleet.device(thermostat).model.state()["setpoint"] == 27.5
    assert bad.status == "error" and "value" in bad.detail
    assert (ping.status, ping.state["interval_ms"]) == ("ok", 100)

    watcher.poll(1.0)
    last_thermostat = watcher.readings[thermostat][-3:]
    last_meter = watcher.readings[meter][-3:]
    assert all(r.readings["setpoint"] == 27.5 for r in last_thermostat)
    assert all(r.readings["heating"] is True for r in last_thermostat), "a room far below its setpoint heats"
    assert all(r.readings["relay"] is False and r.readings["power"] == 0.0 for r in last_meter)


def test_set_interval_changes_the_reading_rate_and_is_announced(stack: Settings, watcher: Watcher) -> None:
    with Fleet(stack, count=1, protocol="stomp", interval_s=1.0, site="plant-i") as fleet:
        [device] = fleet.devices
        ack = watcher.ack_for(watcher.send(device.device_id, "set_interval", ms=100))
        start = device.seq
        wait_until(lambda: device.seq >= start + 10, timeout_s=5)
    watcher.poll(0.5)
    assert ack.state["interval_ms"] == 100
    assert [p.interval_ms for p in watcher.presence[device.device_id] if p.state == "online"] == [1000, 100]
    fast = [r.ts for r in watcher.readings[device.device_id] if r.seq > start]
    gaps = [b - a for a, b in itertools.pairwise(fast)]
    assert sorted(gaps)[len(gaps) // 2] < 300, "readings now come about every 100 ms"


@pytest.mark.parametrize("protocol", ["mqtt", "stomp"])
def test_a_cut_connection_reconnects_and_loses_no_buffered_reading(
    stack: Settings, watcher: Watcher, protocol: str
) -> None:
    with Fleet(stack, count=1, protocol=protocol, interval_s=FAST_INTERVAL_S, site="plant-r") as fleet:  # type: ignore[arg-type]
        [device] = fleet.devices
        wait_until(lambda: device.seq >= 5)
        fleet.cut(device.device_id, for_s=1.5)
        wait_until(lambda: not fleet.is_online(device.device_id), timeout_s=5)
        wait_until(lambda: len(device.outbox) >= 10, timeout_s=5)
        buffered_while_down = len(device.outbox)
        wait_until(lambda: fleet.is_online(device.device_id), timeout_s=15)
        resumed = device.seq
        wait_until(lambda: device.seq >= resumed + 5)
        stats = fleet.stats().total
    # MQTT: the broker published the last will when the connection died without a DISCONNECT.
    expected = ["online", "offline", "online", "offline"] if protocol == "mqtt" else ["online", "online", "offline"]
    watcher.wait_states(device.device_id, expected)
    assert buffered_while_down >= 10
    assert stats.reconnects == 1 and stats.dropped == 0
    assert _seqs(watcher.readings[device.device_id]) == list(range(1, device.seq + 1)), "no seq gap"


def test_a_stopped_device_goes_offline_and_carries_on_its_seq_when_started(stack: Settings, watcher: Watcher) -> None:
    with Fleet(stack, count=2, interval_s=FAST_INTERVAL_S, site="plant-s") as fleet:
        for device in fleet.devices:
            wait_until(lambda device=device: device.seq >= 3)  # type: ignore[misc]
            fleet.stop_device(device.device_id)
        stopped_at = {d.device_id: d.seq for d in fleet.devices}
        for device_id in stopped_at:
            watcher.wait_states(device_id, ["online", "offline"])
        unanswered = watcher.send(fleet.devices[0].device_id, "ping")
        watcher.poll(0.5)
        assert {d.device_id: d.seq for d in fleet.devices} == stopped_at, "a stopped device makes no readings"
        assert unanswered not in watcher.acks
        for device in fleet.devices:
            fleet.start_device(device.device_id)
        assert fleet.wait_online(timeout_s=10)
        wait_until(lambda: all(d.seq >= stopped_at[d.device_id] + 3 for d in fleet.devices))
    for device in fleet.devices:
        watcher.wait_states(device.device_id, ["online", "offline", "online", "offline"])
        assert _seqs(watcher.readings[device.device_id]) == list(range(1, device.seq + 1))


@pytest.mark.parametrize("protocol", ["mqtt", "stomp"])
def test_reboot_goes_offline_and_online_again_and_seq_carries_on(
    stack: Settings, watcher: Watcher, protocol: str
) -> None:
    with Fleet(stack, count=1, protocol=protocol, interval_s=FAST_INTERVAL_S, site="plant-b") as fleet:  # type: ignore[arg-type]
        [device] = fleet.devices
        ack = watcher.ack_for(watcher.send(device.device_id, "reboot"))
        watcher.wait_states(device.device_id, ["online", "offline", "online"])
        rebooted_at = device.seq
        wait_until(lambda: device.seq >= rebooted_at + 3)
    watcher.wait_states(device.device_id, ["online", "offline", "online", "offline"])
    assert ack.status == "ok"
    assert _seqs(watcher.readings[device.device_id]) == list(range(1, device.seq + 1))


def test_refused_credentials_fail_at_once_with_the_brokers_reason(stack: Settings) -> None:
    wrong = {device: Credential(device, "not-the-password") for device in ("env-0001", "aq-0001")}
    fleet = Fleet(stack, count=2, interval_s=FAST_INTERVAL_S, credentials=wrong)
    with pytest.raises(BrokerUnavailable, match="2 of 2 devices not online"):
        fleet.start(wait_s=20.0)
    assert fleet.stats().total.online == 0


def test_devices_revoked_while_running_are_refused_and_the_rest_of_the_fleet_carries_on(stack: Settings) -> None:
    fleet_credentials(stack, 3, kinds=["vibration"])
    with Fleet(stack, count=3, kinds=["vibration"], interval_s=FAST_INTERVAL_S, site="plant-rv") as fleet:
        protocols = {d.device_id: d.protocol for d in fleet.devices}
        revoked = ["vib-0001", "vib-0002"]
        assert {protocols[d] for d in revoked} == {"mqtt", "stomp"}
        try:
            revoke(stack, revoked)
        finally:
            forget_credentials(stack.credentials_path, revoked)
        wait_until(lambda: fleet.stats().total.refused == 2, 20)
        kept = fleet.device("vib-0003").seq
        wait_until(lambda: fleet.device("vib-0003").seq > kept + 5)
        assert fleet.is_online("vib-0003") and not fleet.is_online("vib-0001")
        stats = fleet.stats()
    assert {name: row.refused for name, row in stats.by_protocol.items()} == {"mqtt": 1, "stomp": 1}
    assert stats.total.online == 1
