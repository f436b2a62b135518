"""What TLS costs: the same measurements over the plain listeners and over TLS, in one run.

    python -m bench.tls_cost [--devices 1000] [--readings 30000] [--publishers 2] [--rounds 1]

Starts its own stack (RabbitMQ + influxd on free ports in a temporary directory; the stack's
development CA) and measures, plain then TLS, `--rounds` times:

1. the simulator's connect time: `devices.fleet.Fleet` with `--devices` devices (mixed MQTT and
   STOMP) from start until every device is online (connected and subscribed to its commands),
   with the simulator's and the broker's CPU seconds spent on it;
2. the hub end to end: `python -m hub run` (all services, AMQP or AMQPS) stores `--readings`
   readings that `--publishers` MQTT (or MQTTS) connections publish with QoS 1; readings/s from
   the first publish until the last is queryable in InfluxDB.

The plain figures are the ceiling the TLS ones stand beside (same machine, same stack, same run).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import bench_stack, broker_pid, running_hub
from bench.load import (
    create_gateway,
    influx_count,
    start_publishers,
)
from bench.procstat import cpu_seconds
from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.control.identity import provision_into
from hub.core.config import Settings, over_tls
from hub.core.signals import interrupt_on_stop_signals

console = Console()

#: The simulated devices barely publish while connecting: the connect is what is measured.
FLEET_INTERVAL_S = 60.0
FLEET_CONNECT_WAIT_S = 300.0
#: How often the stored count is read (the resolution of the end-to-end phase's end time).
COUNT_POLL_S = 0.2
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class Connects:
    seconds: float
    sim_cpu_s: float
    broker_cpu_s: float


@dataclass(frozen=True)
class EndToEnd:
    per_s: float
    hub_cpu_s: float
    broker_cpu_s: float


def variant(settings: Settings, tls: bool) -> Settings:
    return over_tls(settings) if tls else settings


# --- 1. the simulator's connect time -------------------------------------------------------------


def fleet_connects(settings: Settings, devices: int, label: str, broker_pid: int) -> Connects:
    # Credentials first (one definitions import), so the connect time is the fleet's alone.
    provision_into(
        settings, [spec.device_id for spec in plan_fleet(devices, protocol="mixed")], settings.credentials_path
    )
    fleet = Fleet(settings, count=devices, protocol="mixed", interval_s=FLEET_INTERVAL_S, site=label, seed=1)
    cpu, broker, started = _own_cpu_s(), cpu_seconds(broker_pid), time.monotonic()
    try:
        fleet.start(wait_s=FLEET_CONNECT_WAIT_S)
        result = Connects(time.monotonic() - started, _own_cpu_s() - cpu, cpu_seconds(broker_pid) - broker)
    finally:
        fleet.close()
    console.print(f"  {label}: {devices} devices online in {result.seconds:.1f} s")
    return result


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


# --- 2. the hub end to end -----------------------------------------------------------------------


def hub_end_to_end(
    settings: Settings, prefix: str, devices: int, per_device: int, publishers: int, log: Path, broker_pid: int
) -> EndToEnd:
    total = devices * per_device
    with running_hub(settings, log, env={"IOT_TLS_CA": str(settings.tls_ca_file)}) as hub:
        cpu, broker, started = cpu_seconds(hub.pid), cpu_seconds(broker_pid), time.monotonic()
        procs = start_publishers(settings, prefix, devices, per_device, publishers)
        stored, last_report = 0, started
        query = f"SELECT count(seq) FROM environment WHERE device =~ /^{prefix}-/"
        while stored < total:
            time.sleep(COUNT_POLL_S)
            stored = influx_count(settings, query)
            hub.check()
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = time.monotonic()
                console.print(f"  {prefix}: {stored:>8} / {total} stored, {stored / (last_report - started):8.0f}/s")
        elapsed = time.monotonic() - started
        result = EndToEnd(total / elapsed, cpu_seconds(hub.pid) - cpu, cpu_seconds(broker_pid) - broker)
        for proc in procs:
            proc.join()
    console.print(f"  {prefix}: {total} stored at {result.per_s:,.0f}/s")
    return result


# --- the run -------------------------------------------------------------------------------------


def report(
    connects: dict[str, list[Connects]], flows: dict[str, list[EndToEnd]], devices: int, total: int, senders: int
) -> Table:
    table = Table(title=f"TLS cost: {devices} simulated devices connecting; {total} readings end to end")
    for column in ("measure", "plain", "TLS", "TLS / plain"):
        table.add_column(column, justify="left" if column == "measure" else "right")

    def row(name: str, plain: float, tls: float, unit: str) -> None:
        table.add_row(name, f"{plain:,.1f}{unit}", f"{tls:,.1f}{unit}", f"{tls / plain:.0%}" if plain else "-")

    for index in range(len(connects["plain"])):
        plain, tls = connects["plain"][index], connects["tls"][index]
        round_note = f" (round {index + 1})" if len(connects["plain"]) > 1 else ""
        row(f"simulator: {devices} devices online{round_note}", plain.seconds, tls.seconds, " s")
        row("  simulator CPU while connecting", plain.sim_cpu_s, tls.sim_cpu_s, " s")
        row("  broker CPU while connecting", plain.broker_cpu_s, tls.broker_cpu_s, " s")
        e2e_plain, e2e_tls = flows["plain"][index], flows["tls"][index]
        row(
            f"hub end to end, readings/s ({senders} MQTT publishers){round_note}",
            e2e_plain.per_s,
            e2e_tls.per_s,
            "",
        )
        row("  broker CPU per reading", 1e6 * e2e_plain.broker_cpu_s / total, 1e6 * e2e_tls.broker_cpu_s / total, " µs")
        row("  hub CPU per reading", 1e6 * e2e_plain.hub_cpu_s / total, 1e6 * e2e_tls.hub_cpu_s / total, " µs")
    return table


def main() -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices that connect")
    parser.add_argument("--readings", type=int, default=30_000, help="readings per end-to-end phase")
    parser.add_argument("--publishers", type=int, default=2, help="MQTT connections publishing them")
    parser.add_argument("--rounds", type=int, default=1, help="plain then TLS, this many times")
    args = parser.parse_args()
    # stomp.py warns when a closed TLS socket will not unwrap; devices.sim silences it the same way.
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)
    readers = 200  # devices the end-to-end readings are spread over (as bench.hub_throughput)
    per_device = max(1, args.readings // readers)
    total = per_device * readers

    connects: dict[str, list[Connects]] = {"plain": [], "tls": []}
    flows: dict[str, list[EndToEnd]] = {"plain": [], "tls": []}
    with bench_stack("tls-cost-", console.print) as bench:
        settings, root = bench.settings, bench.root
        create_gateway(settings)
        beam = broker_pid(bench.stack.root)
        for round_index in range(args.rounds):
            for mode in ("plain", "tls"):
                over = variant(settings, mode == "tls")
                label = f"{mode}{round_index}"
                console.print(f"[bold]{mode}: {args.devices} simulated devices connect[/]")
                connects[mode].append(fleet_connects(over, args.devices, label, beam))
                console.print(f"[bold]{mode}: the hub stores {total} readings[/]")
                flows[mode].append(
                    hub_end_to_end(over, label, readers, per_device, args.publishers, root / f"hub-{label}.log", beam)
                )
    console.print(report(connects, flows, args.devices, total, args.publishers))
    # The rates move with whatever else the machine runs; CPU per reading moves much less.
    console.print(f"load average at the end (1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
