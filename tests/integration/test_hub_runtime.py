"""The hub's runtime on the real stack: presence standing on its own, one bad message never
holding up the rest, and every output getting every reading."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from devices.fleet import Fleet
from hub.control.send import CommandSender
from hub.core.config import Settings
from hub.core.contract import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_REASON_HEADER,
    EXCHANGE,
    Presence,
    Reading,
    encode,
    mqtt_topic,
    now_ms,
    status_key,
    stomp_destination,
)
from hub.runtime import topology
from hub.runtime.deadletter import DEAD_LETTER_DETAIL_HEADER, DEAD_LETTER_QUEUE_HEADER
from hub.runtime.delivery import Delivery
from hub.runtime.handler import Effects
from hub.runtime.middleware import Stats
from hub.runtime.runner import Runner
from hub.services.telemetry.service import TelemetryHandler
from hub.stack.processes import free_port, stop
from tests.support import (
    REPO,
    amqp_connection,
    bind_temporary_queue,
    collect,
    hub_process,
    influx_query,
    mqtt_device,
    settings_environment,
    start_influxd,
    stomp_device,
    transitions,
    wait_until,
)

SITE = "plant-rt"
#: The devices of the presence test report every INTERVAL_MS and stream for STREAM_INTERVALS of them.
INTERVAL_MS = 300
STREAM_INTERVALS = 12


def count_stored(settings: Settings, device: str) -> int:
    series = influx_query(settings, f"SELECT count(seq) FROM environment WHERE device = '{device}'")
    return int(series[0]["values"][0][1]) if series else 0


def reading(device: str, seq: int, base_ts: int | None = None) -> Reading:
    """With `base_ts`, stamped base_ts + seq: distinct points even when published within one millisecond."""
    ts = now_ms() if base_ts is None else base_ts + seq
    return Reading(device=device, site=SITE, kind="environment", seq=seq, ts=ts, readings={"temperature": 20.0 + seq})


def status(device: str, protocol: Any) -> bytes:
    return encode(
        Presence(
            device=device,
            state="online",
            protocol=protocol,
            kind="environment",
            site=SITE,
            interval_ms=INTERVAL_MS,
            ts=now_ms(),
        )
    )


def test_presence_alone_keeps_streaming_devices_online_and_takes_silent_ones_offline(
    stack: Settings, tmp_path: Path
) -> None:
    """`--only presence`, no telemetry service: readings are still the devices' sign of life."""
    with hub_process(stack, tmp_path, "--only", "presence"):
        mqtt_dev = mqtt_device(stack, "alone-m")
        quiet_dev = mqtt_device(stack, "alone-t")
        stomp_dev = stomp_device(stack, "alone-s")
        mqtt_dev.publish(mqtt_topic(status_key("alone-m")), status("alone-m", "mqtt"), qos=1).wait_for_publish(10)
        stomp_dev.send(stomp_destination(status_key("alone-s")), status("alone-s", "stomp"), headers={})
        wait_until(lambda: transitions(stack, "alone-m") and transitions(stack, "alone-s"), 15)
        streamed_until = now_ms() + STREAM_INTERVALS * INTERVAL_MS
        seq = 0
        stop_streaming = threading.Event()
        while now_ms() < streamed_until:
            for device in ("alone-m", "alone-s", "alone-t"):  # alone-t never says anything but readings
                r = reading(device, seq)
                if device == "alone-s":
                    stomp_dev.send(stomp_destination(r.routing_key), encode(r), headers={})
                else:
                    (mqtt_dev if device == "alone-m" else quiet_dev).publish(
                        mqtt_topic(r.routing_key), encode(r), qos=1
                    )
            seq += 1
            stop_streaming.wait(INTERVAL_MS / 3000)
        assert transitions(stack, "alone-m") == [("online", "status")], "streaming for 12 intervals is not silence"
        assert transitions(stack, "alone-s") == [("online", "status")]
        wait_until(lambda: transitions(stack, "alone-t") == [("online", "telemetry")], 10)
        wait_until(lambda: len(transitions(stack, "alone-s")) == 2, 15)
        mqtt_dev.loop_stop()
        mqtt_dev.disconnect()
        stomp_dev.disconnect()
    assert transitions(stack, "alone-s") == [("online", "status"), ("offline", "silent")]


