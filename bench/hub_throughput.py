"""How fast `python -m hub run` moves readings from MQTT devices into InfluxDB, against its ceilings.

    python -m bench.hub_throughput [--readings 60000] [--devices 200] [--publishers 2]
                                   [--invalid-share 0.25] [--rate 1000] [--duration 60] [--commands 200]
                                   [--profile] [--hub-checkout PATH]

Starts its own stack (RabbitMQ + influxd on free ports in a temporary directory) and measures,
in the same run, with the same publishers (MQTT QoS 1, one paho client per process):

1. RabbitMQ alone: the readings published into exchange `iot` and drained from the telemetry
   partitions `hub.telemetry.<p>` by one consumer that only acks (the same queues the hub gets);
2. the hub (`python -m hub run`, all services, `IOT_UNKNOWN_SENSORS=dead_letter`), flat out:
   a. all readings valid: end-to-end rate = readings / time from the first publish until the
      last reading is queryable;
   b. the same with `--invalid-share` of the devices sending a sensor the hub does not know
      (dead-lettered): rate = messages handled (stored + dead-lettered) / time;
   both with the publish-to-queryable latency of a probe device (one reading every
   PROBE_INTERVAL_S, polled every POLL_S) and the hub's CPU per message;
3. the hub at a steady load: `--rate` readings/s (as many devices, one reading/s each, spread over
   the publisher processes) for `--duration` s: probe latency, the hub's own histogram of reading
   age at storage, and `--commands` command round trips (CLI -> simulated device -> ack at the CLI,
   split into legs beside a bare paho echo device's, see `bench.command_legs`), beside the same
   figures with the hub idle;
4. InfluxDB alone: the same points as line protocol, written in batches of BATCH_MAX_POINTS.

With `--profile`, py-spy samples the hub during 2a and the functions at the top of its profile
are printed after the throughput table (`bench.profile`).

With `--hub-checkout`, the hub measured is another checkout's `python -m hub run` (with its own
.venv), against the stack and load of this one: the same bench, before and after a change.

Prints live progress, a table per part and, last, one summary: each figure beside its ceiling
and its goal, with the date, the machine and the versions.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.command_legs import POLL_S as RECORD_POLL_S
from bench.command_legs import EchoDevice, RoundTrips, command_round_trips, watching_records
from bench.harness import REPO, HubProcess, bench_stack, run_header, running_hub
from bench.load import (
    amqp,
    create_gateway,
    influx_count,
    influx_seqs,
    make_reading,
    mqtt_client,
    quantile_ms,
    start_processes,
    start_publishers,
    steady_publisher,
)
from bench.procstat import cpu_seconds
from bench.profile import Profile, sampling, top_table
from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.clients import influx
from hub.clients.influx import InfluxHttp
from hub.control.identity import provision_into
from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_QUEUE, Reading, encode, mqtt_topic, now_ms
from hub.core.signals import interrupt_on_stop_signals
from hub.outputs.lineprotocol import lines_payload
from hub.runtime.batch import BATCH_MAX_POINTS
from hub.runtime.topology import partitions
from hub.services.store.readings import reading_point

console = Console(width=150)

#: The latency probe publishes one reading this often...
PROBE_INTERVAL_S = 0.05
#: ...and InfluxDB is polled for it this often (the resolution of the latency figures).
POLL_S = 0.02
PROGRESS_EVERY_S = 1.0
#: How often the stored count is read during a hub phase (the resolution of its end time).
COUNT_POLL_S = 0.2
#: The probe alone against the idle hub, before any load: the latency floor.
IDLE_S = 5.0
#: The probe's device id (its readings are counted apart from the load's).
PROBE = "probe"
#: Simulated devices that answer the steady phase's commands (beside the load).
COMMAND_DEVICES = 10
#: The bare paho device that answers commands beside the simulated ones (the broker + CLI baseline).
ECHO_DEVICE = "echo-0001"
#: Commands sent to the idle hub, for the round trip's floor.
IDLE_COMMANDS = 20
#: The goals of issue 14, printed beside the figures.
GOAL_SHARE_OF_BROKER = 0.9
GOAL_INVALID_SHARE_OF_VALID = 0.9
GOAL_P99_RISE = 0.2
GOAL_CPU_US = 40.0
GOAL_STEADY_P99_MS = 150.0
GOAL_COMMAND_P99_MS = 50.0
#: The hub's histogram of reading age at storage, read from its /metrics.
AGE_HISTOGRAM = "hub_reading_age_at_storage_seconds"


def stored(settings: Settings, site: str) -> int:
    return influx_count(settings, f"SELECT count(seq) FROM environment WHERE site = '{site}' AND device != '{PROBE}'")


def dead_lettered(settings: Settings) -> int:
    connection = amqp(settings)
    try:
        return int(connection.channel().queue_declare(DEAD_LETTER_QUEUE, passive=True).method.message_count)
    finally:
        connection.close()


# --- 1. RabbitMQ alone ---------------------------------------------------------------------------


@dataclass
class Ceiling:
    rate: float
    #: CPU of the ack-only pika consumer per message: the floor of any pika consumer's cost per delivery.
    consumer_cpu_us: float


def rabbit_ceiling(settings: Settings, total: int, devices: int, per_device: int, processes: int) -> Ceiling:
    connection = amqp(settings)
    channel = connection.channel()
    received = 0
    started = time.monotonic()
    cpu_before = time.process_time()

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal received
        received += 1
        if received % 1000 == 0 or received == total:
            ch.basic_ack(method.delivery_tag, multiple=True)

    for queue in partitions(settings.partitions):  # as the hub: every partition on one channel
        channel.basic_qos(prefetch_count=queue.prefetch)
        channel.basic_consume(queue.name, on_message)
    procs = start_publishers(settings, "rmq", devices, per_device, processes)
    last_report = started
    while received < total:
        connection.process_data_events(time_limit=0.1)
        if time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            console.print(
                f"  rabbitmq alone: {received:>8} / {total} acked, {received / (last_report - started):8.0f}/s"
            )
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    connection.close()
    for proc in procs:
        proc.join()
    return Ceiling(total / elapsed, 1e6 * cpu / total)


# --- 2 and 3. the hub ----------------------------------------------------------------------------


@dataclass
class Phase:
    """What one hub phase measured."""

    name: str
    messages: int
    elapsed_s: float
    cpu_s: float
    latencies: list[float] = field(default_factory=list)
    #: Where the hub's CPU went during the phase (`--profile`), else None.
    profile: Profile | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.messages if self.messages else 0.0


@contextmanager
def probing(settings: Settings, site: str) -> Iterator[list[float]]:
    """Publish a probe reading every PROBE_INTERVAL_S; poll InfluxDB and time each until it is queryable."""
    stop = threading.Event()
    latencies: list[float] = []
    client = mqtt_client(settings, f"bench-probe-{site}")
    sent: dict[int, float] = {}

    def publish_probes() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            reading = Reading(
                device=PROBE, site=site, kind="environment", seq=seq, ts=now_ms(), readings={"temperature": 1.0}
            )
            sent[seq] = time.monotonic()
            client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1)
            stop.wait(PROBE_INTERVAL_S)

    def poll() -> None:
        seen = 0
        while not stop.is_set():
            found = influx_seqs(
                settings, f"SELECT seq FROM environment WHERE site = '{site}' AND device = '{PROBE}' AND seq > {seen}"
            )
            now = time.monotonic()
            for seq in found:
                if seq in sent:
                    latencies.append(now - sent[seq])
                seen = max(seen, seq)
            time.sleep(POLL_S)

    threads = [threading.Thread(target=target, daemon=True) for target in (publish_probes, poll)]
    for thread in threads:
        thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        client.loop_stop()
        client.disconnect()


def hub_phase(
    settings: Settings,
    hub: HubProcess,
    name: str,
    valid: int,
    invalid: int,
    start_load: Callable[[], list[Any]],
    profile_path: Path | None = None,
) -> Phase:
    """Run the load `start_load` starts until `valid` readings of site `name` are stored and
    `invalid` more messages are dead-lettered; time it, with the probe and the hub's CPU (and,
    with `profile_path`, py-spy's samples of the hub)."""
    dead_before = dead_lettered(settings)
    with ExitStack() as profiling, probing(settings, name) as latencies:
        time.sleep(1.0)
        profile = profiling.enter_context(sampling(hub.pid, profile_path)) if profile_path else None
        started = time.monotonic()
        cpu_before = cpu_seconds(hub.pid)
        procs = start_load()
        count = dead = 0
        last_report = started
        while count < valid or dead < invalid:
            time.sleep(COUNT_POLL_S)
            count = stored(settings, name)
            dead = dead_lettered(settings) - dead_before if invalid else 0
            elapsed = time.monotonic() - started
            hub.check()
            if time.monotonic() - last_report < PROGRESS_EVERY_S:
                continue
            last_report = time.monotonic()
            console.print(
                f"  {name}: {count:>8} / {valid} stored, {dead:>6} / {invalid} dead-lettered, "
                f"{(count + dead) / elapsed:8.0f}/s, probe p50 {quantile_ms(latencies, 50):.0f} ms"
            )
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(hub.pid) - cpu_before
    for proc in procs:
        proc.join()
    return Phase(name, valid + invalid, elapsed, cpu, latencies, profile)


