"""How many simulated devices one simulator process keeps on schedule: `python -m bench.sim_scale`.

Starts its own stack (RabbitMQ + InfluxDB on free ports in a temporary directory), measures a
baseline in the same run (one bare paho client and one bare stomp.py connection publishing as
fast as the broker confirms), then runs fleets of 50, 1,000 and growing counts at one reading
per device per second, measuring for each the sustained confirmed readings/s, the schedule lag
(p50/p99/max of "produced at" minus "due at"), the CPU the simulator used and its threads. It
stops growing at the first count that does not keep up and ends with a table.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import paho.mqtt.client as mqtt
import stomp
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devices.device import ProtocolChoice, plan_fleet
from devices.fleet import Fleet
from devices.stats import LagSummary
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.contract import VHOST, Reading, encode, mqtt_topic, now_ms, stomp_destination
from hub.stack import Stack
from hub.stack.stack import settings_on_free_ports

#: Keeping up means: confirmed readings/s at least this share of the target rate...
KEEPS_UP_RATE_SHARE = 0.97
#: ...and the 99th percentile of schedule lag below this share of the reading interval.
KEEPS_UP_P99_LAG_SHARE = 0.10
WARMUP_S = 3.0
MEASURE_S = 15.0
BASELINE_S = 5.0
#: Unconfirmed messages the baseline publishers keep in flight.
BASELINE_WINDOW = 500
PROGRESS_REFRESH_S = 0.5
#: Columns of the final table when stdout is not a terminal.
REPORT_WIDTH = 160


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

    @property
    def keeps_up(self) -> bool:
        if self.target_per_s <= 0:
            return True
        interval_ms = 1000.0 * self.devices / self.target_per_s
        return (
            self.confirmed_per_s >= KEEPS_UP_RATE_SHARE * self.target_per_s
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


def run_fleet(settings: Settings, count: int, protocol: ProtocolChoice, interval_s: float, live: Live) -> Result:
    target = count / interval_s
    # Credentials first (one definitions import), so the connect time is the fleet's alone.
    provision_into(
        settings, [spec.device_id for spec in plan_fleet(count, protocol=protocol)], settings.credentials_path
    )
    started = time.monotonic()
    fleet = Fleet(settings, count=count, protocol=protocol, interval_s=interval_s, site="bench", seed=1)
    try:
        fleet.start(wait_s=120.0)
        gc.freeze()  # as devices.sim does
        connect_s = time.monotonic() - started
        warm_until = time.monotonic() + WARMUP_S
        while time.monotonic() < warm_until:
            time.sleep(PROGRESS_REFRESH_S)
            live.update(f"{count} devices: warming up ({fleet.stats().total.online} online)")
        fleet.lag.take_recent()
        before, cpu, start = fleet.stats().total, _cpu_s(), time.monotonic()
        lags: list[float] = []
        while (elapsed := time.monotonic() - start) < MEASURE_S:
            time.sleep(PROGRESS_REFRESH_S)
            lags.extend(fleet.lag.take_recent())
            now = fleet.stats().total
            window = LagSummary.of(lags)
            live.update(
                f"{count} devices ({protocol}): {now.online} online, "
                f"{(now.confirmed - before.confirmed) / max(elapsed, 1e-6):,.0f} confirmed/s of {target:,.0f}, "
                f"buffered {now.buffered}, lag p99 {window.p99_ms:.1f} ms, {elapsed:.0f}/{MEASURE_S:.0f} s"
            )
        elapsed, used = time.monotonic() - start, _cpu_s() - cpu
        lags.extend(fleet.lag.take_recent())
        after = fleet.stats().total
        threads = threading.active_count()
    finally:
        live.update(f"{count} devices: saying goodbye")
        fleet.close()
    confirmed = after.confirmed - before.confirmed
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
    )


def table(results: list[Result], interval_s: float) -> Table:
    out = Table(
        title=f"simulator scale, one process on {os.cpu_count()} cores, {interval_s:g} s per reading "
        f"(keeps up: ≥{KEEPS_UP_RATE_SHARE:.0%} of target, lag p99 ≤ {KEEPS_UP_P99_LAG_SHARE:.0%} of interval)"
    )
    for column in (
        "run",
        "devices",
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
    ):
        out.add_column(column, justify="left" if column == "run" else "right")
    for r in results:
        is_fleet = r.target_per_s > 0
        out.add_row(
            r.name,
            f"{r.devices:,}",
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


@click.command()
@click.option("--counts", default="50,1000", show_default=True, help="Fleet sizes always measured.")
@click.option("--step", default=1000, show_default=True, help="Then grow by this many devices...")
@click.option("--max-count", default=5000, show_default=True, help="...up to this many, stopping at the first miss.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between one device's readings.")
@click.option("--protocol", type=click.Choice(["mqtt", "stomp", "mixed"]), default="mixed", show_default=True)
def main(counts: str, step: int, max_count: int, interval: float, protocol: ProtocolChoice) -> None:
    # A log file gets a table wide enough to read; a terminal uses its own width.
    console = Console(width=None if os.isatty(1) else REPORT_WIDTH)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as root:
        settings = settings_on_free_ports(Path(root))
        stack = Stack(settings)
        console.print(f"starting a stack in {root} (MQTT :{settings.mqtt_port}, STOMP :{settings.stomp_port})")
        stack.up()
        try:
            with Live(console=console, refresh_per_second=4) as live:
                results.append(baseline_mqtt(settings, live))
                results.append(baseline_stomp(settings, live))
                planned = [int(c) for c in counts.split(",") if c.strip()]
                for count in planned:
                    results.append(run_fleet(settings, count, protocol, interval, live))
                count = max(planned) + step
                while count <= max_count and results[-1].keeps_up:
                    results.append(run_fleet(settings, count, protocol, interval, live))
                    count += step
                live.update("done")
        finally:
            stack.down()
    console.print(table(results, interval))
    kept = [r.devices for r in results if r.target_per_s > 0 and r.keeps_up]
    console.print(f"largest fleet that kept up: {max(kept) if kept else 0:,} devices")


if __name__ == "__main__":
    main()
