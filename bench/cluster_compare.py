"""One RabbitMQ node against a three-node cluster, the same load: `python -m bench.cluster_compare [--quick]`.

Starts a one-node stack, then a three-node cluster (`hub stack up --nodes 3`), each on free ports in
a temporary directory, with one `python -m hub run` each, and measures on both (sizes in FULL and
QUICK):

0. idle: the hub running, no load: the broker's own CPU, so that its CPU per reading can be told
   above idle;
1. steady: a mixed fleet (MQTT and STOMP simulated devices, each its own connection) and a probe
   device at a fixed rate: readings stored per second, the probe's publish -> queryable latency
   (p50 / p99), the broker's CPU (every process of every node, from /proc) and the hub's;
2. flat out: readings from MQTT publishers as fast as the broker takes them (as
   `bench.hub_throughput` does): the same figures.

On the one node first, the broker's memory per idle connection, MQTT and STOMP apart (devices
sending one reading an hour; the STOMP fleet connects beside the MQTT one): its resident memory,
and the VM's own count from the node's memory breakdown (management API). On the cluster last,
the node-loss drill of `bench.cluster_failover`. Stored readings are counted in InfluxDB, never
by queue name.

Ends with three tables (both columns and their ratio; per-node capacity; the node loss) headed by
the date, the machine and the versions, with the load average beside each part.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.cluster_failover import SITE as LOSS_SITE
from bench.cluster_failover import NodeLoss, node_loss
from bench.harness import HubProcess, run_header, running_hub, started_cluster, started_stack
from bench.hub_throughput import PROBE_INTERVAL_S, Phase, hub_phase, probing
from bench.load import create_gateway, influx_count, quantile_ms, start_publishers
from bench.procstat import cpu_seconds, groups_usage
from devices.device import ProtocolChoice, plan_fleet
from devices.fleet import Fleet
from hub.clients.management import read_memory_breakdown
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.limits import raise_open_files_limit
from hub.core.signals import interrupt_on_stop_signals

console = Console(width=150)
NODES = 3
STEADY_SITE = "steady"
IDLE_SITE = "idle"
IDLE_PROTOCOLS: tuple[ProtocolChoice, ...] = ("mqtt", "stomp")
#: An idle device sends one reading an hour: what it costs the broker is its connection.
IDLE_INTERVAL_S = 3600.0
#: Seconds the broker gets to settle (statistics, garbage collection) before and after a fleet connects.
SETTLE_S = 5.0
#: Seconds the management API gets to answer a memory breakdown.
MANAGEMENT_WAIT_S = 60.0
#: Seconds the broker's idle CPU is measured.
IDLE_S = 10.0
#: Seconds a fleet gets to come online before the steady window, and to connect when idle.
WARMUP_S = 3.0
CONNECT_WAIT_S = 300.0
PROGRESS_EVERY_S = 2.0
MB = 1024 * 1024
GB = 1024 * MB


@dataclass(frozen=True)
class Sizes:
    """The load: the same on both stacks."""

    steady_devices: int
    steady_interval_s: float
    steady_s: float
    readings: int
    flat_devices: int
    publishers: int
    idle: int
    loss_devices: int
    loss_interval_s: float
    loss_before_s: float
    loss_after_s: float

    @property
    def offered_per_s(self) -> float:
        """Readings a second in the steady phase: the fleet's and the probe's."""
        return self.steady_devices / self.steady_interval_s + 1 / PROBE_INTERVAL_S


FULL = Sizes(100, 0.5, 30.0, 30_000, 200, 2, 1000, 60, 0.5, 10.0, 20.0)
QUICK = Sizes(20, 0.5, 10.0, 4_000, 100, 2, 100, 20, 0.5, 6.0, 8.0)


@dataclass(frozen=True)
class Window:
    """One measured phase on one stack: the hub's figures and what the broker's CPU did meanwhile."""

    phase: Phase
    broker_cpu_s: float
    load: tuple[float, float]
    #: The broker's CPU with the hub running and no load (cores), measured on the same stack before.
    idle_cores: float

    @property
    def p50_ms(self) -> float:
        return quantile_ms(self.phase.latencies, 50)

    @property
    def p99_ms(self) -> float:
        return quantile_ms(self.phase.latencies, 99)

    @property
    def broker_cpu_per_1000(self) -> float:
        """Broker CPU seconds per 1,000 readings stored."""
        return 1000 * self.broker_cpu_s / self.phase.messages if self.phase.messages else 0.0

    @property
    def broker_cpu_per_1000_above_idle(self) -> float:
        """Broker CPU seconds per 1,000 readings stored, its idle CPU over the window taken away."""
        above = self.broker_cpu_s - self.idle_cores * self.phase.elapsed_s
        return 1000 * above / self.phase.messages if self.phase.messages else 0.0

    @property
    def broker_cores(self) -> float:
        """The broker's CPU as cores busy on average over the window."""
        return self.broker_cpu_s / self.phase.elapsed_s if self.phase.elapsed_s else 0.0