def idle_latencies(settings: Settings) -> list[float]:
    with probing(settings, "idle") as latencies:
        time.sleep(IDLE_S)
    return list(latencies)


def age_buckets(hub: HubProcess) -> dict[float, float]:
    """The cumulative buckets (upper bound s -> count) of the hub's reading-age histogram."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(hub.metrics()):
        if family.name == AGE_HISTOGRAM:
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (s) of the bucket holding quantile `q` of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if total and count >= q * total:
            return bound
    return float("nan")


@dataclass
class Steady:
    phase: Phase
    age_p50_s: float
    age_p99_s: float
    #: The steady phase's commands, leg by leg, to the simulated devices and to the echo device.
    commands: RoundTrips
    idle_commands: RoundTrips
    #: The outbound leg of the same commands as the hub recorded it: the ack's `ts` minus the command's.
    outbound: list[float]
    #: The hub's recording of the simulated devices' and the echo device's acks: ack `ts` -> row queryable.
    recorded: list[float]
    echo_recorded: list[float]


def recorded_legs(settings: Settings, since_ms: int) -> list[float]:
    """`rtt_ms` (s) of the CLI's commands answered `ok` since `since_ms`, as the hub recorded them."""
    [series] = influx.query(
        settings, f"SELECT rtt_ms FROM commands WHERE status = 'ok' AND origin = 'cli' AND time >= {since_ms}ms"
    )
    return [float(row["rtt_ms"]) / 1000 for one in series for row in one.rows if row.get("rtt_ms") is not None]


