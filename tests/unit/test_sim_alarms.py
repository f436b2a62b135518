"""The simulator's faults raise alarms with the shipped rules, and each clears by itself once its
fault is over: what `make demo` shows (`python -m devices.sim --fault-rate`)."""

from __future__ import annotations

from devices.device import SimulatedDevice, plan_fleet
from hub.core.models import default_models
from hub.services.rules.engine import Engine
from hub.services.rules.loader import load_rules
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.stage import TelemetryStage
from tests.support import REPO

START_MS = 1_765_000_000_000


def test_without_faults_the_simulated_fleet_raises_no_alarm() -> None:
    stage = TelemetryStage(ReadingJudge(default_models()), Engine(load_rules(REPO / "rules.yaml")))
    devices = [SimulatedDevice.create(spec, seed=7, start_s=START_MS / 1000) for spec in plan_fleet(12)]
    for second in range(600):
        for device in devices:
            reading = device.produce(START_MS + second * 1000)
            assert reading is not None
            assert not stage.process(reading, "mqtt", 0).changes


def test_faults_raise_alarms_that_clear_by_themselves_once_the_faults_end() -> None:
    stage = TelemetryStage(ReadingJudge(default_models()), Engine(load_rules(REPO / "rules.yaml")))
    devices = [
        SimulatedDevice.create(spec, seed=7, fault_rate=0.03, start_s=START_MS / 1000) for spec in plan_fleet(12)
    ]
    transitions: list[str] = []

    def run(seconds: range) -> None:
        for second in seconds:
            for device in devices:
                reading = device.produce(START_MS + second * 1000)
                if reading is not None:
                    transitions.extend(c.transition for c in stage.process(reading, "mqtt", 0).changes)

    run(range(600))
    assert sum(d.faults.counts.spike + d.faults.counts.stuck for d in devices) > 50, "faults happened"
    assert transitions.count("raised") >= 10
    for device in devices:
        device.faults.rate = 0.0  # the faults end (a stuck sensor or a dropout runs its course)
    run(range(600, 700))
    assert stage.book.active() == [], "every alarm cleared once its fault was over"
    assert transitions.count("cleared") == transitions.count("raised")
