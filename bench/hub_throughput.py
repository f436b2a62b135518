"""How fast `python -m hub run` moves readings from MQTT devices into InfluxDB, against its ceilings.

    python -m bench.hub_throughput [--readings 60000] [--devices 200] [--publishers 2]

Starts its own stack (RabbitMQ + influxd on free ports in a temporary directory) and measures,
in the same run, with the same publishers (MQTT QoS 1, one paho client per process):

1. RabbitMQ alone: the readings published into exchange `iot` and drained from `hub.store` by a
   consumer that only acks (the same queues and copies the hub gets; `hub.rules` is purged after);
2. the hub: `python -m hub run` (all services) stores them; end-to-end rate = readings / time from
   the first publish until the last reading is queryable, plus publish-to-queryable latency of a
   probe device (one reading every PROBE_INTERVAL_S, polled every POLL_S);
3. InfluxDB alone: the same points as line protocol, written in batches of BATCH_MAX_POINTS.

Prints live progress and a final table; the hub's rate as a fraction of the lower ceiling.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from hub.clients import influx
from hub.clients.amqp import connect
from hub.clients.influx import InfluxHttp
from hub.clients.management import ManagementAdmin
from hub.control.identity import device_definitions, new_secret
from hub.core.config import Settings
from hub.core.contract import Reading, encode, mqtt_topic, now_ms
from hub.core.credentials import Credential, merge_credentials, read_credentials
from hub.outputs.lineprotocol import lines_payload
from hub.runtime.batch import BATCH_MAX_POINTS
from hub.runtime.topology import RULES, STORE
from hub.services.store.readings import reading_point
from hub.stack import Stack
from hub.stack.stack import settings_on_free_ports

REPO = Path(__file__).resolve().parents[1]
console = Console()

#: The latency probe publishes one reading this often...
PROBE_INTERVAL_S = 0.05
#: ...and InfluxDB is polled for it this often (the resolution of the latency figures).
POLL_S = 0.02
PROGRESS_EVERY_S = 1.0
#: How often the stored count is read during the hub phase (the resolution of its end time).
COUNT_POLL_S = 0.2
#: The account the publishers log in as (see `create_gateway`).
GATEWAY_USER = "bench-gateway"
#: MQTT messages a publisher keeps in flight (unacknowledged PUBACKs).
MAX_INFLIGHT = 1000


def make_reading(prefix: str, device: int, seq: int, base_ts: int) -> Reading:
    return Reading(
        device=f"{prefix}-{device:04d}",
        site="bench",
        kind="environment",
        seq=seq,
        ts=base_ts + seq,
        readings={"temperature": 20.0 + (seq % 50) / 10, "humidity": 40.0 + (seq % 7)},
    )


def create_gateway(settings: Settings) -> None:
    """A bench-only account that may publish the telemetry of any device of site `bench`, like a gateway.

    Every device has its own account, confined to its own topics; the publishers here speak for
    many devices over one connection each, so they log in as this gateway instead. Its secret
    goes to the stack's credentials file, where the publisher processes read it.
    """
    credential = {GATEWAY_USER: Credential(GATEWAY_USER, new_secret())}
    definitions = device_definitions(credential)
    definitions["topic_permissions"][0]["write"] = r"^telemetry\.bench\.[^.]+\.[^.]+$"
    ManagementAdmin(settings).import_definitions(definitions)
    merge_credentials(settings.credentials_path, credential)


def login_as_gateway(client: mqtt.Client, settings: Settings) -> None:
    client.username_pw_set(GATEWAY_USER, read_credentials(settings.credentials_path)[GATEWAY_USER].password)


def publisher(settings: Settings, prefix: str, devices: range, per_device: int, base_ts: int, done: Any) -> None:
    """One MQTT connection publishing `per_device` readings for each of `devices`, QoS 1."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{prefix}-{devices.start}")
    login_as_gateway(client, settings)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=60)
    client.loop_start()
    last = None
    for seq in range(per_device):
        for device in devices:
            reading = make_reading(prefix, device, seq, base_ts)
            last = client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1)
        while len(client._out_messages) > MAX_INFLIGHT * 4:  # keep memory bounded, the broker sets the pace
            time.sleep(0.001)
    if last is not None:
        last.wait_for_publish(120)
    while client._out_messages:
        time.sleep(0.01)
    client.loop_stop()
    client.disconnect()
    done.value += 1