def test_the_rules_service_alone_writes_no_device_status(stack: Settings, tmp_path: Path) -> None:
    """Presence has one writer: a telemetry process sees telemetry but records no transitions.

    Started by the names of before (`--only rules --only store`): aliases of telemetry, one service."""
    with hub_process(stack, tmp_path, "--only", "rules", "--only", "store"):
        device = mqtt_device(stack, "rules-only")
        base_ts = now_ms()
        for seq in range(5):
            r = reading("rules-only", seq, base_ts)
            device.publish(mqtt_topic(r.routing_key), encode(r), qos=1).wait_for_publish(10)
        wait_until(lambda: count_stored(stack, "rules-only") == 5, 20)
        device.loop_stop()
        device.disconnect()
    assert transitions(stack, "rules-only") == []
    log = next(tmp_path.glob("hub-*.log")).read_text()
    assert log.count("event=deprecated services=rules,store use=telemetry") == 1
    assert log.count("event=consuming") == 1, "store and rules are one service"


class _StoreWithABug(TelemetryHandler):
    """The telemetry service, with a bug that only one message triggers."""

    def handle(self, delivery: Delivery) -> Effects:
        if b'"seq":13,' in delivery.body:
            raise ZeroDivisionError("a bug in the hub, not in the message")
        return super().handle(delivery)


def dead_letter_queue(channel: BlockingChannel) -> str:
    """A temporary queue that gets a copy of everything dead-lettered from now on."""
    dead = bind_temporary_queue(channel, "#")
    channel.queue_unbind(dead, EXCHANGE, routing_key="#")
    channel.queue_bind(dead, DEAD_LETTER_EXCHANGE)
    return dead


#: The burst test: every INVALID_EVERY-th of BURST messages is invalid, alternately bad JSON and a bad schema.
BURST = 800
INVALID_EVERY = 4


def test_a_burst_of_invalid_messages_amid_valid_ones_is_dead_lettered_once_each_and_every_valid_one_stored(
    stack: Settings,
) -> None:
    connection = amqp_connection(stack)
    channel = connection.channel()
    dead = dead_letter_queue(channel)
    base_ts = now_ms()
    expected: dict[str, str] = {}
    valid = 0
    for index in range(BURST):
        if index % INVALID_EVERY:
            r = reading("burst-ok", index, base_ts)
            channel.basic_publish(EXCHANGE, r.routing_key, encode(r), pika.BasicProperties(delivery_mode=2))
            valid += 1
            continue
        device = f"burst-bad-{index}"
        reason, body = ("bad_json", b"{not json") if index % (2 * INVALID_EVERY) else ("schema", b'{"v":1}')
        channel.basic_publish(
            EXCHANGE, f"telemetry.{SITE}.environment.{device}", body, pika.BasicProperties(delivery_mode=2)
        )
        expected[device] = reason
    stop = threading.Event()
    stats = Stats()
    service = Runner.from_settings(stack, TelemetryHandler.from_settings(stack, rules=[]), stop, [stats])
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: count_stored(stack, "burst-ok") == valid, 30)
        wait_until(
            lambda: service.snapshot.held_total == 0 and stats.of("telemetry").dead_lettered == len(expected), 15
        )
    finally:
        stop.set()
        thread.join(30)
    letters = collect(connection, channel, dead, 2 * len(expected), timeout_s=3)
    connection.close()
    seen = [
        (key.rsplit(".", 1)[-1], properties.headers[DEAD_LETTER_REASON_HEADER])
        for key, _body, properties in letters
        if ".burst-bad-" in key
    ]
    assert sorted(seen) == sorted(expected.items()), "each invalid message once, with its reason"
    assert all(properties.headers[DEAD_LETTER_DETAIL_HEADER] for _key, _body, properties in letters)
    # Each names the partition it came from: its device's, one of the telemetry partitions.
    partitions = {f"{topology.PARTITION_PREFIX}{p}" for p in range(stack.partitions)}
    assert all(properties.headers[DEAD_LETTER_QUEUE_HEADER] in partitions for _key, _body, properties in letters)
    assert count_stored(stack, "burst-ok") == valid