@dataclass(frozen=True)
class ConnectionCost:
    """What `online` idle connections of one protocol added to the broker's memory."""

    protocol: str
    online: int
    connect_s: float
    #: Resident memory: what RabbitMQ's memory watermark counts (`vm_memory_calculation_strategy = rss`).
    rss_bytes: int
    #: The Erlang VM's own count of what it allocated, and of it binaries (socket buffers among them).
    erlang_bytes: int
    binary_bytes: int
    load: float

    def per_connection(self, total: int) -> float:
        return total / self.online if self.online else 0.0


@dataclass
class StackRun:
    label: str
    steady: Window
    flat: Window
    idle: list[ConnectionCost] = field(default_factory=list)
    loss: NodeLoss | None = None


def loadavg() -> float:
    return os.getloadavg()[0]


def stored_between(settings: Settings, start_ms: int, end_ms: int) -> int:
    """Readings stamped in [start_ms, end_ms) stored so far: every site and kind, the probe's too."""
    return influx_count(settings, f"SELECT count(seq) FROM /.*/ WHERE time >= {start_ms}ms AND time < {end_ms}ms")


def measured(broker: Callable[[], float], idle_cores: float, run: Callable[[], Phase]) -> Window:
    """`run` a phase, with the broker's CPU seconds and the load average around it."""
    load_before, cpu_before = loadavg(), broker()
    phase = run()
    return Window(phase, broker() - cpu_before, (load_before, loadavg()), idle_cores)


def idle_broker_cores(broker: Callable[[], float]) -> float:
    """The broker's CPU (cores) over IDLE_S with no load: statistics, heartbeats, the hub's idle consumers."""
    cpu_before, started = broker(), time.monotonic()
    time.sleep(IDLE_S)
    return (broker() - cpu_before) / (time.monotonic() - started)


def steady_phase(settings: Settings, hub: HubProcess, sizes: Sizes, label: str) -> Phase:
    """The mixed fleet at its fixed rate for `steady_s`: readings stored in the window (the probe's too),
    the probe's latency, the hub's CPU."""
    offered = sizes.offered_per_s
    with (
        Fleet(
            settings,
            count=sizes.steady_devices,
            protocol="mixed",
            interval_s=sizes.steady_interval_s,
            site=STEADY_SITE,
            seed=15,
        ),
        probing(settings, f"probe-{STEADY_SITE}") as latencies,
    ):
        time.sleep(WARMUP_S)
        skip = len(latencies)
        start_ms, hub_before, started = now_ms(), cpu_seconds(hub.pid), time.monotonic()
        while time.monotonic() - started < sizes.steady_s:
            time.sleep(PROGRESS_EVERY_S)
            hub.check()
            elapsed = time.monotonic() - started
            console.print(
                f"  {label}, steady: {stored_between(settings, start_ms, now_ms()) / elapsed:6.0f} "
                f"stored/s of {offered:.0f} offered, probe p50 {quantile_ms(latencies[skip:], 50):.0f} ms, "
                f"{elapsed:.0f}/{sizes.steady_s:.0f} s"
            )
        # Counted at the end of the window: what the hub stored of what was made in it.
        end_ms, elapsed = now_ms(), time.monotonic() - started
        stored = stored_between(settings, start_ms, end_ms)
        hub_cpu = cpu_seconds(hub.pid) - hub_before
        window = list(latencies[skip:])
    return Phase("steady", stored, elapsed, hub_cpu, window)