def start_publishers(
    settings: Settings, prefix: str, devices: int, per_device: int, processes: int
) -> tuple[Any, list[Any]]:
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("i", 0)
    base_ts = now_ms() - 3_600_000
    step = (devices + processes - 1) // processes
    procs = []
    for start in range(0, devices, step):
        proc = ctx.Process(
            target=publisher,
            args=(settings, prefix, range(start, min(devices, start + step)), per_device, base_ts, done),
        )
        proc.start()
        procs.append(proc)
    return done, procs


def amqp(settings: Settings) -> pika.BlockingConnection:
    return connect(settings, "bench")


def influx_seqs(settings: Settings, query: str) -> list[int]:
    [series] = influx.query(settings, query)
    return [int(value) for one in series for row in one.rows for key, value in row.items() if key != "time"]


def influx_count(settings: Settings, query: str, db: str | None = None) -> int:
    [series] = influx.query(settings.model_copy(update={"influx_db": db}) if db else settings, query)
    return sum(int(value or 0) for one in series for row in one.rows for key, value in row.items() if key != "time")


# --- 1. RabbitMQ alone ---------------------------------------------------------------------------


def rabbit_ceiling(settings: Settings, total: int, devices: int, per_device: int, processes: int) -> float:
    connection = amqp(settings)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=STORE.prefetch)
    received = 0
    started = time.monotonic()

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal received
        received += 1
        if received % 1000 == 0 or received == total:
            ch.basic_ack(method.delivery_tag, multiple=True)

    channel.basic_consume(STORE.name, on_message)
    _done, procs = start_publishers(settings, "rmq", devices, per_device, processes)
    last_report = started
    while received < total:
        connection.process_data_events(time_limit=0.1)
        if time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            console.print(
                f"  rabbitmq alone: {received:>8} / {total} acked, {received / (last_report - started):8.0f}/s"
            )
    elapsed = time.monotonic() - started
    connection.close()
    for proc in procs:
        proc.join()
    purge = amqp(settings)
    purge.channel().queue_purge(RULES.name)
    purge.close()
    return total / elapsed


# --- 2. the hub ----------------------------------------------------------------------------------