def test_an_unexpected_error_dead_letters_that_message_alone_and_the_rest_are_stored_without_redelivery(
    stack: Settings,
) -> None:
    connection = amqp_connection(stack)
    channel = connection.channel()
    dead = dead_letter_queue(channel)
    stop = threading.Event()
    stats = Stats()
    service = Runner.from_settings(stack, _StoreWithABug.from_settings(stack, rules=[]), stop, [stats])
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: service.snapshot.connected, 15)
        base_ts = now_ms()
        for seq in range(30):
            r = reading("buggy", seq, base_ts)
            channel.basic_publish(EXCHANGE, r.routing_key, encode(r), pika.BasicProperties(delivery_mode=2))
        wait_until(lambda: count_stored(stack, "buggy") == 29, 20)
        [(_key, body, properties)] = [
            m for m in collect(connection, channel, dead, 100, timeout_s=5) if m[0].endswith(".buggy")
        ]
        assert b'"seq":13,' in body
        assert properties.headers[DEAD_LETTER_REASON_HEADER] == "internal"
        assert properties.headers[DEAD_LETTER_DETAIL_HEADER].startswith("ZeroDivisionError: ")
        assert service.snapshot.connects == 1, "no reconnect, so no redelivery of the window"
        assert stats.of("telemetry").received == 30 and stats.of("telemetry").dead_lettered == 1
    finally:
        stop.set()
        thread.join(30)
        connection.close()
    assert count_stored(stack, "buggy") == 29
    series = influx_query(stack, "SELECT count(seq) FROM environment WHERE device = 'buggy' GROUP BY protocol")
    assert [one["tags"]["protocol"] for one in series] == ["amqp"], "published straight over AMQP, tagged so"


