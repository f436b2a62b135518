"""How many simulated devices one simulator process keeps on schedule: `python -m bench.sim_scale`.

`--scale` is the connection-scale run: one fleet of 10,000 devices at one reading per 10 s
(`--devices N --interval S` for another size), with the connect time, what it cost the
simulator and the broker (CPU, resident memory, memory per connection, descriptors), and the
broker's memory high watermark.

Starts its own stack (RabbitMQ + InfluxDB on free ports in a temporary directory), measures a
baseline in the same run (one bare paho client and one bare stomp.py connection publishing as
fast as the broker confirms), then runs fleets of 50, 1,000 and growing counts at one reading
per device per second, measuring for each the sustained confirmed readings/s, the schedule lag
(p50/p99/max of "produced at" minus "due at"), the CPU the simulator used and its threads. It
stops growing at the first count that does not keep up and ends with a table.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass

import click
import paho.mqtt.client as mqtt
import stomp
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.harness import bench_stack
from bench.procstat import Usage, group_pids, usage
from devices.device import ProtocolChoice, plan_fleet
from devices.fleet import Fleet
from devices.stats import LagRecorder, LagSummary
from hub.clients.management import read_node
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.contract import VHOST, Reading, encode, mqtt_topic, now_ms, stomp_destination
from hub.core.limits import raise_open_files_limit
from hub.core.signals import interrupt_on_stop_signals
from hub.stack import Stack

#: Keeping up means: confirmed readings/s at least this share of the target rate...
KEEPS_UP_RATE_SHARE = 0.97
#: ...and the 99th percentile of schedule lag below this share of the reading interval.
KEEPS_UP_P99_LAG_SHARE = 0.10
WARMUP_S = 3.0
MEASURE_S = 15.0
#: The measured window spans at least this many reading intervals (so a 10 s interval is measured 30 s).
MEASURE_INTERVALS = 3
#: How long the devices get to be online by default, and how long without one more coming online ends the wait.
CONNECT_WAIT_S = 300.0
CONNECT_STALL_S = 60.0
#: `--scale`: the connection-scale run of issue 14.
SCALE_DEVICES = 10_000
SCALE_INTERVAL_S = 10.0
MB = 1024 * 1024
BASELINE_S = 5.0
#: Unconfirmed messages the baseline publishers keep in flight.
BASELINE_WINDOW = 500
PROGRESS_REFRESH_S = 1.0
#: When stdout is not a terminal (a log file), a progress line is printed this often instead.
PROGRESS_LOG_S = 10.0
#: Columns of the final table when stdout is not a terminal.
REPORT_WIDTH = 180


@dataclass(frozen=True)
class Footprint:
    """What a fleet cost: the simulator's and the broker's resources while it ran."""

    connected: int
    errors: int
    sim_rss_bytes: int
    sim_fds: int
    broker_cpu_percent: float
    broker_rss_bytes: int
    #: Broker resident memory per open connection: its growth from before the fleet connected, per descriptor.
    broker_bytes_per_connection: float
    broker_fds: int
    #: From the management API: memory used and the high watermark (publishers block above it), descriptor limit.
    broker_mem_used: int
    broker_mem_limit: int
    broker_mem_alarm: bool
    broker_fd_total: int
    sim_fd_limit: int


class Progress:
    """The live line: redrawn on a terminal, printed every PROGRESS_LOG_S into a log file."""

    def __init__(self, live: Live, console: Console) -> None:
        self.live, self.console, self._logged = live, console, 0.0

    def update(self, line: str) -> None:
        self.live.update(line)
        if not self.console.is_terminal and time.monotonic() - self._logged >= PROGRESS_LOG_S:
            self._logged = time.monotonic()
            self.console.print(line)


@dataclass(frozen=True)
class Result:
    name: str
    devices: int
    target_per_s: float
    confirmed_per_s: float
    lag: LagSummary
    cpu_percent: float
    cpu_us_per_message: float
    threads: int
    connect_s: float
    footprint: Footprint | None = None

    @property
    def keeps_up(self) -> bool:
        if self.target_per_s <= 0:
            return True
        interval_ms = 1000.0 * self.devices / self.target_per_s
        return (
            (self.footprint is None or self.footprint.connected >= self.devices)
            and self.confirmed_per_s >= KEEPS_UP_RATE_SHARE * self.target_per_s
            and self.lag.p99_ms <= KEEPS_UP_P99_LAG_SHARE * interval_ms
        )


#: The device the bare-client baselines publish as.
BASELINE_DEVICE = "bench-0001"


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _body(seq: int) -> bytes:
    return encode(
        Reading(
            device="bench-0001",
            site="bench",
            kind="environment",
            seq=seq,
            ts=now_ms(),
            readings={"temperature": 21.5, "humidity": 40.1, "pressure": 1013.2},
        )
    )


def _baseline_password(settings: Settings) -> str:
    """The baselines publish as one device with its own credential, like every device."""
    return provision_into(settings, [BASELINE_DEVICE], settings.credentials_path)[BASELINE_DEVICE].password


def baseline_mqtt(settings: Settings, live: Live) -> Result:
    """One paho client with its own network thread, QoS 1, publishing as fast as PUBACKs allow."""
    confirmed = 0
    room = threading.Semaphore(BASELINE_WINDOW)
    connected = threading.Event()

    def on_publish(*_args: object) -> None:
        nonlocal confirmed
        confirmed += 1
        room.release()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=BASELINE_DEVICE)
    client.username_pw_set(BASELINE_DEVICE, _baseline_password(settings))
    client.max_inflight_messages_set(BASELINE_WINDOW)
    client.on_connect = lambda *_args: connected.set()
    client.on_publish = on_publish
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    connected.wait(10)
    topic = mqtt_topic(f"telemetry.bench.environment.{BASELINE_DEVICE}")
    cpu, start, seq = _cpu_s(), time.monotonic(), 0
    while time.monotonic() - start < BASELINE_S:
        room.acquire()
        seq += 1
        client.publish(topic, _body(seq), qos=1)
        if seq % 2000 == 0:
            live.update(f"baseline paho: {confirmed / (time.monotonic() - start):,.0f} confirmed/s")
    elapsed, used = time.monotonic() - start, _cpu_s() - cpu
    client.loop_stop()
    client.disconnect()
    return Result(
        "baseline: bare paho, 1 client",
        1,
        0.0,
        confirmed / elapsed,
        LagSummary(),
        100 * used / elapsed,
        1e6 * used / max(1, confirmed),
        threading.active_count(),
        0.0,
    )


class _Receipts(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.count = 0
        self.room = threading.Semaphore(BASELINE_WINDOW)

    def on_receipt(self, frame: object) -> None:
        self.count += 1
        self.room.release()


def baseline_stomp(settings: Settings, live: Live) -> Result:
    """One stomp.py connection sending with a receipt per message, as fast as receipts come back."""
    listener = _Receipts()
    connection = stomp.Connection12([(settings.stomp_host, settings.stomp_port)], vhost=VHOST)
    connection.set_listener("receipts", listener)
    connection.connect(BASELINE_DEVICE, _baseline_password(settings), wait=True)
    destination = stomp_destination(f"telemetry.bench.environment.{BASELINE_DEVICE}")
    cpu, start, seq = _cpu_s(), time.monotonic(), 0
    while time.monotonic() - start < BASELINE_S:
        listener.room.acquire()
        seq += 1
        connection.send(destination, _body(seq), content_type="application/json", headers={"receipt": str(seq)})
        if seq % 2000 == 0:
            live.update(f"baseline stomp.py: {listener.count / (time.monotonic() - start):,.0f} confirmed/s")
    elapsed, used = time.monotonic() - start, _cpu_s() - cpu
    connection.disconnect()
    return Result(
        "baseline: bare stomp.py, 1 conn",
        1,
        0.0,
        listener.count / elapsed,
        LagSummary(),
        100 * used / elapsed,
        1e6 * used / max(1, listener.count),
        threading.active_count(),
        0.0,
    )


def _broker_usage(stack: Stack) -> Usage:
    rabbit = next(s for s in stack.status().services if s.name == "RabbitMQ")
    return usage(group_pids(rabbit.pid))


def _connect(fleet: Fleet, count: int, wait_s: float, stack: Stack, progress: Progress) -> tuple[float, int]:
    """Start the fleet and wait until every device is online (or refused), `wait_s` passes or none comes up for
    CONNECT_STALL_S; the seconds that took and how many were online."""
    started = time.monotonic()
    fleet.start(wait_s=None)
    best, best_at = 0, started
    while True:
        total = fleet.stats().total
        now = time.monotonic()
        if total.online > best:
            best, best_at = total.online, now
        if total.online + total.refused >= count or now - started >= wait_s or now - best_at >= CONNECT_STALL_S:
            return now - started, total.online
        progress.update(
            f"{count:,} devices: connecting, {total.online:,} online, {total.errors:,} errors, "
            f"{total.reconnects:,} reconnects, broker fds {_broker_usage(stack).fds:,}, {now - started:.0f} s"
        )
        time.sleep(PROGRESS_REFRESH_S)


def run_fleet(
    settings: Settings,
    stack: Stack,
    count: int,
    protocol: ProtocolChoice,
    interval_s: float,
    connect_wait_s: float,
    progress: Progress,
) -> Result:
    target = count / interval_s
    progress.update(f"{count:,} devices: provisioning their accounts (one definitions import)")
    provisioning = time.monotonic()
    # Credentials first (one definitions import), so the connect time is the fleet's alone.
    provision_into(
        settings, [spec.device_id for spec in plan_fleet(count, protocol=protocol)], settings.credentials_path
    )
    progress.console.print(f"{count:,} devices provisioned in {time.monotonic() - provisioning:.1f} s")
    broker_before = _broker_usage(stack)
    fleet = Fleet(settings, count=count, protocol=protocol, interval_s=interval_s, site="bench", seed=1)
    measure_s = max(MEASURE_S, MEASURE_INTERVALS * interval_s)
    try:
        connect_s, connected = _connect(fleet, count, connect_wait_s, stack, progress)
        gc.freeze()  # as devices.sim does
        warm_until = time.monotonic() + max(WARMUP_S, interval_s)
        while time.monotonic() < warm_until:
            time.sleep(PROGRESS_REFRESH_S)
            progress.update(f"{count:,} devices: warming up ({fleet.stats().total.online:,} online)")
        fleet.lag.take_recent()
        before, cpu, start = fleet.stats().total, _cpu_s(), time.monotonic()
        broker_start = _broker_usage(stack)
        lags: list[float] = []
        # The live line's lag comes from a histogram (cheap); the table's from every sample, sorted once.
        window = LagRecorder()
        while (elapsed := time.monotonic() - start) < measure_s:
            time.sleep(PROGRESS_REFRESH_S)
            recent = fleet.lag.take_recent()
            lags.extend(recent)
            for lag in recent:
                window.add(lag)
            now = fleet.stats().total
            progress.update(
                f"{count:,} devices ({protocol}): {now.online:,} online, "
                f"{(now.confirmed - before.confirmed) / max(elapsed, 1e-6):,.0f} confirmed/s of {target:,.0f}, "
                f"buffered {now.buffered:,}, lag p99 {window.summary().p99_ms:.1f} ms, {elapsed:.0f}/{measure_s:.0f} s"
            )
        elapsed, used = time.monotonic() - start, _cpu_s() - cpu
        lags.extend(fleet.lag.take_recent())
        after = fleet.stats().total
        threads = threading.active_count()
        broker_end, sim_end = _broker_usage(stack), usage([os.getpid()])
        node = read_node(settings) or {}
    finally:
        progress.update(f"{count:,} devices: saying goodbye")
        fleet.close()
    confirmed = after.confirmed - before.confirmed
    footprint = Footprint(
        connected=connected,
        errors=after.errors,
        sim_rss_bytes=sim_end.rss_bytes,
        sim_fds=sim_end.fds,
        broker_cpu_percent=100 * (broker_end.cpu_s - broker_start.cpu_s) / elapsed,
        broker_rss_bytes=broker_end.rss_bytes,
        broker_bytes_per_connection=(broker_end.rss_bytes - broker_before.rss_bytes)
        / max(1, broker_end.fds - broker_before.fds),
        broker_fds=broker_end.fds,
        broker_mem_used=int(node.get("mem_used", 0)),
        broker_mem_limit=int(node.get("mem_limit", 0)),
        broker_mem_alarm=bool(node.get("mem_alarm", False)),
        broker_fd_total=int(node.get("fd_total", 0)),
        sim_fd_limit=raise_open_files_limit(),
    )
    return Result(
        f"fleet, {protocol}",
        count,
        target,
        confirmed / elapsed,
        LagSummary.of(lags),
        100 * used / elapsed,
        1e6 * used / max(1, confirmed),
        threads,
        connect_s,
        footprint,
    )


def _add_columns(out: Table, *columns: str) -> None:
    """The run's name and its device count, then `columns`, numbers right-aligned."""
    out.add_column("run")
    for column in ("devices", *columns):
        out.add_column(column, justify="right")


