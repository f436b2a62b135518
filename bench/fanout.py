"""How a reading fans out inside the broker, topology by topology: `python -m bench.fanout` (issue 14, item 2).

    python -m bench.fanout [--quick] [--phase-s 20] [--devices 100] [--publishers 3]

Starts its own stack (RabbitMQ + influxd on free ports in a temporary directory; the node also
gets the `rabbitmq_stream` and `rabbitmq_consistent_hash_exchange` plugins and a stream listener
on a free loopback port, see `prepare_node`) and drives every phase with the same load: MQTT
QoS 1 readings from `--devices` devices over `--publishers` paho connections (the bench gateway
account of bench.hub_throughput), flat out. Each phase declares its topology fresh, measures
`--phase-s` seconds after a warm-up, and deletes it again:

- nobody consuming: a. the ceiling, `telemetry.#` into ONE quorum queue; b. today, two quorum
  queues (store, rules); c. `iot` -> consistent-hash exchange -> 4 quorum queues (single active
  consumer); d. one stream; then a. again, to show how much the machine drifted during the run;
- drained by a minimal pika consumer per service (basic.qos prefetch, a msgspec decode of each
  reading, ack multiple every ACK_EVERY): a. the one queue consumed once (services fed in
  process); b. one consumer per queue; c. one consumer of all 4 queues; d. the stream read twice
  over AMQP 0-9-1 (`x-stream-offset`, manual ack), as two services would; d. the stream read
  twice over the stream protocol (rstream, offset stored every ACK_EVERY).

Per phase: readings/s into the broker (PUBACKs), its share of the ceiling, drained readings/s
(the slowest reader), the consumer processes' CPU per delivery and per reading (from /proc), and
the broker's CPU seconds per 1,000 readings (its beam process, from /proc). The load average is
printed before and after: the machine is shared.

Durability: quorum queues confirm after their write-ahead log is fsynced; a stream confirms
once the chunk is written (streams do not fsync and rely on replicas), so on one node a stream
promises less than a quorum queue for the same confirm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pika
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bench.harness import bench_stack, broker_pid
from bench.load import (
    MAX_INFLIGHT,
    amqp,
    create_gateway,
    make_reading,
    mqtt_client,
    start_processes,
)
from bench.procstat import usage
from hub.clients.management import read_broker_version
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, Reading, decode, encode, mqtt_topic, now_ms
from hub.core.signals import interrupt_on_stop_signals
from hub.stack.processes import free_port

console = Console(width=160)

#: Seconds measured per phase, after WARMUP_S of load (`--quick`: the QUICK_ values).
PHASE_S = 20.0
WARMUP_S = 3.0
QUICK_PHASE_S = 6.0
QUICK_WARMUP_S = 2.0
DEVICES = 100
PUBLISHERS = 3
#: Deliveries a consumer lets through before it acks them all at once (ack multiple).
ACK_EVERY = 1_000
#: Unacknowledged deliveries a consumer may hold (the hub's store queue prefetch).
PREFETCH = 10_000
#: rstream's credit: chunks the broker may send ahead of the reader.
STREAM_CREDIT = 10
#: Seconds a consumer process gets to connect and subscribe, and any process to end once told to stop.
START_WAIT_S = 30.0
STOP_WAIT_S = 30.0
PROGRESS_EVERY_S = 1.0
#: The routing key every topology takes from exchange `iot`.
TELEMETRY = "telemetry.#"
#: Names the hub user may declare (its permissions cover `hub.*`).
PREFIX = "hub.bench"
HASH_EXCHANGE = f"{PREFIX}.hash"
#: Queues behind the consistent-hash exchange (the hub's design has P of them).
HASH_QUEUES = 4
#: Each queue's binding key: its weight, the points it gets on the exchange's hash ring (more: an evener split).
HASH_WEIGHT = 20
#: The bench node's plugins: rabbitmq/enabled_plugins plus the two the alternatives need.
BENCH_PLUGINS = (
    "rabbitmq_management",
    "rabbitmq_mqtt",
    "rabbitmq_stomp",
    "rabbitmq_prometheus",
    "rabbitmq_stream",
    "rabbitmq_consistent_hash_exchange",
)


# --- topologies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """Queues bound to `telemetry.#` of exchange `iot`, directly or through a consistent-hash exchange."""

    label: str
    queues: tuple[str, ...]
    queue_type: str = "quorum"
    hashed: bool = False
    #: Queues declared with single-active-consumer (as the hub's rules queue and the hashed design).
    single_active: tuple[str, ...] = ()

    def declare(self, channel: Any) -> None:
        source = EXCHANGE
        if self.hashed:
            channel.exchange_declare(HASH_EXCHANGE, "x-consistent-hash", durable=True)
            channel.exchange_bind(HASH_EXCHANGE, EXCHANGE, TELEMETRY)
            source = HASH_EXCHANGE
        for queue in self.queues:
            arguments: dict[str, Any] = {"x-queue-type": self.queue_type}
            if queue in self.single_active:
                arguments["x-single-active-consumer"] = True
            channel.queue_declare(queue, durable=True, arguments=arguments)
            channel.queue_bind(queue, source, str(HASH_WEIGHT) if self.hashed else TELEMETRY)

    def fresh(self, tag: str) -> Topology:
        """The same topology under new queue names: a queue deleted a moment ago may still be cleaning up."""
        rename = {queue: f"{queue}.{tag}" for queue in self.queues}
        return replace(self, queues=tuple(rename.values()), single_active=tuple(rename[q] for q in self.single_active))

    def depths(self, channel: Any) -> list[int]:
        return [int(channel.queue_declare(q, passive=True).method.message_count) for q in self.queues]

    def delete(self, channel: Any) -> None:
        for queue in self.queues:
            channel.queue_delete(queue)
        if self.hashed:
            channel.exchange_delete(HASH_EXCHANGE)


CEILING = Topology("a. 1 quorum queue", (f"{PREFIX}.one",))
TODAY = Topology(
    "b. 2 quorum queues (today)", (f"{PREFIX}.store", f"{PREFIX}.rules"), single_active=(f"{PREFIX}.rules",)
)
_HASHED_QUEUES = tuple(f"{PREFIX}.telemetry.{p}" for p in range(HASH_QUEUES))
HASHED = Topology(
    f"c. hash exchange -> {HASH_QUEUES} quorum queues", _HASHED_QUEUES, hashed=True, single_active=_HASHED_QUEUES
)
STREAM = Topology("d. 1 stream", (f"{PREFIX}.stream",), queue_type="stream")


# --- the stack -----------------------------------------------------------------------------------


def prepare_node(stack_dir: Path, stream_port: int) -> None:
    """Give the bench's node the two plugins and a stream listener, without touching rabbitmq/.

    The node reads `rabbitmq-env.conf` and `conf.d/` from its own home (see hub.stack.rabbitmq):
    ENABLED_PLUGINS there replaces the plugin list for this node only (the node writes it into
    its plugins file, the copy in its home), and the stream listener gets a free loopback port
    (the default 5552, on every interface, may be another stack's).
    """
    home = stack_dir / "rabbitmq"
    (home / "conf.d").mkdir(parents=True, exist_ok=True)
    (home / "rabbitmq-env.conf").write_text(f"ENABLED_PLUGINS={','.join(BENCH_PLUGINS)}\n")
    (home / "conf.d" / "90-bench-stream.conf").write_text(
        f"stream.listeners.tcp.1 = 127.0.0.1:{stream_port}\n"
        "stream.advertised_host = 127.0.0.1\n"
        f"stream.advertised_port = {stream_port}\n"
    )


# --- the load ------------------------------------------------------------------------------------


def timed_publisher(settings: Settings, site: str, devices: range, stop: Any, acked: Any, done: Any) -> None:
    """One MQTT connection publishing readings of `devices`, QoS 1, flat out until `stop`; PUBACKs into `acked`."""
    client = mqtt_client(settings, f"fanout-{site}-{devices.start}")
    confirmed = reported = 0

    def on_publish(*_args: object) -> None:
        nonlocal confirmed
        confirmed += 1

    client.on_publish = on_publish
    base_ts, seq = now_ms() - 3_600_000, 0
    while not stop.is_set():
        for device in devices:
            reading = make_reading(site, device, seq, base_ts + seq)
            client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1)
        seq += 1
        reported = _report(acked, confirmed, reported)
        while len(client._out_messages) > MAX_INFLIGHT * 4 and not stop.is_set():  # the broker sets the pace
            time.sleep(0.001)
    # No waiting for the last PUBACKs: the window is measured, and a backlog drains slowly into a slow topology.
    _report(acked, confirmed, reported)
    client.loop_stop()
    client.disconnect()
    done.value += 1


def _report(counter: Any, total: int, reported: int) -> int:
    """Add what was counted since the last report to a shared counter; the new reported total."""
    with counter.get_lock():
        counter.value += total - reported
    return total


# --- the consumers: one process per service ------------------------------------------------------


def amqp_reader(settings: Settings, queues: tuple[str, ...], stream: bool, stop: Any, ready: Any, count: Any) -> None:
    """A minimal pika service: decode each reading, ack multiple every ACK_EVERY deliveries."""
    connection = amqp(settings)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    delivered = reported = 0
    last_tag = 0

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        nonlocal delivered, reported, last_tag
        decode(body, Reading)
        delivered += 1
        last_tag = method.delivery_tag
        if delivered % ACK_EVERY == 0:
            ch.basic_ack(last_tag, multiple=True)
            reported = _report(count, delivered, reported)

    arguments = {"x-stream-offset": "first"} if stream else None
    for queue in queues:
        channel.basic_consume(queue, on_message, arguments=arguments)
    ready.value = 1
    while not stop.is_set():
        connection.process_data_events(time_limit=0.2)
    if last_tag:
        channel.basic_ack(last_tag, multiple=True)
    _report(count, delivered, reported)
    # Closing cancels the consumer and pika rejects what it still buffers, which a stream refuses
    # (NOT_IMPLEMENTED) by closing the connection: harmless here, the counts are reported.
    with contextlib.suppress(pika.exceptions.AMQPError):
        connection.close()


def stream_protocol_reader(
    settings: Settings, stream: str, port: int, name: str, stop: Any, ready: Any, count: Any
) -> None:
    """The same service over the stream protocol (rstream): decode each reading, store the offset every ACK_EVERY."""
    asyncio.run(_stream_protocol_reader(settings, stream, port, name, stop, ready, count))


async def _stream_protocol_reader(
    settings: Settings, stream: str, port: int, name: str, stop: Any, ready: Any, count: Any
) -> None:
    from rstream import Consumer, ConsumerOffsetSpecification, OffsetType, amqp_decoder

    amqp_parts = settings.amqp
    delivered = reported = 0
    consumer = Consumer(
        "127.0.0.1", port, username=amqp_parts.user, password=amqp_parts.password, vhost=amqp_parts.vhost
    )

    async def on_message(message: Any, context: Any) -> None:
        nonlocal delivered, reported
        body = message.body  # one data section: bytes; several: a list of them
        decode(body if isinstance(body, bytes) else b"".join(body), Reading)
        delivered += 1
        if delivered % ACK_EVERY == 0:
            await context.consumer.store_offset(stream, name, context.offset)
            reported = _report(count, delivered, reported)

    await consumer.start()
    await consumer.subscribe(
        stream,
        on_message,
        decoder=amqp_decoder,
        offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST),
        initial_credit=STREAM_CREDIT,
        subscriber_name=name,
    )
    ready.value = 1
    while not stop.is_set():
        await asyncio.sleep(0.2)
    _report(count, delivered, reported)
    await consumer.close()


@dataclass(frozen=True)
class Reader:
    """One consumer process (one service): what it runs and with which arguments after `settings`."""

    target: Callable[..., None]
    args: tuple[Any, ...]


# --- one phase -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Counters at one instant: time, PUBACKs, deliveries per reader, CPU seconds of the readers and the broker."""

    at_s: float
    acked: int
    delivered: tuple[int, ...]
    reader_cpu_s: float
    broker_cpu_s: float


@dataclass(frozen=True)
class Figures:
    """What one phase measured between two snapshots."""

    in_per_s: float
    #: The slowest reader's deliveries/s (every reader must keep up); None without readers.
    drained_per_s: float | None
    reader_us_per_delivery: float | None
    #: Reader CPU per reading published: the sum over the services each reading reaches.
    reader_us_per_reading: float | None
    broker_cpu_s_per_1000: float


def figures(before: Snapshot, after: Snapshot) -> Figures:
    seconds = after.at_s - before.at_s
    readings = after.acked - before.acked
    deliveries = [a - b for a, b in zip(after.delivered, before.delivered, strict=True)]
    reader_cpu_us = 1e6 * (after.reader_cpu_s - before.reader_cpu_s)
    return Figures(
        in_per_s=readings / seconds,
        drained_per_s=min(deliveries) / seconds if deliveries else None,
        reader_us_per_delivery=reader_cpu_us / sum(deliveries) if deliveries and sum(deliveries) else None,
        reader_us_per_reading=reader_cpu_us / readings if deliveries and readings else None,
        broker_cpu_s_per_1000=1000 * (after.broker_cpu_s - before.broker_cpu_s) / readings if readings else 0.0,
    )


@dataclass
class Phase:
    label: str
    figures: Figures
    depths: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """What every phase shares: the stack, the load's shape and the clock."""

    settings: Settings
    beam_pid: int
    devices: int
    publishers: int
    warmup_s: float
    phase_s: float


def run_phase(
    run: Run, live: Live, label: str, topology: Topology, make_readers: Callable[[Topology], list[Reader]]
) -> Phase:
    """Declare `topology`, start its readers (each gets settings, its args, stop, ready, count), load it, measure."""
    readers = make_readers(topology)
    ctx = multiprocessing.get_context("fork")
    began = time.monotonic()
    connection = amqp(run.settings)
    channel = connection.channel()
    topology.declare(channel)
    stop = ctx.Event()
    counts = [ctx.Value("q", 0) for _ in readers]
    readies = [ctx.Value("i", 0) for _ in readers]
    procs = [
        ctx.Process(target=r.target, args=(run.settings, *r.args, stop, ready, count), daemon=True)
        for r, ready, count in zip(readers, readies, counts, strict=True)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + START_WAIT_S
    while not all(ready.value for ready in readies):
        if time.monotonic() > deadline or any(not p.is_alive() for p in procs):
            stop.set()
            raise SystemExit(f"{label}: a reader did not start")
        time.sleep(0.05)
    acked = ctx.Value("q", 0)
    site = "fan" + label.split(".")[0]
    publishers = start_processes(timed_publisher, run.devices, run.publishers, run.settings, site, stop, acked)

    def snapshot() -> Snapshot:
        return Snapshot(
            time.monotonic(),
            int(acked.value),
            tuple(int(c.value) for c in counts),
            usage([p.pid for p in procs if p.pid is not None]).cpu_s,
            usage([run.beam_pid]).cpu_s,
        )

    try:
        started = snapshot()
        _watch(live, label, started, snapshot, run.warmup_s, "warming up")
        before = snapshot()
        after = _watch(live, label, before, snapshot, run.phase_s, "measuring")
    finally:
        stop.set()
        for proc in publishers + procs:
            proc.join(STOP_WAIT_S)
    depths = topology.depths(channel) if topology.queue_type != "stream" else []
    topology.delete(channel)
    connection.close()
    phase = Phase(label, figures(before, after), depths)
    left = f"; left in the queues {_split(depths)}" if depths else ""
    console.print(f"  {label}: {_line(phase.figures)}{left} ({time.monotonic() - began:.0f} s)")
    return phase


def _watch(
    live: Live, label: str, start: Snapshot, snapshot: Callable[[], Snapshot], seconds: float, what: str
) -> Snapshot:
    """Update the live line every PROGRESS_EVERY_S for `seconds`; the last snapshot."""
    end = start.at_s + seconds
    now = start
    while now.at_s < end:
        time.sleep(min(PROGRESS_EVERY_S, max(0.0, end - now.at_s)))
        now = snapshot()
        live.update(f"{label}: {what}, {end - now.at_s:4.0f} s left; {_line(figures(start, now))}")
    return now


def _split(depths: list[int]) -> str:
    """Queue depths, with each one's share when there are several (how evenly the hash spreads)."""
    total = sum(depths)
    if len(depths) < 2 or not total:
        return f"{depths}"
    return f"{depths} ({' / '.join(f'{d / total:.0%}' for d in depths)})"


def _line(f: Figures) -> str:
    line = f"{f.in_per_s:8,.0f}/s in"
    if f.drained_per_s is not None:
        line += f", {f.drained_per_s:8,.0f}/s drained (slowest reader)"
    return line + f", broker {f.broker_cpu_s_per_1000:.3f} CPU s/1000"


# --- the report ----------------------------------------------------------------------------------


def _us(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} µs"


def report(phases: list[Phase], ceiling: float, title: str, caption: str) -> Table:
    table = Table(title=title, caption=caption)
    columns = (
        "topology",
        "msg/s in",
        "x ceiling",
        "drained msg/s",
        "consumer µs/delivery",
        "consumer µs/reading",
        "broker CPU s/1000 msgs",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "topology" else "right")
    for phase in phases:
        f = phase.figures
        table.add_row(
            phase.label,
            f"{f.in_per_s:,.0f}",
            f"{f.in_per_s / ceiling:.2f}",
            "" if f.drained_per_s is None else f"{f.drained_per_s:,.0f}",
            _us(f.reader_us_per_delivery),
            _us(f.reader_us_per_reading),
            f"{f.broker_cpu_s_per_1000:.3f}",
        )
    return table


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PHASE_S:.0f} s phases (about 2 minutes)")
    parser.add_argument("--phase-s", type=float, default=None, help=f"seconds measured per phase ({PHASE_S:.0f})")
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument(
        "--publishers", type=int, default=PUBLISHERS, help="publisher processes (one MQTT connection each)"
    )
    parser.add_argument("--no-rstream", action="store_true", help="skip the stream-protocol readers")
    args = parser.parse_args()
    phase_s = args.phase_s or (QUICK_PHASE_S if args.quick else PHASE_S)
    warmup_s = QUICK_WARMUP_S if args.quick else WARMUP_S
    load_before = _load()

    stream_port = free_port()
    console.print(f"load average {load_before}")
    with bench_stack(
        "hub-fanout-", console.print, lambda settings: prepare_node(settings.stack_path, stream_port)
    ) as bench:
        settings = bench.settings
        create_gateway(settings)
        run = Run(settings, broker_pid(settings.stack_path), args.devices, args.publishers, warmup_s, phase_s)
        console.print(
            f"[bold]{args.devices} MQTT devices over {args.publishers} publishers, QoS 1, flat out; "
            f"{warmup_s:.0f} s warm-up, {phase_s:.0f} s measured per phase[/]"
        )
        phases = run_all(run, stream_port, with_rstream=not args.no_rstream)
        version = read_broker_version(settings) or "?"
    ceiling = (phases[0].figures.in_per_s + phases[4].figures.in_per_s) / 2
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}"
    title = (
        f"fan-out in the broker, {datetime.date.today().isoformat()}: {machine}; "
        f"Python {platform.python_version()}, RabbitMQ {version}"
    )
    caption = (
        f"x ceiling: against the mean of both 'a.' rows with nobody consuming ({ceiling:,.0f}/s). "
        f"Load average (1/5/15 min) before {load_before}, after {_load()}."
    )
    console.print(report(phases, ceiling, title, caption))


