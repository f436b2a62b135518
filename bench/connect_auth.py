"""What the broker auth service costs per connect: `python -m bench.connect_auth`.

One stack (RabbitMQ + InfluxDB + the auth service, on free ports in a temporary folder) and one
fleet of `--devices` MQTT devices (10,000 by default, one reading an hour: connects only). The
fleet connects and disconnects once per phase, the node restarted before each phase with the client-id
check on (IOT_BROKER_AUTH=true: every login also asks hub/brokerauth) or off (passwords and
permissions alone), alternately, so each figure has its ceiling from the same run beside it.
Reported per phase: the seconds until every device was online, connects per second, the broker's
and the auth service's CPU per connect, and the questions the service answered per connect.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.harness import bench_stack
from bench.procstat import cpu_seconds, group_pids, usage
from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.clients.management import read_broker_version
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.limits import raise_open_files_limit
from hub.core.signals import interrupt_on_stop_signals
from hub.stack.stack import BROKER_AUTH, RABBITMQ, Stack

DEVICES = 10_000
#: One reading an hour: the phase measures connects, not telemetry.
INTERVAL_S = 3600.0
#: Phases: on, off, on, off... (`--rounds` pairs).
ROUNDS = 2
#: A phase gives up when no device came online for this long.
STALL_S = 60.0
PROGRESS_S = 0.5
SITE = "connect-bench"


@dataclass(frozen=True)
class Phase:
    broker_auth: bool
    devices: int
    online: int
    connect_s: float
    broker_cpu_s: float
    service_cpu_s: float
    answers: int

    @property
    def per_s(self) -> float:
        return self.online / self.connect_s if self.connect_s else 0.0

    def per_connect_ms(self, cpu_s: float) -> float:
        return 1000.0 * cpu_s / self.online if self.online else 0.0


def _pid(stack: Stack, name: str) -> int:
    return next(s.pid for s in stack.status().services if s.name == name)


def run_phase(settings: Settings, broker_auth: bool, devices: int, live: Live) -> Phase:
    """Restart the node with the check on or off, then connect the fleet once and measure it."""
    phase_settings = settings.model_copy(update={"broker_auth": broker_auth})
    stack = Stack(phase_settings)
    label = "check on" if broker_auth else "check off"
    live.update(f"{label}: restarting the broker")
    stack.kill(RABBITMQ)
    stack.up()
    broker = group_pids(_pid(stack, RABBITMQ))
    service = stack.broker_auth()
    # With the check off the service may still run (from an earlier phase): the node asks it nothing.
    service_pid = _pid(stack, BROKER_AUTH)
    fleet = Fleet(phase_settings, count=devices, protocol="mqtt", interval_s=INTERVAL_S, site=SITE, seed=7)
    answers_before = sum((service.counts() or {}).values()) if service else 0
    broker_before, service_before = usage(broker).cpu_s, cpu_seconds(service_pid)
    started = time.monotonic()
    fleet.start(wait_s=None)
    best, best_at = 0, started
    try:
        while True:
            total = fleet.stats().total
            now = time.monotonic()
            if total.online > best:
                best, best_at = total.online, now
            if total.online >= devices or now - best_at > STALL_S:
                break
            live.update(
                f"{label}: {total.online:,} of {devices:,} online, {total.errors:,} errors, {now - started:.0f} s"
            )
            time.sleep(PROGRESS_S)
        connect_s = time.monotonic() - started
        broker_cpu = usage(broker).cpu_s - broker_before
        service_cpu = cpu_seconds(service_pid) - service_before
        answers = (sum((service.counts() or {}).values()) if service else 0) - answers_before
    finally:
        live.update(f"{label}: disconnecting {devices:,} devices")
        fleet.close()
    return Phase(broker_auth, devices, best, connect_s, broker_cpu, service_cpu, answers)


def report(phases: list[Phase], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "phase",
        "online",
        "connect s",
        "connects/s",
        "x check off",
        "broker CPU ms/connect",
        "auth service CPU ms/connect",
        "service answers/connect",
    ):
        table.add_column(column, justify="left" if column == "phase" else "right")
    off = [p.per_s for p in phases if not p.broker_auth]
    ceiling = sum(off) / len(off) if off else 0.0
    for p in phases:
        table.add_row(
            "client-id check on" if p.broker_auth else "check off (ceiling)",
            f"{p.online:,} of {p.devices:,}",
            f"{p.connect_s:.1f}",
            f"{p.per_s:,.0f}",
            f"{p.per_s / ceiling:.2f}" if ceiling else "-",
            f"{p.per_connect_ms(p.broker_cpu_s):.2f}",
            f"{p.per_connect_ms(p.service_cpu_s):.2f}" if p.broker_auth else "-",
            f"{p.answers / p.online:.1f}" if p.broker_auth and p.online else "-",
        )
    return table


@click.command()
@click.option("--devices", default=DEVICES, show_default=True, help="MQTT devices that connect in each phase.")
@click.option("--rounds", default=ROUNDS, show_default=True, help="Pairs of phases: check on, then off.")
def main(devices: int, rounds: int) -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    raise_open_files_limit()
    console = Console(width=None if os.isatty(1) else 160)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    phases: list[Phase] = []
    console.print(f"load average {load_before}")
    with bench_stack("connect-auth-", console.print) as bench:
        settings = bench.settings
        ids = [spec.device_id for spec in plan_fleet(devices, protocol="mqtt", site=SITE)]
        began = time.monotonic()
        provision_into(settings, ids, settings.credentials_path)
        console.print(f"provisioned {devices:,} devices in {time.monotonic() - began:.1f} s")
        with Live(console=console, refresh_per_second=4) as live:
            for _ in range(rounds):
                for broker_auth in (True, False):
                    phases.append(run_phase(settings, broker_auth, devices, live))
            live.update("done")
        version = read_broker_version(settings) or "?"
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}"
    title = (
        f"{devices:,} MQTT devices connecting, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC: {machine}; "
        f"Python {platform.python_version()}, RabbitMQ {version}"
    )
    console.print(report(phases, title))
    console.print(
        "x check off: connects/s against the mean of the 'check off' phases of this run. "
        f"Load average (1/5/15 min) before {load_before}, after {' '.join(f'{x:.1f}' for x in os.getloadavg())}."
    )


if __name__ == "__main__":
    main()