def steady_phase(
    settings: Settings, hub: HubProcess, rate: int, duration_s: int, processes: int, commands: int
) -> Steady:
    command_devices = [spec.device_id for spec in plan_fleet(COMMAND_DEVICES, protocol="mqtt", site="cmd")]
    held = provision_into(settings, [*command_devices, ECHO_DEVICE], settings.credentials_path)
    with (
        Fleet(settings, count=COMMAND_DEVICES, protocol="mqtt", interval_s=10.0, site="cmd", seed=1) as fleet,
        EchoDevice(settings, ECHO_DEVICE, held[ECHO_DEVICE].password) as echo,
        watching_records(settings) as record_delays,
    ):
        fleet.wait_online()
        targets = [device.device_id for device in fleet.devices]
        idle_commands = command_round_trips(settings, targets, fleet.command_times, echo, IDLE_COMMANDS, 0.05)
        before = age_buckets(hub)
        steady_from_ms = now_ms()
        trips: list[RoundTrips] = []
        # Half the phase: one command to a simulated device, then one to the echo device.
        pace_s = duration_s / commands / 4
        sender = threading.Thread(
            target=lambda: trips.append(
                command_round_trips(settings, targets, fleet.command_times, echo, commands, pace_s)
            ),
            daemon=True,
        )

        def load() -> list[Any]:
            procs = start_processes(steady_publisher, rate, processes, settings, "steady", duration_s)
            sender.start()
            return procs

        phase = hub_phase(settings, hub, "steady", duration_s * rate, 0, load)
        sender.join()
        after = age_buckets(hub)
    [steady_trips] = trips
    return Steady(
        phase,
        bucket_quantile(before, after, 0.5),
        bucket_quantile(before, after, 0.99),
        steady_trips,
        idle_commands,
        recorded_legs(settings, steady_from_ms),
        record_delays(steady_trips.simulated.ids),
        record_delays(steady_trips.echo.ids),
    )