#: Who reads a topology: one consumer process per service, given the phase's (freshly named) topology.
Readers = Callable[[Topology], list[Reader]]


def nobody(_topology: Topology) -> list[Reader]:
    return []


def one_service(topology: Topology) -> list[Reader]:
    """One consumer of all the topology's queues (a single service doing everything in process)."""
    return [Reader(amqp_reader, (topology.queues, False))]


def service_per_queue(topology: Topology) -> list[Reader]:
    return [Reader(amqp_reader, ((queue,), False)) for queue in topology.queues]


def two_amqp_stream_readers(topology: Topology) -> list[Reader]:
    return [Reader(amqp_reader, (topology.queues, True)) for _ in range(2)]


def run_all(run: Run, stream_port: int, with_rstream: bool) -> list[Phase]:
    """Every phase in order; the first and fifth are the ceiling (before and after the others)."""

    def two_stream_protocol_readers(topology: Topology) -> list[Reader]:
        [stream] = topology.queues
        return [Reader(stream_protocol_reader, (stream, stream_port, f"service-{i}")) for i in (1, 2)]

    plan: list[tuple[str, Topology, Readers]] = [
        ("a. ceiling: 1 quorum queue, nobody consuming", CEILING, nobody),
        ("b. today: 2 quorum queues, nobody consuming", TODAY, nobody),
        (f"c. hash -> {HASH_QUEUES} quorum queues, nobody consuming", HASHED, nobody),
        ("d. 1 stream, nobody consuming", STREAM, nobody),
        ("a. ceiling again (drift)", CEILING, nobody),
        ("a. 1 quorum queue, 1 consumer (services in process)", CEILING, one_service),
        ("b. today: 2 quorum queues, 1 consumer each", TODAY, service_per_queue),
        (f"c. hash -> {HASH_QUEUES} quorum queues, 1 consumer of all", HASHED, one_service),
        ("d. 1 stream, 2 AMQP readers", STREAM, two_amqp_stream_readers),
    ]
    if with_rstream:
        plan.append(("d. 1 stream, 2 stream-protocol readers (rstream)", STREAM, two_stream_protocol_readers))
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        return [
            run_phase(run, live, label, topology.fresh(f"p{index}"), readers)
            for index, (label, topology, readers) in enumerate(plan, start=1)
        ]


if __name__ == "__main__":
    main()
