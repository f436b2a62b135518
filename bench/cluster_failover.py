"""A node loss on a three-node cluster: how long until readings are stored again, and the backlog drained.

    python -m bench.cluster_failover [--devices 60] [--interval 0.5] [--before 10] [--after 20]

Starts its own cluster (`stack up --nodes 3` on free ports in a temporary directory), `python -m
hub run` and a mixed MQTT/STOMP fleet, lets them run `--before` seconds, SIGKILLs the node that
leads the busiest queue (the one that received the most messages: a telemetry queue, whatever its
name), keeps the load on for `--after` seconds, then stops the fleet and waits until every reading
is stored. It measures, from the kill:

- first stored: the first reading made after the kill is queryable in InfluxDB;
- backlog drained: every reading made before the kill is queryable;

beside the steady rate stored before the kill (the ceiling, same run), and checks that every
(device, seq) is stored exactly once. `bench.cluster_compare` runs the same drill (`node_loss`)
after its own measurements on its cluster.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import HubProcess, running_hub, started_cluster
from bench.load import influx_count
from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.clients import influx
from hub.clients.management import read_published_counts
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.signals import interrupt_on_stop_signals
from hub.stack.cluster import Cluster

console = Console()
NODES = 3
#: How often InfluxDB is asked (the resolution of the measured times).
POLL_S = 0.25
DRAIN_WAIT_S = 120.0
#: The site of the drill's devices: its readings are counted apart from anything else the stack holds.
SITE = "node-loss"


@dataclass(frozen=True)
class NodeLoss:
    """What one node loss under load measured."""

    devices: int
    interval_s: float
    victim: str
    busiest_queue: str
    steady_per_s: float
    first_stored_s: float
    drained_s: float
    made_before: int
    made: int
    duplicates: int
    missing: int
    hub_alive: bool

    def rows(self) -> list[tuple[str, str]]:
        return [
            (f"node killed (leader of {self.busiest_queue}, the busiest queue)", self.victim),
            ("stored before the kill (steady, the ceiling)", f"{self.steady_per_s:.0f} readings/s"),
            ("first reading made after the kill stored", f"{self.first_stored_s:.1f} s after the kill"),
            (
                f"backlog drained ({self.made_before} readings made before the kill)",
                f"{self.drained_s:.1f} s after the kill",
            ),
            ("readings made / duplicates / missing", f"{self.made} / {self.duplicates} / {self.missing}"),
            ("hub process ran through it", "yes" if self.hub_alive else "no"),
        ]


def stored_before(settings: Settings, at_ms: int) -> int:
    return influx_count(settings, f"SELECT count(seq) FROM /.*/ WHERE site = '{SITE}' AND time <= {at_ms}ms")


def stored_after(settings: Settings, at_ms: int) -> int:
    return influx_count(settings, f"SELECT count(seq) FROM /.*/ WHERE site = '{SITE}' AND time > {at_ms}ms")


def duplicates_and_gaps(settings: Settings, fleet: Fleet) -> tuple[int, int]:
    duplicates = gaps = 0
    for device in fleet.devices:
        [series] = influx.query(
            settings, f"SELECT seq FROM \"{device.kind}\" WHERE site = '{SITE}' AND device = '{device.device_id}'"
        )
        seqs = [int(row["seq"]) for one in series for row in one.rows]
        duplicates += len(seqs) - len(set(seqs))
        gaps += len(set(range(1, device.seq + 1)) - set(seqs))
    return duplicates, gaps


def busiest_leader(settings: Settings, cluster: Cluster) -> tuple[int, str]:
    """The index of the node leading the quorum queue that received the most messages, and that queue.

    Judged by traffic, not by name: under a fleet's load that is a queue of telemetry, however the
    hub names and partitions them.
    """
    published = read_published_counts(settings) or {}
    leaders = {q.name: q.leader for q in cluster.status().queues if q.leader}
    if not leaders:
        raise SystemExit("the cluster reports no quorum queue leaders")
    busiest = max(leaders, key=lambda name: published.get(name, 0))
    names = [cluster.node(i).node_name for i in range(cluster.count)]
    return names.index(leaders[busiest]), busiest


def node_loss(
    settings: Settings, cluster: Cluster, hub: HubProcess, devices: int, interval_s: float, before: float, after: float
) -> NodeLoss:
    """Load from a mixed fleet, SIGKILL the busiest node after `before` s, keep the load `after` s more, measure.

    The fleet's accounts must exist (`provision_into`) and the hub must run.
    """
    with Fleet(settings, count=devices, protocol="mixed", interval_s=interval_s, site=SITE, seed=15) as fleet:
        time.sleep(before / 2)
        steady_from, steady_count = time.monotonic(), stored_before(settings, now_ms())
        time.sleep(before / 2)
        steady = (stored_before(settings, now_ms()) - steady_count) / (time.monotonic() - steady_from)
        victim, busiest = busiest_leader(settings, cluster)
        made_before = sum(device.seq for device in fleet.devices)
        killed_ms, killed = now_ms(), time.monotonic()
        os.killpg(cluster.node_pids()[victim], signal.SIGKILL)
        console.print(f"killed node {victim} ({cluster.node(victim).node_name}, leader of {busiest})")
        first_s = drained_s = None
        while time.monotonic() - killed < after or first_s is None or drained_s is None:
            if first_s is None and stored_after(settings, killed_ms):
                first_s = time.monotonic() - killed
            if drained_s is None and stored_before(settings, killed_ms) >= made_before:
                drained_s = time.monotonic() - killed
            if time.monotonic() - killed > after + DRAIN_WAIT_S:
                raise SystemExit(f"readings not stored within the wait; see the hub's log {hub.log}")
            time.sleep(POLL_S)
    made = sum(device.seq for device in fleet.devices)
    deadline = time.monotonic() + DRAIN_WAIT_S
    while stored_before(settings, now_ms()) < made and time.monotonic() < deadline:
        time.sleep(POLL_S)
    duplicates, gaps = duplicates_and_gaps(settings, fleet)
    assert first_s is not None and drained_s is not None  # the loop above ends only with both
    return NodeLoss(
        devices,
        interval_s,
        f"node {victim}",
        busiest,
        steady,
        first_s,
        drained_s,
        made_before,
        made,
        duplicates,
        gaps,
        hub.running,
    )


def run(args: argparse.Namespace, root: Path) -> None:
    with started_cluster(root, NODES, console.print) as bench:
        settings, cluster, up_s = bench.settings, bench.cluster, bench.up_s
        provision_into(
            settings, [spec.device_id for spec in plan_fleet(args.devices, site=SITE)], settings.credentials_path
        )
        with running_hub(settings, root / "hub.log", metrics=True) as hub:
            loss = node_loss(settings, cluster, hub, args.devices, args.interval, args.before, args.after)
    table = Table(title=f"node loss: {args.devices} devices (mixed), one reading each {args.interval} s")
    for column in ("measure", "value"):
        table.add_column(column)
    table.add_row("3-node cluster up (start to quorum queues on every node)", f"{up_s:.1f} s")
    for row in loss.rows():
        table.add_row(*row)
    console.print(table)


def main() -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
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