def table(results: list[Result], interval_s: float) -> Table:
    out = Table(
        title=f"simulator scale, one process on {os.cpu_count()} cores, {interval_s:g} s per reading "
        f"(keeps up: all online, ≥{KEEPS_UP_RATE_SHARE:.0%} of target, lag p99 ≤ {KEEPS_UP_P99_LAG_SHARE:.0%} of "
        "interval)"
    )
    _add_columns(
        out,
        "online",
        "target/s",
        "confirmed/s",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "CPU %",
        "CPU µs/msg",
        "threads",
        "connect s",
        "keeps up",
    )
    for r in results:
        is_fleet = r.target_per_s > 0
        out.add_row(
            r.name,
            f"{r.devices:,}",
            f"{r.footprint.connected:,}" if r.footprint else "-",
            f"{r.target_per_s:,.0f}" if is_fleet else "max",
            f"{r.confirmed_per_s:,.0f}",
            f"{r.lag.p50_ms:.1f}" if is_fleet else "-",
            f"{r.lag.p99_ms:.1f}" if is_fleet else "-",
            f"{r.lag.max_ms:.1f}" if is_fleet else "-",
            f"{r.cpu_percent:.0f}",
            f"{r.cpu_us_per_message:.0f}",
            f"{r.threads}",
            f"{r.connect_s:.1f}" if is_fleet else "-",
            ("yes" if r.keeps_up else "NO") if is_fleet else "",
        )
    return out


