"""A node loss on a three-node cluster: how long until readings are stored again, and the backlog drained.

    python -m bench.cluster_failover [--devices 60] [--interval 0.5] [--before 10] [--after 20]

Starts its own cluster (`stack up --nodes 3` on free ports in a temporary directory), `python -m
hub run` and a mixed MQTT/STOMP fleet, lets them run `--before` seconds, SIGKILLs the node that
leads `hub.telemetry.0`, keeps the load on for `--after` seconds, then stops the fleet and waits until
every reading is stored. It measures, from the kill:

- first stored: the first reading made after the kill is queryable in InfluxDB;
- backlog drained: every reading made before the kill is queryable;

beside the steady rate stored before the kill (the ceiling, same run), and checks that every
(device, seq) is stored exactly once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.hub_throughput import REPO, influx_count
from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.clients import influx
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.stack.cluster import started_on_free_ports

console = Console()
NODES = 3
#: How often InfluxDB is asked (the resolution of the measured times).
POLL_S = 0.25
HUB_START_WAIT_S = 60.0
#: `hub run` logs `event=consuming` once per service: telemetry, presence, commands.
HUB_SERVICES = 3
#: The node that leads this queue is killed: a telemetry partition, so readings of its devices wait.
VICTIM_QUEUE = "hub.telemetry.0"
DRAIN_WAIT_S = 120.0


def stored_before(settings: Settings, at_ms: int) -> int:
    return influx_count(settings, f"SELECT count(seq) FROM /.*/ WHERE time <= {at_ms}ms")


def stored_after(settings: Settings, at_ms: int) -> int:
    return influx_count(settings, f"SELECT count(seq) FROM /.*/ WHERE time > {at_ms}ms")


def start_hub(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env.update(
        IOT_AMQP_URL=settings.amqp_url,
        IOT_INFLUX_URL=settings.influx_url,
        IOT_METRICS_PORT="0",
        IOT_RULES_FILE=str(REPO / "rules.yaml"),
    )
    with open(log, "wb") as out:
        hub = subprocess.Popen([sys.executable, "-m", "hub", "run"], cwd=REPO, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + HUB_START_WAIT_S
    while log.read_text().count("event=consuming") < HUB_SERVICES:
        if hub.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the hub did not start consuming: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return hub


def duplicates_and_gaps(settings: Settings, fleet: Fleet) -> tuple[int, int]:
    duplicates = gaps = 0
    for device in fleet.devices:
        [series] = influx.query(settings, f"SELECT seq FROM \"{device.kind}\" WHERE device = '{device.device_id}'")
        seqs = [int(row["seq"]) for one in series for row in one.rows]
        duplicates += len(seqs) - len(set(seqs))
        gaps += len(set(range(1, device.seq + 1)) - set(seqs))
    return duplicates, gaps


def run(args: argparse.Namespace, root: Path) -> None:
    folders = iter(root / f"try-{attempt}" for attempt in range(1, 100))
    settings, cluster, up_s = started_on_free_ports(
        lambda: next(folders), NODES, lambda message: console.print(f"  {message}")
    )
    provision_into(settings, [spec.device_id for spec in plan_fleet(args.devices)], settings.credentials_path)
    hub = start_hub(settings, root / "hub.log")
    try:
        with Fleet(settings, count=args.devices, protocol="mixed", interval_s=args.interval, seed=15) as fleet:
            time.sleep(args.before / 2)
            steady_from, steady_count = time.monotonic(), stored_before(settings, now_ms())
            time.sleep(args.before / 2)
            steady = (stored_before(settings, now_ms()) - steady_count) / (time.monotonic() - steady_from)
            leaders = {q.name: q.leader for q in cluster.status().queues}
            names = [cluster.node(i).node_name for i in range(NODES)]
            victim = names.index(leaders[VICTIM_QUEUE])
            made_before = sum(device.seq for device in fleet.devices)
            killed_ms, killed = now_ms(), time.monotonic()
            os.killpg(cluster.node_pids()[victim], signal.SIGKILL)
            console.print(f"killed node {victim} ({names[victim]}, leader of {VICTIM_QUEUE})")
            first_s = drained_s = None
            while time.monotonic() - killed < args.after or first_s is None or drained_s is None:
                if first_s is None and stored_after(settings, killed_ms):
                    first_s = time.monotonic() - killed
                if drained_s is None and stored_before(settings, killed_ms) >= made_before:
                    drained_s = time.monotonic() - killed
                if time.monotonic() - killed > args.after + DRAIN_WAIT_S:
                    raise SystemExit("readings not stored within the wait; see the hub's log " + str(root))
                time.sleep(POLL_S)
        made = sum(device.seq for device in fleet.devices)
        deadline = time.monotonic() + DRAIN_WAIT_S
        while stored_before(settings, now_ms()) < made and time.monotonic() < deadline:
            time.sleep(POLL_S)
        duplicates, gaps = duplicates_and_gaps(settings, fleet)
        alive = hub.poll() is None
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(60)
        cluster.down()
    table = Table(title=f"node loss: {args.devices} devices (mixed), one reading each {args.interval} s")
    for column in ("measure", "value"):
        table.add_column(column)
    table.add_row("3-node cluster up (start to quorum queues on every node)", f"{up_s:.1f} s")
    table.add_row("stored before the kill (steady, the ceiling)", f"{steady:.0f} readings/s")
    table.add_row("first reading made after the kill stored", f"{first_s:.1f} s after the kill")
    table.add_row(f"backlog drained ({made_before} readings made before the kill)", f"{drained_s:.1f} s after the kill")
    table.add_row("readings made / duplicates / missing", f"{made} / {duplicates} / {gaps}")
    table.add_row("hub process ran through it", "yes" if alive else "no")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a device's readings")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of load after the kill")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cluster-failover-") as root:
        run(args, Path(root))


if __name__ == "__main__":
    main()