@contextmanager
def hub_measured(
    settings: Settings, broker_pgids: Callable[[], list[int]], root: Path, sizes: Sizes, label: str
) -> Iterator[tuple[HubProcess, Window, Window]]:
    """The hub on this stack, its steady and flat-out windows measured; the hub still runs inside."""
    create_gateway(settings)
    provision_into(
        settings,
        [spec.device_id for spec in plan_fleet(sizes.steady_devices, site=STEADY_SITE)],
        settings.credentials_path,
    )

    def broker() -> float:
        return groups_usage(broker_pgids()).cpu_s

    with running_hub(settings, root / f"hub-{label}.log", metrics=True) as hub:
        console.print(f"[bold]{label}: idle[/] (the hub running, no load, {IDLE_S:.0f} s)")
        idle = idle_broker_cores(broker)
        console.print(
            f"[bold]{label}: steady[/] ({sizes.steady_devices} mixed devices, one reading each "
            f"{sizes.steady_interval_s:g} s, {sizes.steady_s:.0f} s)"
        )
        steady = measured(broker, idle, lambda: steady_phase(settings, hub, sizes, label))
        per_device = max(1, sizes.readings // sizes.flat_devices)
        total = per_device * sizes.flat_devices
        console.print(f"[bold]{label}: flat out[/] ({total} readings, {sizes.publishers} MQTT publishers, QoS 1)")
        flat = measured(
            broker,
            idle,
            lambda: hub_phase(
                settings,
                hub,
                "flat",
                total,
                0,
                lambda: start_publishers(settings, "flat", sizes.flat_devices, per_device, sizes.publishers),
            ),
        )
        yield hub, steady, flat


def breakdown(settings: Settings) -> dict[str, int]:
    """The broker's memory breakdown; asked again while its management API does not answer (a loaded machine)."""
    deadline = time.monotonic() + MANAGEMENT_WAIT_S
    while (found := read_memory_breakdown(settings)) is None:
        if time.monotonic() > deadline:
            raise SystemExit("the broker's management API gave no memory breakdown")
        time.sleep(1.0)
    return found


def idle_costs(settings: Settings, broker_pgids: list[int], count: int) -> list[ConnectionCost]:
    """`count` idle MQTT devices connect, then `count` idle STOMP devices beside them: what each fleet added.

    The first fleet stays connected while the second is measured, so the second cannot reuse memory
    the first gave back to the broker's allocators (which keep it resident).
    """
    costs: list[ConnectionCost] = []
    fleets: list[Fleet] = []
    try:
        for protocol in IDLE_PROTOCOLS:
            time.sleep(SETTLE_S)
            before, rss_before = breakdown(settings), groups_usage(broker_pgids).rss_bytes
            fleet = Fleet(settings, count=count, protocol=protocol, interval_s=IDLE_INTERVAL_S, site=IDLE_SITE, seed=1)
            fleets.append(fleet)
            started = time.monotonic()
            fleet.start(wait_s=None)
            while (online := fleet.stats().total.online) < count and time.monotonic() - started < CONNECT_WAIT_S:
                console.print(f"  idle {protocol}: {online} / {count} online, {time.monotonic() - started:.0f} s")
                time.sleep(PROGRESS_EVERY_S)
            connect_s = time.monotonic() - started
            time.sleep(SETTLE_S)
            after, rss_after = breakdown(settings), groups_usage(broker_pgids).rss_bytes
            costs.append(
                ConnectionCost(
                    protocol,
                    fleet.stats().total.online,
                    connect_s,
                    rss_after - rss_before,
                    after.get("total.erlang", 0) - before.get("total.erlang", 0),
                    after.get("binary", 0) - before.get("binary", 0),
                    loadavg(),
                )
            )
    finally:
        for fleet in fleets:
            fleet.close()
    return costs


def one_node(root: Path, sizes: Sizes) -> tuple[StackRun, str]:
    console.print("[bold]one node[/]")
    with started_stack(root / "one-node", console.print) as bench:
        settings, stack = bench.settings, bench.stack
        header = run_header(settings)

        def pgids() -> list[int]:
            return [s.pid for s in stack.status().services if s.name == "RabbitMQ"]

        provision_into(
            settings, [spec.device_id for spec in plan_fleet(sizes.idle, site=IDLE_SITE)], settings.credentials_path
        )
        console.print(f"[bold]one node: idle connections[/] ({sizes.idle} MQTT, then {sizes.idle} STOMP)")
        idle = idle_costs(settings, pgids(), sizes.idle)
        with hub_measured(settings, pgids, root, sizes, "one node") as (_hub, steady, flat):
            return StackRun("1 node", steady, flat, idle), header


def three_nodes(root: Path, sizes: Sizes) -> tuple[StackRun, float]:
    console.print(f"[bold]{NODES} nodes[/]")
    with started_cluster(root / "cluster", NODES, console.print) as bench:
        settings, cluster = bench.settings, bench.cluster
        provision_into(
            settings,
            [spec.device_id for spec in plan_fleet(sizes.loss_devices, site=LOSS_SITE)],
            settings.credentials_path,
        )
        with hub_measured(settings, cluster.node_pids, root, sizes, f"{NODES} nodes") as (hub, steady, flat):
            console.print(
                f"[bold]{NODES} nodes: node loss[/] ({sizes.loss_devices} mixed devices, one reading each "
                f"{sizes.loss_interval_s:g} s, kill after {sizes.loss_before_s:g} s)"
            )
            loss = node_loss(
                settings,
                cluster,
                hub,
                sizes.loss_devices,
                sizes.loss_interval_s,
                sizes.loss_before_s,
                sizes.loss_after_s,
            )
        return StackRun(f"{NODES} nodes", steady, flat, loss=loss), bench.up_s


def ratio(one: float, many: float) -> str:
    return f"{many / one:.2f}×" if one else "-"


#: The rows each phase gets in the comparison: name, the figure of a window, its format.
FIGURES: list[tuple[str, Callable[[Window], float], str]] = [
    ("stored readings/s", lambda w: w.phase.rate, ",.0f"),
    ("publish -> queryable p50, ms", lambda w: w.p50_ms, ",.0f"),
    ("publish -> queryable p99, ms", lambda w: w.p99_ms, ",.0f"),
    ("broker CPU, cores busy", lambda w: w.broker_cores, ".2f"),
    ("broker CPU s per 1,000 readings", lambda w: w.broker_cpu_per_1000, ".3f"),
    ("  of it above the broker's idle CPU", lambda w: w.broker_cpu_per_1000_above_idle, ".3f"),
    ("hub CPU µs per reading", lambda w: w.phase.cpu_us, ",.0f"),
]


def comparison_table(one: StackRun, many: StackRun, sizes: Sizes, header: str) -> Table:
    offered = sizes.offered_per_s
    table = Table(title=f"one node against {NODES}, the same load and one hub each; {header}")
    for column in ("measure", one.label, many.label, f"{many.label} / {one.label}"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    idle_a, idle_b = one.steady.idle_cores, many.steady.idle_cores
    table.add_row(
        "broker CPU idle (the hub running, no load), cores", f"{idle_a:.2f}", f"{idle_b:.2f}", ratio(idle_a, idle_b)
    )
    phases = (
        (
            f"steady ({sizes.steady_devices} mixed devices and the probe, {offered:.0f} readings/s offered)",
            one.steady,
            many.steady,
        ),
        (f"flat out ({sizes.flat_devices} devices over {sizes.publishers} MQTT connections)", one.flat, many.flat),
    )
    for title, a, b in phases:
        table.add_row(f"[bold]{title}[/]", "", "", "")
        for name, figure, fmt in FIGURES:
            table.add_row(f"  {name}", format(figure(a), fmt), format(figure(b), fmt), ratio(figure(a), figure(b)))
        table.add_row(
            "  load average (1 min) before -> after",
            *(f"{w.load[0]:.1f} -> {w.load[1]:.1f}" for w in (a, b)),
            "",
        )
    return table


def capacity_table(one: StackRun) -> Table:
    table = Table(title="per-node capacity, measured on the one node")
    for column in ("measure", "value", "how"):
        table.add_column(column, justify="left")
    for cost in one.idle:
        rss = cost.per_connection(cost.rss_bytes)
        table.add_row(
            f"broker memory per idle {cost.protocol.upper()} connection",
            f"{rss / 1024:,.0f} KB resident",
            f"resident memory growth over {cost.online:,} connections (connected in {cost.connect_s:.0f} s, "
            f"load {cost.load:.1f}); the VM's own count {cost.per_connection(cost.erlang_bytes) / 1024:,.0f} KB, "
            f"of it binaries {cost.per_connection(cost.binary_bytes) / 1024:,.0f} KB",
        )
        table.add_row(
            f"  {cost.protocol.upper()} connections per GB of broker memory",
            f"{GB / rss:,.0f}" if rss > 0 else "-",
            "by resident memory (what RabbitMQ's memory watermark counts)",
        )
    for name, window in (("flat out", one.flat), ("steady", one.steady)):
        above = window.broker_cpu_per_1000_above_idle
        table.add_row(
            f"readings/s per broker core ({name}, above idle)",
            f"{1000 / above:,.0f}" if above > 0 else "-",
            f"{above:.3f} broker CPU s per 1,000 readings above idle ({window.broker_cpu_per_1000:.3f} in all; "
            f"idle {window.idle_cores:.2f} cores), load {window.load[1]:.1f}",
        )
        per_hub_core = 1e6 / window.phase.cpu_us if window.phase.cpu_us else 0.0
        table.add_row(
            f"readings/s per hub core ({name})",
            f"{per_hub_core:,.0f}",
            f"{window.phase.cpu_us:,.0f} µs hub CPU per reading, all services in one `hub run`",
        )
    return table


def loss_table(loss: NodeLoss, up_s: float) -> Table:
    table = Table(
        title=f"node loss on the {NODES}-node cluster: {loss.devices} devices (mixed), "
        f"one reading each {loss.interval_s:g} s"
    )
    for column in ("measure", "value"):
        table.add_column(column)
    table.add_row(f"{NODES}-node cluster up (start to quorum queues on every node)", f"{up_s:.1f} s")
    for row in loss.rows():
        table.add_row(*row)
    return table


def main() -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small load (about 3 minutes)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    # stomp.py logs a traceback for each connection closed under it while a thousand idle devices disconnect.
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)
    # Raised here, so the brokers the stacks start inherit it: a descriptor per connection.
    raise_open_files_limit()
    with tempfile.TemporaryDirectory(prefix="cluster-compare-") as tmp:
        root = Path(tmp)
        one, header = one_node(root, sizes)
        many, up_s = three_nodes(root, sizes)
    console.print(comparison_table(one, many, sizes, header))
    console.print(capacity_table(one))
    if many.loss is not None:
        console.print(loss_table(many.loss, up_s))


if __name__ == "__main__":
    main()