def test_every_output_gets_every_reading_and_a_failing_one_holds_the_batch_until_it_recovers(
    stack: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "not-yet" / "points.jsonl"
    # Published before the hub starts, so the first batch holds all 40 (a batch is written once
    # the deliveries pause: readings trickling in could open a second batch behind the held one).
    device = mqtt_device(stack, "fanout")
    base_ts = now_ms()
    for seq in range(40):
        r = reading("fanout", seq, base_ts)
        device.publish(mqtt_topic(r.routing_key), encode(r), qos=1).wait_for_publish(10)
    device.loop_stop()
    device.disconnect()
    with hub_process(
        stack, tmp_path, "--only", "telemetry", IOT_OUTPUTS="influxdb,jsonl", IOT_JSONL_PATH=str(archive)
    ) as hub:
        wait_until(lambda: count_stored(stack, "fanout") == 40, 20)
        log = next(tmp_path.glob("hub-*.log"))
        wait_until(lambda: "event=write_failed output=jsonl" in log.read_text(), 20)
        assert not archive.exists()
        archive.parent.mkdir()  # the archive's disk comes back: the kept batch goes there too
        wait_until(lambda: archive.exists() and archive.read_text().count('"device":"fanout"') >= 40, 30)
        assert hub.poll() is None
    points = [line for line in archive.read_text().splitlines() if '"device":"fanout"' in line]
    assert len(points) == 40, "written once the output came back, and not again after the ack"
    assert count_stored(stack, "fanout") == 40


def test_an_influxdb_outage_marks_no_streaming_device_offline(stack: Settings, tmp_path: Path) -> None:
    """The whole hub runs; InfluxDB stops for 20 device intervals while the devices stream on."""
    home = tmp_path / "influxdb"
    port, rpc = free_port(), free_port()
    node, pid = start_influxd(stack, home, port, rpc)
    own = stack.model_copy(update={"influx_url": node.url})
    devices = ("outage-pm", "outage-ps")
    streaming = threading.Event()
    sent = [0]
    try:
        with hub_process(own, tmp_path) as hub:
            mqtt_dev = mqtt_device(stack, "outage-pm")
            stomp_dev = stomp_device(stack, devices[1])
            mqtt_dev.publish(mqtt_topic(status_key(devices[0])), status(devices[0], "mqtt"), qos=1)
            stomp_dev.send(stomp_destination(status_key(devices[1])), status(devices[1], "stomp"), headers={})

            def stream() -> None:
                base_ts = now_ms()
                while not streaming.wait(INTERVAL_MS / 3000):
                    seq = sent[0]
                    first, second = reading(devices[0], seq, base_ts), reading(devices[1], seq, base_ts)
                    mqtt_dev.publish(mqtt_topic(first.routing_key), encode(first), qos=1)
                    stomp_dev.send(stomp_destination(second.routing_key), encode(second), headers={})
                    sent[0] = seq + 1

            streamer = threading.Thread(target=stream, daemon=True)
            streamer.start()
            try:
                wait_until(lambda: all(transitions(own, d) == [("online", "status")] for d in devices), 15)
                assert stop(pid, str(home))
                outage_ends = now_ms() + 20 * INTERVAL_MS
                wait_until(lambda: now_ms() > outage_ends, 30)
                assert hub.poll() is None
                node, pid = start_influxd(stack, home, port, rpc)
                wait_until(lambda: count_stored(own, devices[0]) >= sent[0] - 5, 30)  # the backlog is stored
                for device in devices:
                    assert transitions(own, device) == [("online", "status")], "streaming all along: never silent"
            finally:
                streaming.set()
                streamer.join(10)
                mqtt_dev.loop_stop()
                mqtt_dev.disconnect()
                stomp_dev.disconnect()
    finally:
        stop(pid, str(home))


def test_commands_sent_while_the_hub_is_down_past_their_expiry_are_each_recorded_once_with_their_own_round_trip(
    stack: Settings, tmp_path: Path
) -> None:
    expiry_s = 2.0
    with Fleet(stack, count=2, kinds=("thermostat",), site="plant-cmd", interval_s=1.0, seed=3) as fleet:
        devices = [device.device_id for device in fleet.devices]
        with CommandSender(stack, origin="cli") as sender:
            outcomes = [o for _ in range(3) for o in sender.send(devices, "ping", {}, timeout_s=expiry_s)]
    assert [o.status for o in outcomes] == ["ok"] * 6
    measured = {o.id: o.rtt_ms for o in outcomes}
    hub_back_at = now_ms() + int(expiry_s * 1000) + 3_000
    wait_until(lambda: now_ms() > hub_back_at, 10)  # the hub was away longer than every command's expiry

    def lifecycles() -> dict[str, list[tuple[str, float | None]]]:
        devices_pattern = "|".join(devices)
        series = influx_query(stack, f"SELECT status, rtt_ms, id FROM commands WHERE device =~ /^({devices_pattern})$/")
        found: dict[str, list[tuple[str, float | None]]] = {}
        for row in series[0]["values"] if series else []:
            if row[3] in measured:  # these device ids are used by other tests' fleets too
                found.setdefault(row[3], []).append((row[1], row[2]))
        return found

    with hub_process(stack, tmp_path, "--only", "commands"):
        wait_until(lambda: set(lifecycles()) == set(measured) and all(len(v) == 2 for v in lifecycles().values()), 30)
        history = subprocess.run(
            [sys.executable, "-m", "hub", "commands", "--device", devices[0], "--json", "--limit", "1000"],
            cwd=REPO,
            env=settings_environment(stack),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    for command_id, events in lifecycles().items():
        assert sorted(status for status, _rtt in events) == ["ok", "sent"], (command_id, events)
        [recorded_rtt] = [rtt for status, rtt in events if status == "ok"]
        assert recorded_rtt is not None and recorded_rtt <= (measured[command_id] or 0) + 50, (
            "the round trip of the exchange itself, not the hub's downtime"
        )
    assert history.returncode == 0, history.stderr
    shown = {r["id"]: r for r in json.loads(history.stdout)}
    ours = [o.id for o in outcomes if o.device == devices[0]]
    assert all(shown[command_id]["status"] == "ok" for command_id in ours), history.stdout
    assert all(shown[command_id]["origin"] == "cli" for command_id in ours)