def footprint_table(results: list[Result]) -> Table:
    out = Table(title="what each fleet cost (at the end of its measured window)")
    _add_columns(
        out,
        "errors",
        "sim RSS MB",
        "sim fds / limit",
        "broker CPU %",
        "broker RSS MB",
        "broker KB / conn",
        "broker fds / limit",
        "broker mem / watermark MB",
        "mem alarm",
    )
    for r in results:
        f = r.footprint
        if f is None:
            continue
        out.add_row(
            r.name,
            f"{r.devices:,}",
            f"{f.errors:,}",
            f"{f.sim_rss_bytes / MB:,.0f}",
            f"{f.sim_fds:,} / {f.sim_fd_limit:,}",
            f"{f.broker_cpu_percent:.0f}",
            f"{f.broker_rss_bytes / MB:,.0f}",
            f"{f.broker_bytes_per_connection / 1024:,.0f}",
            f"{f.broker_fds:,} / {f.broker_fd_total:,}",
            f"{f.broker_mem_used / MB:,.0f} / {f.broker_mem_limit / MB:,.0f}",
            "YES" if f.broker_mem_alarm else "no",
        )
    return out


@click.command()
@click.option("--counts", default="50,1000", show_default=True, help="Fleet sizes always measured.")
@click.option("--step", default=1000, show_default=True, help="Then grow by this many devices...")
@click.option("--max-count", default=5000, show_default=True, help="...up to this many, stopping at the first miss.")
@click.option("--devices", type=int, default=None, help="Measure one fleet of this many devices instead (no growing).")
@click.option(
    "--scale",
    is_flag=True,
    help=f"The connection-scale run: --devices {SCALE_DEVICES} --interval {SCALE_INTERVAL_S:g} (unless given).",
)
@click.option("--interval", type=float, default=None, help="Seconds between one device's readings.  [default: 1]")
@click.option("--protocol", type=click.Choice(["mqtt", "stomp", "mixed"]), default="mixed", show_default=True)
@click.option("--connect-wait", default=CONNECT_WAIT_S, show_default=True, help="Seconds the devices get to connect.")
@click.option("--baselines/--no-baselines", default=True, show_default=True, help="Measure the bare clients first.")
def main(
    counts: str,
    step: int,
    max_count: int,
    devices: int | None,
    scale: bool,
    interval: float | None,
    protocol: ProtocolChoice,
    connect_wait: float,
    baselines: bool,
) -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    if scale:
        devices = devices or SCALE_DEVICES
        interval = interval or SCALE_INTERVAL_S
    interval = interval or 1.0
    # stomp.py logs every lost connection with a traceback; the table counts errors instead.
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)
    # Raised here, so the broker the stack starts inherits it too: a descriptor per connection on each side.
    fd_limit = raise_open_files_limit()
    # A log file gets a table wide enough to read; a terminal uses its own width.
    console = Console(width=None if os.isatty(1) else REPORT_WIDTH)
    results: list[Result] = []
    console.print(f"open files limit {fd_limit:,}, load average {os.getloadavg()[0]:.1f}")
    with bench_stack("sim-bench-", console.print) as bench:
        settings, stack = bench.settings, bench.stack
        console.print(f"MQTT :{settings.mqtt_port}, STOMP :{settings.stomp_port}")
        with Live(console=console, refresh_per_second=4) as live:
            progress = Progress(live, console)
            if baselines:
                results.append(baseline_mqtt(settings, live))
                results.append(baseline_stomp(settings, live))
            if devices is not None:
                planned, max_count = [devices], 0
            else:
                planned = [int(c) for c in counts.split(",") if c.strip()]
            for count in planned:
                results.append(run_fleet(settings, stack, count, protocol, interval, connect_wait, progress))
            count = max(planned) + step
            while count <= max_count and results[-1].keeps_up:
                results.append(run_fleet(settings, stack, count, protocol, interval, connect_wait, progress))
                count += step
            live.update("done")
    console.print(table(results, interval))
    console.print(footprint_table(results))
    kept = [r.devices for r in results if r.target_per_s > 0 and r.keeps_up]
    console.print(
        f"largest fleet that kept up: {max(kept) if kept else 0:,} devices; load average at the end "
        f"{os.getloadavg()[0]:.1f} (1 min)"
    )


if __name__ == "__main__":
    main()