# --- 4. InfluxDB alone ---------------------------------------------------------------------------


def influx_ceiling(settings: Settings, devices: int, per_device: int) -> float:
    """InfluxDB's own rate: the batches are encoded before the clock starts, as only InfluxDB is measured."""
    # A database of its own: only InfluxDB's admin may make it (and the admin may write to any).
    admin = settings.influx_admin
    client = InfluxHttp(settings.influx_url, "bench_ceiling", user=admin.user, password=admin.password)
    client.create_database()
    base_ts = now_ms() - 7_200_000
    points = [
        reading_point(make_reading("inf", device, seq, base_ts + seq), "mqtt")
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


# --- the tables ----------------------------------------------------------------------------------


def throughput_table(total: int, devices: int, rabbit: float, influx_rate: float, phases: list[Phase]) -> Table:
    ceiling = min(rabbit, influx_rate)
    table = Table(title=f"hub throughput: {total} messages from {devices} MQTT devices (QoS 1)")
    for column in ("what", "messages/s", "share of lower ceiling", "probe p50 / p99 / max ms", "hub CPU/message"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("RabbitMQ alone (publish -> ack-only consumer)", f"{rabbit:,.0f}", f"{rabbit / ceiling:.0%}", "", "")
    table.add_row("InfluxDB alone (batched writes)", f"{influx_rate:,.0f}", f"{influx_rate / ceiling:.0%}", "", "")
    for phase in phases:
        table.add_row(
            f"hub: {phase.name}",
            f"{phase.rate:,.0f}",
            f"{phase.rate / ceiling:.0%}",
            " / ".join(f"{v:.0f}" for v in latency_figures(phase.latencies)),
            f"{phase.cpu_us:.0f} µs",
        )
    return table


def latency_figures(latencies: list[float]) -> tuple[float, float, float]:
    return quantile_ms(latencies, 50), quantile_ms(latencies, 99), 1000 * max(latencies, default=0.0)


def verdict(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]not met[/]"


def summary_table(
    settings: Settings,
    ceiling: Ceiling,
    influx_rate: float,
    valid: Phase,
    mixed: Phase,
    invalid_share: float,
    idle: list[float],
    steady: Steady | None,
    rate: int,
) -> Table:
    table = Table(title=f"summary, {run_header(settings)}")
    rabbit = ceiling.rate
    for column in ("figure", "measured", "ceiling (same run)", "goal", ""):
        table.add_column(column, justify="left" if column == "figure" else "right")
    share = valid.rate / rabbit
    table.add_row(
        "hub end to end, all valid",
        f"{valid.rate:,.0f}/s",
        f"RabbitMQ alone {rabbit:,.0f}/s ({share:.0%})",
        f"≥ {GOAL_SHARE_OF_BROKER:.0%} of it",
        verdict(share >= GOAL_SHARE_OF_BROKER),
    )
    ratio = mixed.rate / valid.rate
    table.add_row(
        f"hub end to end, {invalid_share:.0%} invalid",
        f"{mixed.rate:,.0f}/s",
        f"all valid {valid.rate:,.0f}/s ({ratio:.2f}×)",
        f"≥ {GOAL_INVALID_SHARE_OF_VALID}×",
        verdict(ratio >= GOAL_INVALID_SHARE_OF_VALID),
    )
    p99_valid, p99_mixed = quantile_ms(valid.latencies, 99), quantile_ms(mixed.latencies, 99)
    table.add_row(
        f"probe p99, {invalid_share:.0%} invalid",
        f"{p99_mixed:.0f} ms",
        f"all valid {p99_valid:.0f} ms",
        f"≤ +{GOAL_P99_RISE:.0%}",
        verdict(p99_mixed <= (1 + GOAL_P99_RISE) * p99_valid),
    )
    table.add_row(
        "hub CPU per message, all services",
        f"{valid.cpu_us:.0f} µs (invalid run {mixed.cpu_us:.0f})",
        f"ack-only pika consumer {ceiling.consumer_cpu_us:.0f} µs per delivery",
        f"≤ {GOAL_CPU_US:.0f} µs",
        verdict(valid.cpu_us <= GOAL_CPU_US),
    )
    table.add_row("InfluxDB alone", f"{influx_rate:,.0f}/s", "", "", "")
    idle_p50, idle_p99, _max = latency_figures(idle)
    if steady is not None:
        p50, p99, top = latency_figures(steady.phase.latencies)
        table.add_row(
            f"publish -> queryable at {rate:,}/s, p50 / p99 / max",
            f"{p50:.0f} / {p99:.0f} / {top:.0f} ms",
            f"idle hub {idle_p50:.0f} / {idle_p99:.0f} ms",
            f"p99 ≤ {GOAL_STEADY_P99_MS:.0f} ms",
            verdict(p99 <= GOAL_STEADY_P99_MS),
        )
        table.add_row(
            f"reading age at storage at {rate:,}/s (hub histogram), p50 / p99 ≤",
            f"{1000 * steady.age_p50_s:.0f} / {1000 * steady.age_p99_s:.0f} ms",
            "",
            "",
            "",
        )
        simulated = steady.commands.simulated
        rtts = simulated.legs["round_trip"]
        c50, c99 = quantile_ms(rtts, 50), quantile_ms(rtts, 99)
        idle_rtts = steady.idle_commands.simulated.legs["round_trip"]
        table.add_row(
            f"command round trip at {rate:,}/s ({len(rtts)}, {simulated.missed} unanswered), p50 / p99",
            f"{c50:.0f} / {c99:.0f} ms",
            f"idle hub {quantile_ms(idle_rtts, 50):.0f} / {quantile_ms(idle_rtts, 99):.0f} ms",
            f"p99 ≤ {GOAL_COMMAND_P99_MS:.0f} ms",
            verdict(c99 <= GOAL_COMMAND_P99_MS),
        )
        for label, mine, echo_samples in command_leg_rows(steady):
            table.add_row(label, p50_p99(mine), f"bare paho echo {p50_p99(echo_samples)}", "", "")
        o50, o99 = quantile_ms(steady.outbound, 50), quantile_ms(steady.outbound, 99)
        table.add_row(
            "  CLI -> device as the hub recorded it (ack ts - command ts), p50 / p99",
            f"{o50:.0f} / {o99:.0f} ms",
            "",
            "",
            "",
        )
        table.add_row(f"hub CPU per reading at {rate:,}/s", f"{steady.phase.cpu_us:.0f} µs", "", "", "")
    return table


def p50_p99(samples: list[float]) -> str:
    return f"{quantile_ms(samples, 50):.1f} / {quantile_ms(samples, 99):.1f} ms" if samples else "-"


def command_leg_rows(steady: Steady) -> list[tuple[str, list[float], list[float]]]:
    """(label, simulated device's samples, echo device's samples) per leg of the steady phase's commands."""
    simulated, echo = steady.commands.simulated.legs, steady.commands.echo.legs
    labels = {
        "round_trip": f"  round trip (echo: {len(echo['round_trip'])} answered), p50 / p99",
        "cli_before": "  CLI before the publish (validate, bind, ask who is subscribed)",
        "confirm": "  CLI publish -> broker confirm (beside the next leg)",
        "outbound": "  CLI publish -> device takes the command",
        "device": "  device takes it -> ack written (simulator's handling)",
        "back": "  ack written -> CLI has it",
        "held": "    of which it waited for the command's confirm (at most)",
        "free_back": "  ack written -> an AMQP consumer not waiting for a confirm has it",
        "free_round_trip": "  round trip if acks did not wait for the confirm (that consumer's)",
        "cli_after": "  CLI has the ack -> send() returns",
    }
    rows = [(label, simulated[leg], echo[leg]) for leg, label in labels.items()]
    rows.append(
        (
            f"  ack ts -> row in commands (hub; polled every {1000 * RECORD_POLL_S:.0f} ms)",
            steady.recorded,
            steady.echo_recorded,
        )
    )
    return rows


def main() -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks below: the stack stops with the benchmark.
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=60_000, help="readings per flat-out phase")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (one MQTT connection each)")
    parser.add_argument("--invalid-share", type=float, default=0.25, help="share of devices sending invalid readings")
    parser.add_argument("--rate", type=int, default=1000, help="steady phase: devices, one reading/s each (0: skip)")
    parser.add_argument("--duration", type=int, default=60, help="steady phase: seconds")
    parser.add_argument("--commands", type=int, default=200, help="steady phase: command round trips")
    parser.add_argument(
        "--profile", action="store_true", help="sample the hub with py-spy in the all-valid phase; print its top"
    )
    parser.add_argument(
        "--hub-checkout",
        type=Path,
        default=REPO,
        help="the checkout whose `python -m hub run` to measure (its own .venv), against a stack of this one",
    )
    args = parser.parse_args()
    per_device = max(1, args.readings // args.devices)
    total = per_device * args.devices
    invalid_every = round(1 / args.invalid_share) if args.invalid_share > 0 else 0
    invalid_devices = len(range(0, args.devices, invalid_every)) if invalid_every else 0
    invalid_share = invalid_devices / args.devices

    with bench_stack("hub-bench-", console.print) as bench:
        root, settings = bench.root, bench.settings
        create_gateway(settings)
        console.print(f"[bold]1. RabbitMQ alone[/] ({total} readings, {args.publishers} MQTT publishers, QoS 1)")
        ceiling = rabbit_ceiling(settings, total, args.devices, per_device, args.publishers)
        rabbit = ceiling.rate
        hub_env = {"IOT_UNKNOWN_SENSORS": "dead_letter"}
        with running_hub(settings, root / "hub.log", checkout=args.hub_checkout, metrics=True, env=hub_env) as hub:
            console.print(
                f"[bold]2. the hub[/] (python -m hub run of {args.hub_checkout}, all services): idle, then flat out"
            )
            idle = idle_latencies(settings)
            valid = hub_phase(
                settings,
                hub,
                "valid",
                total,
                0,
                lambda: start_publishers(settings, "valid", args.devices, per_device, args.publishers),
                root / "hub-valid.pyspy" if args.profile else None,
            )
            bad = invalid_devices * per_device
            mixed = hub_phase(
                settings,
                hub,
                "mixed",
                total - bad,
                bad,
                lambda: start_publishers(settings, "mixed", args.devices, per_device, args.publishers, invalid_every),
            )
            steady = None
            if args.rate:
                console.print(
                    f"[bold]3. the hub at a steady load[/] ({args.rate} devices x 1 reading/s, "
                    f"{args.duration:.0f} s, {args.commands} commands)"
                )
                steady = steady_phase(settings, hub, args.rate, args.duration, args.publishers, args.commands)
        console.print(f"[bold]4. InfluxDB alone[/] (same points, batches of {BATCH_MAX_POINTS})")
        influx_rate = influx_ceiling(settings, args.devices, per_device)
        phases = [valid, mixed] + ([steady.phase] if steady else [])
        console.print(throughput_table(total, args.devices, rabbit, influx_rate, phases))
        if valid.profile is not None:
            console.print(top_table(valid.profile, "the hub flat out, all valid"))
        console.print(
            summary_table(settings, ceiling, influx_rate, valid, mixed, invalid_share, idle, steady, args.rate)
        )


if __name__ == "__main__":
    main()
