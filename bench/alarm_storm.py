"""An alert storm through the telemetry decision core: every device tripping the same rule.

    python -m bench.alarm_storm [--devices 1000] [--seconds 60]

In process, no server: `--devices` thermostats, one reading a second of device time for
`--seconds`, through the telemetry stage (the store's judge, the rules of rules.yaml and the
alarm book) twice in the same run: calm (every reading normal), then a storm (every device above
`thermostat-too-hot` the whole time). Prints, for each: readings per second of CPU, alerts, alarm
transitions (goal: one `raised` per device in the storm, not one per reading) and `alarms` rows.

What it leaves out: the broker and InfluxDB (each alarm row is a point in the reading's batch,
each transition a publish awaited with the batch's confirms): `python -m bench.hub_throughput`
measures the hub around this core.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hub.core.contract import Reading
from hub.core.models import default_models
from hub.core.signals import interrupt_on_stop_signals
from hub.services.rules.engine import Engine
from hub.services.rules.loader import load_rules
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.stage import TelemetryStage

RULES = Path(__file__).resolve().parents[1] / "rules.yaml"
START_MS = 1_765_000_000_000
CALM_C, STORM_C = 21.0, 29.0


@dataclass(frozen=True)
class Run:
    name: str
    readings: int
    cpu_s: float
    alerts: int
    transitions: Counter[str]
    rows: int

    @property
    def per_s(self) -> float:
        return self.readings / self.cpu_s if self.cpu_s else 0.0


def run(name: str, devices: int, seconds: int, temperature: float) -> Run:
    stage = TelemetryStage(ReadingJudge(default_models()), Engine(load_rules(RULES)))
    readings = [
        [
            Reading(
                device=f"th-{d:04d}", site="plant-a", kind="thermostat", seq=s, ts=START_MS + s * 1000,
                readings={"temperature": temperature + (s % 3) * 0.1, "setpoint": 21.0, "heating": False},
            )
            for d in range(devices)
        ]
        for s in range(seconds)
    ]  # fmt: skip
    alerts, rows = 0, 0
    transitions: Counter[str] = Counter()
    started = time.process_time()
    for second in readings:
        for reading in second:
            outcome = stage.process(reading, "mqtt", 0)
            alerts += len(outcome.decisions)
            rows += len(outcome.changes)
            transitions.update(change.transition for change in outcome.changes if change.published)
    return Run(name, devices * seconds, time.process_time() - started, alerts, transitions, rows)


def main() -> None:
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    console = Console()
    runs = []
    for name, temperature in (("calm", CALM_C), ("storm", STORM_C)):
        console.print(f"{name}: {args.devices} devices × {args.seconds} s …")
        runs.append(run(name, args.devices, args.seconds, temperature))
    table = Table(title=f"alert storm through the decision core: {args.devices} devices, {args.seconds} s")
    for column in ("run", "readings", "readings/s (CPU)", "alerts", "raised", "other transitions", "alarms rows"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for one in runs:
        other = sum(n for t, n in one.transitions.items() if t != "raised")
        table.add_row(
            one.name, f"{one.readings:,}", f"{one.per_s:,.0f}", f"{one.alerts:,}", f"{one.transitions['raised']:,}",
            f"{other:,}", f"{one.rows:,}",
        )  # fmt: skip
    console.print(table)
    calm, storm = runs
    console.print(
        f"the storm: {storm.transitions['raised'] / args.devices:.2f} raise per device "
        f"(of {args.seconds} readings each); the core's rate {storm.per_s / calm.per_s:.0%} of its calm rate"
    )


if __name__ == "__main__":
    main()
