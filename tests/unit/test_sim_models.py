"""The simulator's functional core, without a broker: physics, faults, commands, buffer, backoff, fleet plan."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from devices.device import DeviceSpec, SimulatedDevice, plan_fleet
from devices.faults import FaultInjector
from devices.models import AirQuality, Environment, PowerMeter, SensorModel, Thermostat
from devices.outbox import Outbox
from devices.stats import LagRecorder, LagSummary
from hub.core.backoff import Backoff, BackoffPolicy
from hub.core.contract import Command, decode_reading, encode, require_identifier
from hub.core.errors import ConfigError, InvalidIdentifier
from hub.core.models import CLEAN, default_models, load_models

#: 2026-11-23 00:00 UTC: a fixed day so the daily cycle is the same in every run.
MIDNIGHT_S = 1_795_392_000.0
HOUR_S = 3_600.0


def _run(model: SensorModel, start_s: float, seconds: float, step_s: float) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    t = start_s
    while t < start_s + seconds:
        t += step_s
        samples.append(model.sample(t))
    return samples


def test_thermostat_temperature_follows_a_raised_then_lowered_setpoint() -> None:
    start = MIDNIGHT_S + 10 * HOUR_S
    room = Thermostat(random.Random(1), start)
    room.actuate("set_setpoint", {"value": 26.0})
    warming = _run(room, start, 30 * 60, 10.0)
    assert warming[0]["heating"] is True
    assert 25.0 <= warming[-1]["temperature"] <= 27.0
    assert any(sample["heating"] is False for sample in warming[-60:]), "the heater cycles around the setpoint"

    room.actuate("set_setpoint", {"value": 15.0})
    cooling = _run(room, start + 30 * 60, 3 * HOUR_S, 10.0)
    assert cooling[0]["heating"] is False
    assert cooling[-1]["temperature"] < warming[-1]["temperature"] - 4.0
    assert all(sample["setpoint"] == 15.0 for sample in cooling)


def test_power_meter_energy_only_rises_even_with_faults_and_the_relay_off() -> None:
    meter = PowerMeter(random.Random(2), MIDNIGHT_S)
    faults = FaultInjector(random.Random(3), rate=0.2)
    energies = []
    for index in range(2_000):
        if index == 500:
            meter.actuate("set_relay", {"on": False})
        if index == 900:
            meter.actuate("set_relay", {"on": True})
        values = faults.apply(meter.sample(MIDNIGHT_S + index * 60.0))
        if values is not None:
            energies.append(values["energy"])
    assert all(float(later) >= float(earlier) for earlier, later in itertools.pairwise(energies))
    assert energies[-1] > energies[0]


def test_relay_off_drops_power_and_current_to_zero_and_stops_the_energy_counter() -> None:
    start = MIDNIGHT_S + 12 * HOUR_S
    meter = PowerMeter(random.Random(4), start)
    on = meter.sample(start + 1.0)
    meter.actuate("set_relay", {"on": False})
    off = _run(meter, start + 1.0, 600.0, 1.0)
    assert on["power"] > 100.0
    assert all(sample["power"] == 0.0 and sample["current"] == 0.0 and sample["relay"] is False for sample in off)
    assert off[-1]["energy"] == pytest.approx(on["energy"], abs=1e-3)
    assert 220.0 < off[-1]["voltage"] < 240.0


def test_ventilation_clears_co2_and_voc_that_build_up_during_the_working_day() -> None:
    start = MIDNIGHT_S + 9 * HOUR_S
    closed = AirQuality(random.Random(5), start)
    ventilated = AirQuality(random.Random(5), start)
    ventilated.actuate("set_ventilation", {"on": True})
    stale = _run(closed, start, 4 * HOUR_S, 30.0)[-1]
    fresh = _run(ventilated, start, 4 * HOUR_S, 30.0)[-1]
    assert stale["co2"] > 1_000.0
    assert fresh["co2"] < stale["co2"] - 300.0
    assert fresh["voc"] < stale["voc"]
    assert fresh["ventilation"] is True and stale["ventilation"] is False


def test_environment_is_warmer_in_the_afternoon_than_before_dawn() -> None:
    room = Environment(random.Random(6), MIDNIGHT_S)
    day = _run(room, MIDNIGHT_S, 24 * HOUR_S, 60.0)
    night = [s["temperature"] for s in day[2 * 60 : 5 * 60]]
    afternoon = [s["temperature"] for s in day[14 * 60 : 17 * 60]]
    assert sum(afternoon) / len(afternoon) > sum(night) / len(night) + 2.0
    assert all(0.0 <= s["humidity"] <= 100.0 and 950.0 < s["pressure"] < 1080.0 for s in day)


def test_the_same_seed_reproduces_every_reading_and_another_seed_does_not() -> None:
    spec = DeviceSpec("env-0001", "environment", "mqtt", "plant-a")

    def readings(seed: int) -> list[bytes]:
        device = SimulatedDevice.create(spec, seed=seed, fault_rate=0.05, start_s=MIDNIGHT_S)
        made = [device.produce(int((MIDNIGHT_S + i) * 1000)) for i in range(1, 300)]
        return [encode(reading) for reading in made if reading is not None]

    assert readings(7) == readings(7)
    assert readings(7) != readings(8)


def test_fault_injection_makes_spikes_stuck_sensors_and_dropouts() -> None:
    device = SimulatedDevice.create(
        DeviceSpec("env-0001", "environment", "mqtt", "plant-a"), seed=1, fault_rate=0.05, start_s=MIDNIGHT_S
    )
    produced = [device.produce(int((MIDNIGHT_S + i) * 1000)) for i in range(1, 3_000)]
    readings = [r for r in produced if r is not None]
    counts = device.faults.counts
    assert counts.spike > 0 and counts.stuck > 0 and counts.dropout > 0
    assert len(readings) < len(produced), "dropouts leave readings out"
    assert [r.seq for r in readings] == list(range(1, len(readings) + 1)), "a dropout is silence, not a seq gap"
    temperatures = [float(r.readings["temperature"]) for r in readings]
    assert max(temperatures) - min(temperatures) > 20.0, "a spike stands out from the daily cycle"
    runs = max(_longest_repeat([float(r.readings[name]) for r in readings]) for name in ("humidity", "pressure"))
    assert runs >= 10, "a stuck sensor repeats its value"


def _longest_repeat(values: list[float]) -> int:
    best = current = 1
    for earlier, later in itertools.pairwise(values):
        current = current + 1 if later == earlier else 1
        best = max(best, current)
    return best


def test_without_a_fault_rate_no_reading_is_altered() -> None:
    spec = DeviceSpec("pm-0001", "power_meter", "stomp", "plant-a")
    device = SimulatedDevice.create(spec, seed=3, start_s=MIDNIGHT_S)
    readings = [device.produce(int((MIDNIGHT_S + i) * 1000)) for i in range(1, 500)]
    assert all(r is not None for r in readings)
    assert device.faults.counts.spike == device.faults.counts.stuck == device.faults.counts.dropout == 0


def test_every_kind_produces_contract_valid_readings_of_its_declared_sensors() -> None:
    models = default_models()
    for index, spec in enumerate(plan_fleet(8)):
        device = SimulatedDevice.create(spec, seed=index, start_s=MIDNIGHT_S)
        reading = device.produce(int(MIDNIGHT_S * 1000) + 1_000)
        assert reading is not None
        decoded = decode_reading(encode(reading), reading.routing_key)
        assert list(decoded.readings) == list(models.kinds[spec.kind].sensors)
        assert models.check(decoded).clean
    assert {s.kind for s in plan_fleet(4)} == {"environment", "air_quality", "power_meter", "thermostat"}


def test_a_kind_declared_only_in_the_models_produces_its_declared_sensors_inside_their_ranges() -> None:
    models = default_models()
    specs = plan_fleet(2, kinds=["vibration"])
    assert [s.device_id for s in specs] == ["vib-0001", "vib-0002"]
    for spec in specs:
        device = SimulatedDevice.create(spec, seed=3, start_s=MIDNIGHT_S)
        made = [device.produce(int((MIDNIGHT_S + i * 60.0) * 1000)) for i in range(1, 24 * 60 + 1)]
        readings = [decode_reading(encode(r), r.routing_key) for r in made if r is not None]
        assert len(readings) == len(made)
        assert all(list(r.readings) == ["rms", "peak"] and models.check(r) is CLEAN for r in readings)
        rms = [float(r.readings["rms"]) for r in readings]
        assert max(rms) - min(rms) > 0.5 and len(set(rms)) > 100, "it wanders, it is not a constant"


def test_a_generic_device_is_reproducible_with_a_seed() -> None:
    spec = plan_fleet(1, kinds=["vibration"])[0]

    def readings(seed: int) -> list[bytes]:
        device = SimulatedDevice.create(spec, seed=seed, start_s=MIDNIGHT_S)
        made = [device.produce(int((MIDNIGHT_S + i) * 1000)) for i in range(1, 200)]
        return [encode(reading) for reading in made if reading is not None]

    assert readings(7) == readings(7)
    assert readings(7) != readings(8)


def test_a_generic_switch_holds_most_of_the_time_and_is_reported_as_state(tmp_path: Path) -> None:
    extra = tmp_path / "tank.yaml"
    extra.write_text(
        "kinds:\n  tank:\n    prefix: tank\n    actuators: [pump]\n    sensors:\n"
        "      level: {unit: '%', type: number, range: [0, 100], typical: [40, 60]}\n"
        "      pump: {unit: on/off, type: boolean}\n"
    )
    models = load_models(extra)
    [spec] = plan_fleet(1, kinds=["tank"], models=models)
    device = SimulatedDevice.create(spec, seed=1, start_s=MIDNIGHT_S, models=models)
    made = [device.produce(int((MIDNIGHT_S + i * 60.0) * 1000)) for i in range(1, 24 * 60 + 1)]
    pumps = [r.readings["pump"] for r in made if r is not None]
    toggles = sum(a != b for a, b in itertools.pairwise(pumps))
    assert 3 <= toggles <= 100, toggles
    assert all(0.0 <= float(r.readings["level"]) <= 100.0 for r in made if r is not None)
    assert device.state() == {"interval_ms": 1000, "pump": pumps[-1]}


# --- commands --------------------------------------------------------------------------------------


def _command(name: str, args: dict[str, bool | int | float | str] | None = None, expires_in_ms: int = 10_000) -> bytes:
    at = int(MIDNIGHT_S * 1000)
    return encode(Command(id=f"c-{name}", command=name, args=args or {}, ts=at, expires=at + expires_in_ms))


def _device(kind: str) -> SimulatedDevice:
    [spec] = [s for s in plan_fleet(5, kinds=list(default_models().kinds)) if s.kind == kind]
    return SimulatedDevice.create(spec, seed=1, start_s=MIDNIGHT_S)


@pytest.mark.parametrize(
    ("kind", "command", "args", "status", "state"),
    [
        ("environment", "ping", {}, "ok", {"interval_ms": 1000}),
        ("environment", "set_interval", {"ms": 5000}, "ok", {"interval_ms": 5000}),
        ("environment", "set_interval", {"ms": 50}, "error", {"interval_ms": 1000}),
        ("environment", "set_interval", {"ms": "fast"}, "error", {"interval_ms": 1000}),
        ("thermostat", "set_setpoint", {"value": 23.5}, "ok", {"setpoint": 23.5}),
        ("thermostat", "set_setpoint", {"value": 80}, "error", {"setpoint": 21.0}),
        ("power_meter", "set_relay", {"on": False}, "ok", {"relay": False}),
        ("power_meter", "set_relay", {"on": "yes"}, "error", {"relay": True}),
        ("air_quality", "set_ventilation", {"on": True}, "ok", {"ventilation": True}),
        ("environment", "set_setpoint", {"value": 20}, "unsupported", {"interval_ms": 1000}),
        ("thermostat", "self_destruct", {}, "unsupported", {"setpoint": 21.0}),
        ("vibration", "ping", {}, "ok", {"interval_ms": 1000}),
        ("vibration", "set_interval", {"ms": 250}, "ok", {"interval_ms": 250}),
        ("vibration", "set_relay", {"on": False}, "unsupported", {"interval_ms": 1000}),
    ],
)
def test_a_command_is_answered_with_its_outcome_and_the_new_state(
    kind: str, command: str, args: dict[str, bool | int | float | str], status: str, state: dict[str, object]
) -> None:
    device = _device(kind)
    outcome = device.handle_command(_command(command, args), at_ms=int(MIDNIGHT_S * 1000) + 5)
    assert outcome is not None
    assert (outcome.ack.id, outcome.ack.device, outcome.ack.status) == (f"c-{command}", device.device_id, status)
    assert outcome.ack.state.items() >= state.items()
    if status != "ok":
        assert outcome.ack.detail


def test_a_refused_command_says_why_in_the_words_of_the_models() -> None:
    outcome = _device("thermostat").handle_command(_command("set_setpoint", {"value": 80}), int(MIDNIGHT_S * 1000))
    assert outcome is not None and outcome.ack.status == "error"
    assert outcome.ack.detail == "set_setpoint: argument 'value' must be a number from 5 to 35 (got 80)"
    outcome = _device("environment").handle_command(_command("set_setpoint", {"value": 20}), int(MIDNIGHT_S * 1000))
    assert outcome is not None and outcome.ack.detail == "set_setpoint is for thermostat devices, this is environment"


def test_an_expired_command_is_refused_and_changes_nothing() -> None:
    device = _device("thermostat")
    body = _command("set_setpoint", {"value": 30.0}, expires_in_ms=100)
    outcome = device.handle_command(body, at_ms=int(MIDNIGHT_S * 1000) + 5_000)
    assert outcome is not None and outcome.ack.status == "expired"
    assert device.model.state()["setpoint"] == 21.0


def test_reboot_is_acknowledged_before_the_device_goes_down() -> None:
    outcome = _device("power_meter").handle_command(_command("reboot"), at_ms=int(MIDNIGHT_S * 1000))
    assert outcome is not None and outcome.ack.status == "ok" and outcome.reboot


def test_a_malformed_command_gets_an_error_ack_if_it_has_an_id_and_is_dropped_otherwise() -> None:
    device = _device("environment")
    outcome = device.handle_command(b'{"id":"abc","command":"ping"}')
    assert outcome is not None and outcome.ack.status == "error" and "invalid command" in outcome.ack.detail
    assert device.handle_command(b"not json") is None
    assert device.bad_commands == 2


# --- fleet plan, buffer, backoff ---------------------------------------------------------------


def test_fleet_plan_numbers_each_kind_and_mixes_protocols_within_every_kind() -> None:
    specs = plan_fleet(50, site="plant-b")
    ids = [s.device_id for s in specs]
    assert ids[:5] == ["env-0001", "aq-0001", "pm-0001", "th-0001", "env-0002"]
    assert len(set(ids)) == 50 and all(require_identifier(i) for i in ids)
    for kind in ("environment", "air_quality", "power_meter", "thermostat"):
        assert {s.protocol for s in specs if s.kind == kind} == {"mqtt", "stomp"}
    assert {s.protocol for s in plan_fleet(4)} == {"mqtt", "stomp"}
    for kinds in (["vibration"], ["environment", "thermostat", "vibration"]):
        specs = plan_fleet(4 * len(kinds), kinds=kinds)
        for kind in kinds:
            protocols = [s.protocol for s in specs if s.kind == kind]
            assert all(a != b for a, b in itertools.pairwise(protocols)), (kinds, kind, protocols)
    assert {s.protocol for s in plan_fleet(6, protocol="stomp")} == {"stomp"}


def test_fleet_plan_refuses_bad_sites_kinds_and_counts() -> None:
    with pytest.raises(InvalidIdentifier):
        plan_fleet(2, site="plant a")
    with pytest.raises(ConfigError, match="toaster"):
        plan_fleet(2, kinds=["toaster"])
    with pytest.raises(ConfigError):
        plan_fleet(0)


def test_outbox_resends_unconfirmed_readings_in_order_and_drops_the_oldest_when_full() -> None:
    outbox = Outbox(capacity=5, window=3)
    for seq in range(1, 5):
        outbox.add(seq, b"%d" % seq)
    handed = list(outbox.sendable())
    assert [seq for seq, _ in handed] == [1, 2, 3]
    for token, entry in enumerate(handed):
        outbox.sent(token, entry)
    assert outbox.confirm(1) and not outbox.confirm(1)
    assert outbox.requeue_in_flight() == 2
    assert outbox.seqs() == [1, 3, 4]
    for seq in range(5, 9):
        outbox.add(seq, b"%d" % seq)
    assert outbox.seqs() == [4, 5, 6, 7, 8] and outbox.dropped == 2
    assert [seq for seq, _ in outbox.sendable()] == [4, 5, 6]


def test_backoff_grows_to_its_cap_with_jitter_and_starts_over_after_reset() -> None:
    backoff = Backoff(BackoffPolicy(first_s=0.5, max_s=8.0), random.Random(1))
    delays = [backoff.next_delay_s() for _ in range(8)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(4.0 <= d <= 8.0 for d in delays[5:])
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay_s() <= 0.5


def test_lag_summary_percentiles_match_the_samples_within_the_histogram_resolution() -> None:
    recorder = LagRecorder()
    rng = random.Random(9)
    samples = [rng.expovariate(1_000.0) for _ in range(20_000)]
    for lag in samples:
        recorder.add(lag)
    exact = LagSummary.of(samples)
    summary = recorder.summary()
    assert summary.samples == 20_000 and summary.max_ms == exact.max_ms
    assert summary.p50_ms == pytest.approx(exact.p50_ms, rel=0.05)
    assert summary.p99_ms == pytest.approx(exact.p99_ms, rel=0.05)
    assert recorder.take_recent() == samples and recorder.take_recent() == []


def test_readings_due_in_one_millisecond_get_distinct_timestamps() -> None:
    """A late event loop fires several due readings at once: one ms apart, or InfluxDB keeps only one."""
    device = SimulatedDevice.create(DeviceSpec("env-0001", "environment", "mqtt", "plant-a"), seed=1)
    at = int(MIDNIGHT_S * 1000)
    made = [device.produce(at) for _ in range(3)]
    assert [(r.seq, r.ts) for r in made if r is not None] == [(1, at), (2, at + 1), (3, at + 2)]
    later = device.produce(at + 1_000)
    assert later is not None and later.ts == at + 1_000, "a reading on time keeps its own time"