def probe_latencies(settings: Settings, stop: threading.Event, latencies: list[float]) -> None:
    """Publish a probe reading every PROBE_INTERVAL_S; poll InfluxDB and time each until it is queryable."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe")
    login_as_gateway(client, settings)
    client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=60)
    client.loop_start()
    sent: dict[int, float] = {}

    def publish_probes() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            reading = Reading(
                device="probe", site="bench", kind="probe_env", seq=seq, ts=now_ms(), readings={"temperature": 1.0}
            )
            sent[seq] = time.monotonic()
            client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1)
            stop.wait(PROBE_INTERVAL_S)

    threading.Thread(target=publish_probes, daemon=True).start()
    seen = 0
    while not stop.is_set():
        found = influx_seqs(settings, f"SELECT seq FROM probe_env WHERE seq > {seen}")
        now = time.monotonic()
        for seq in found:
            if seq in sent:
                latencies.append(now - sent[seq])
            seen = max(seen, seq)
        time.sleep(POLL_S)
    client.loop_stop()
    client.disconnect()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hub_run(
    settings: Settings, total: int, devices: int, per_device: int, processes: int, log: Path
) -> tuple[float, list[float], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env.update(
        IOT_AMQP_URL=settings.amqp_url,
        IOT_INFLUX_URL=settings.influx_url,
        IOT_METRICS_PORT="0",
        IOT_RULES_FILE=str(REPO / "rules.yaml"),
    )
    with open(log, "wb") as out:
        hub = subprocess.Popen([sys.executable, "-m", "hub", "run"], cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        while log.read_text().count("event=consuming") < 4:
            if hub.poll() is not None:
                raise SystemExit(f"the hub exited: {log.read_text()}")
            time.sleep(0.1)
        stop = threading.Event()
        latencies: list[float] = []
        prober = threading.Thread(target=probe_latencies, args=(settings, stop, latencies), daemon=True)
        prober.start()
        time.sleep(1.0)  # idle latency first
        started = time.monotonic()
        cpu_before = cpu_seconds(hub.pid)
        _done, procs = start_publishers(settings, "hub", devices, per_device, processes)
        stored = 0
        last_report = started
        while stored < total:
            time.sleep(COUNT_POLL_S)
            stored = influx_count(settings, "SELECT count(seq) FROM environment WHERE site = 'bench'")
            elapsed = time.monotonic() - started
            if time.monotonic() - last_report < PROGRESS_EVERY_S and stored < total:
                continue
            last_report = time.monotonic()
            console.print(
                f"  hub end-to-end: {stored:>8} / {total} stored, {stored / elapsed:8.0f}/s, "
                f"probe p50 {1000 * statistics.median(latencies) if latencies else 0:.0f} ms"
            )
            if hub.poll() is not None:
                raise SystemExit(f"the hub exited: {log.read_text()[-2000:]}")
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(hub.pid) - cpu_before
        stop.set()
        prober.join()
        for proc in procs:
            proc.join()
        return total / elapsed, latencies, cpu
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(60)


# --- 3. InfluxDB alone ---------------------------------------------------------------------------


def influx_ceiling(settings: Settings, devices: int, per_device: int) -> float:
    """InfluxDB's own rate: the batches are encoded before the clock starts, as only InfluxDB is measured."""
    client = InfluxHttp(settings.influx_url, "bench_ceiling")
    client.create_database()
    base_ts = now_ms() - 7_200_000
    points = [
        reading_point(make_reading("inf", device, seq, base_ts), "mqtt")
        for seq in range(per_device)
        for device in range(devices)
    ]
    payloads = [
        lines_payload(points[start : start + BATCH_MAX_POINTS]) for start in range(0, len(points), BATCH_MAX_POINTS)
    ]
    started = time.monotonic()
    last_report = started
    for index, payload in enumerate(payloads):
        start = index * BATCH_MAX_POINTS
        client.write(payload)
        if time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            done = start + BATCH_MAX_POINTS
            console.print(
                f"  influxdb alone: {done:>8} / {len(points)} written, {done / (last_report - started):8.0f}/s"
            )
    elapsed = time.monotonic() - started
    client.close()
    return len(points) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=60_000, help="readings per phase")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (one MQTT connection each)")
    args = parser.parse_args()
    per_device = max(1, args.readings // args.devices)
    total = per_device * args.devices

    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        root = Path(tmp)
        settings = settings_on_free_ports(root / "stack")
        stack = Stack(settings)
        console.print(f"starting a stack under {root} ...")
        try:
            stack.up(lambda message: console.print(f"  {message}"))
            create_gateway(settings)
            console.print(f"[bold]1. RabbitMQ alone[/] ({total} readings, {args.publishers} MQTT publishers, QoS 1)")
            rabbit = rabbit_ceiling(settings, total, args.devices, per_device, args.publishers)
            console.print("[bold]2. the hub[/] (python -m hub run, all services)")
            hub_rate, latencies, hub_cpu = hub_run(
                settings, total, args.devices, per_device, args.publishers, root / "hub.log"
            )
            console.print(f"[bold]3. InfluxDB alone[/] (same points, batches of {BATCH_MAX_POINTS})")
            influx = influx_ceiling(settings, args.devices, per_device)
        finally:
            stack.down()

    ceiling = min(rabbit, influx)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else [0.0] * 99
    table = Table(title=f"hub throughput: {total} readings from {args.devices} MQTT devices (QoS 1)")
    table.add_column("what")
    table.add_column("readings/s", justify="right")
    table.add_column("share of lower ceiling", justify="right")
    table.add_row("RabbitMQ alone (publish -> ack-only consumer)", f"{rabbit:,.0f}", f"{rabbit / ceiling:.0%}")
    table.add_row("InfluxDB alone (batched line protocol writes)", f"{influx:,.0f}", f"{influx / ceiling:.0%}")
    table.add_row("hub end-to-end (publish -> queryable)", f"{hub_rate:,.0f}", f"[bold]{hub_rate / ceiling:.0%}[/]")
    console.print(table)
    latency = Table(
        title=f"publish-to-queryable latency of a probe reading ({len(latencies)} samples, poll {POLL_S * 1000:.0f} ms)"
    )
    for column in ("p50 ms", "p99 ms", "max ms"):
        latency.add_column(column, justify="right")
    latency.add_row(
        f"{quantiles[49] * 1000:.0f}", f"{quantiles[98] * 1000:.0f}", f"{max(latencies, default=0) * 1000:.0f}"
    )
    console.print(latency)
    console.print(
        f"hub process CPU during the run: {hub_cpu:.1f} s for {total} readings "
        f"({1e6 * hub_cpu / total:.0f} µs per reading, store + rules + presence + commands), "
        f"{100 * hub_cpu * hub_rate / total:.0f}% of one core at the measured rate"
    )


if __name__ == "__main__":
    main()
