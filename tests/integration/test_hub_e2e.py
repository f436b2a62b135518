"""`python -m hub run` on the real stack: every reading stored once, bad ones dead-lettered,
InfluxDB outages survived, rules answered by devices over both protocols, presence tracked."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pika
import pika.exceptions
import pytest
import stomp

from hub.clients.management import read_subscribed_devices
from hub.core.config import Settings
from hub.core.contract import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_REASON_HEADER,
    EXCHANGE,
    Ack,
    Command,
    Presence,
    Reading,
    ack_key,
    command_key,
    decode,
    encode,
    mqtt_topic,
    now_ms,
    status_key,
    stomp_destination,
)
from hub.runtime.topology import COMMANDS, partitions
from hub.stack.processes import free_port, stop
from tests.support import (
    amqp_connection,
    bind_temporary_queue,
    collect,
    consume_for,
    hub_process,
    influx_query,
    mqtt_device,
    start_influxd,
    stomp_device,
    wait_until,
)

#: How long the broker may take to confirm the last frame of a burst of readings.
RECEIPT_TIMEOUT_S = 30.0


def count_stored(settings: Settings, measurement: str, device: str) -> int:
    series = influx_query(settings, f"SELECT count(seq) FROM {measurement} WHERE device = '{device}'")
    return int(series[0]["values"][0][1]) if series else 0


def hub_log(log_dir: Path) -> str:
    """Everything the hubs `hub_process` started with `log_dir` have logged so far."""
    return "".join(log.read_text() for log in sorted(log_dir.glob("hub-*.log")))


# --- devices ---------------------------------------------------------------------------------


def reading(device: str, seq: int, kind: str = "environment", base_ts: int = 0, **values: float | bool) -> Reading:
    return Reading(
        device=device,
        site="plant-t",
        kind=kind,
        seq=seq,
        ts=(base_ts or now_ms()) + seq,
        readings=values or {"temperature": 20.0 + seq % 7, "humidity": 40.0},
    )


def publish_mqtt(settings: Settings, device: str, count: int, base_ts: int, pause_every: int = 0) -> None:
    client = mqtt_device(settings, device)
    try:
        infos = []
        for seq in range(count):
            r = reading(device, seq, base_ts=base_ts)
            infos.append(client.publish(mqtt_topic(r.routing_key), encode(r), qos=1))
            if pause_every and seq % pause_every == 0:
                time.sleep(0.01)
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


class _Receipt(stomp.ConnectionListener):  # type: ignore[misc]
    """Set once the broker sends the RECEIPT for `receipt_id`: it has every frame sent before."""

    def __init__(self, receipt_id: str) -> None:
        self.receipt_id = receipt_id
        self.arrived = threading.Event()

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == self.receipt_id:
            self.arrived.set()


def publish_stomp(settings: Settings, device: str, count: int, base_ts: int, pause_every: int = 0) -> None:
    connection = stomp_device(settings, device)
    try:
        for seq in range(count):
            r = reading(device, seq, base_ts=base_ts)
            connection.send(stomp_destination(r.routing_key), encode(r), content_type="application/json")
            if pause_every and seq % pause_every == 0:
                time.sleep(0.01)
        # a receipt on a last frame: the broker has everything before it
        last = _Receipt(f"done-{device}")
        connection.set_listener("receipt", last)
        connection.send(
            stomp_destination(reading(device, count, base_ts=base_ts).routing_key),
            encode(reading(device, count, base_ts=base_ts)),
            headers={"receipt": last.receipt_id},
        )
        assert last.arrived.wait(RECEIPT_TIMEOUT_S), f"no receipt for the last frame of {device}"
    finally:
        connection.disconnect()


def protocols_of(settings: Settings, device: str) -> set[str]:
    series = influx_query(settings, f"SELECT count(seq) FROM environment WHERE device = '{device}' GROUP BY protocol")
    return {s["tags"]["protocol"] for s in series}


# --- the promises ------------------------------------------------------------------------------


def test_readings_of_both_protocols_are_stored_exactly_once_across_a_hub_sigkill(
    stack: Settings, tmp_path: Path
) -> None:
    count = 4000
    base_ts = now_ms() - 10_000_000
    publishers = [
        threading.Thread(target=publish_mqtt, args=(stack, "kill-m", count, base_ts, 50)),
        threading.Thread(target=publish_stomp, args=(stack, "kill-s", count, base_ts, 50)),
    ]
    with hub_process(stack, tmp_path, "--only", "telemetry") as first:
        for thread in publishers:
            thread.start()
        wait_until(lambda: count_stored(stack, "environment", "kill-m") > count // 4, 30)
        first.send_signal(signal.SIGKILL)  # mid-flow: a batch in flight, thousands unacked
        first.wait()
    stored_at_kill = count_stored(stack, "environment", "kill-m")
    # two processes now, splitting the partitions between them: each takes the unacked rest of its own
    with (
        hub_process(stack, tmp_path, "--only", "telemetry", "--partitions", "0-1"),
        hub_process(stack, tmp_path, "--only", "telemetry", "--partitions", "2-3"),
    ):
        for thread in publishers:
            thread.join(60)
        wait_until(lambda: count_stored(stack, "environment", "kill-m") == count, 60)
        wait_until(lambda: count_stored(stack, "environment", "kill-s") == count + 1, 60)
    assert 0 < stored_at_kill < count
    for device in ("kill-m", "kill-s"):
        [series] = influx_query(stack, f"SELECT seq FROM environment WHERE device = '{device}'")
        seqs = [row[1] for row in series["values"]]
        assert len(seqs) == len(set(seqs)), "each (device, seq) is one point"
    assert protocols_of(stack, "kill-m") == {"mqtt"}
    assert protocols_of(stack, "kill-s") == {"stomp"}


def test_every_reading_arrives_after_influxdb_is_stopped_and_restarted(stack: Settings, tmp_path: Path) -> None:
    home = tmp_path / "influxdb"
    port, rpc = free_port(), free_port()
    node, pid = start_influxd(stack, home, port, rpc)
    own = stack.model_copy(update={"influx_url": node.url})
    base_ts = now_ms() - 20_000_000
    try:
        with hub_process(own, tmp_path, "--only", "telemetry") as hub:
            publish_mqtt(stack, "outage-m", 300, base_ts)
            wait_until(lambda: count_stored(own, "environment", "outage-m") == 300, 30)
            assert stop(pid, str(home))
            publish_mqtt(stack, "outage-m", 1000, base_ts)  # seq 0..299 again (harmless) and 300..999 new
            publish_stomp(stack, "outage-s", 500, base_ts)
            wait_until(lambda: "event=write_failed" in hub_log(tmp_path) or hub.poll() is not None, 30)
            assert hub.poll() is None, "the hub keeps running while InfluxDB is down"
            node, pid = start_influxd(stack, home, port, rpc)
            wait_until(lambda: count_stored(own, "environment", "outage-m") == 1000, 60)
            wait_until(lambda: count_stored(own, "environment", "outage-s") == 501, 60)
    finally:
        stop(pid, str(home))


HOSTILE_BODIES: list[tuple[str, bytes, set[str]]] = [
    ("telemetry.plant-t.environment.bad-1", b"{not json", {"bad_json"}),
    (
        "telemetry.plant-t.environment.bad-2",
        b'{"v":1,"device":"bad-2","site":"plant-t","kind":"environment",'
        b'"seq":"one","ts":1,"readings":{"temperature":1.0}}',
        {"schema"},
    ),
    (
        "telemetry.plant-t.environment.bad-3",
        b'{"v":1,"device":"bad-3","site":"plant-t","kind":"environment","seq":1,"ts":1,"readings":{"temperature":NaN}}',
        {"bad_json", "schema"},
    ),
    (
        "telemetry.plant-t.environment.bad-4",
        b'{"v":1,"device":"bad-4","site":"plant-t","kind":"environment",'
        b'"seq":1,"ts":1,"readings":{"temperature":1e999}}',
        {"bad_json", "schema"},
    ),
    (
        "telemetry.plant-t.environment.bad-5",
        b'{"v":1,"device":"bad-5","site":"plant-t","kind":"environment","seq":1,"readings":{"temperature":1.0}}',
        {"schema"},
    ),
    ("telemetry.plant-t.environment.bad-6", b'{"pad":"' + b"x" * 70_000 + b'"}', {"oversize"}),
    (
        "telemetry.plant-t.environment.bad-7",
        b'{"v":1,"device":"bad-7\\ntemperature=1 1","site":"plant-t",'
        b'"kind":"environment","seq":1,"ts":1,"readings":{"temperature":1.0}}',
        {"schema"},
    ),
    (
        "telemetry.plant-t.environment.bad-8",
        b'{"v":1,"device":"a,b=c d","site":"plant-t","kind":"environment",'
        b'"seq":1,"ts":1,"readings":{"temperature":1.0}}',
        {"schema"},
    ),
    ("telemetry.plant-t.environment.bad-9", encode(reading("someone-else", 1)), {"routing_mismatch"}),
    ("telemetry.plant t.environment.bad-10", encode(reading("bad-10", 1)), {"routing_mismatch"}),
    (
        "telemetry.plant-t.environment.bad-11",
        b'{"v":1,"device":"bad-11","site":"plant-t","kind":"environment","seq":1,"ts":1,"readings":{"seq":1.0}}',
        {"schema"},
    ),
]


def test_malformed_messages_are_dead_lettered_with_reasons_while_valid_ones_around_them_are_stored(
    stack: Settings, tmp_path: Path
) -> None:
    connection = amqp_connection(stack)
    channel = connection.channel()
    dead = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(dead, DEAD_LETTER_EXCHANGE)
    base_ts = now_ms() - 30_000_000
    for index, (routing_key, body, _reasons) in enumerate(HOSTILE_BODIES):
        good = reading("good-amid-bad", index, base_ts=base_ts)
        channel.basic_publish(EXCHANGE, good.routing_key, encode(good), pika.BasicProperties(delivery_mode=2))
        channel.basic_publish(EXCHANGE, routing_key, body, pika.BasicProperties(delivery_mode=2))
    # valid by the contract but refused by InfluxDB: `relay` stored as a boolean, then sent as a number
    first = reading("relay-first", 1, kind="conflicts", base_ts=base_ts, relay=True)
    clash = reading("bad-13", 1, kind="conflicts", base_ts=base_ts, relay=1.0)
    for message in (first, clash):
        channel.basic_publish(EXCHANGE, message.routing_key, encode(message), pika.BasicProperties(delivery_mode=2))
    # and a hostile topic level from a real MQTT device: a space and a comma in the site
    device = mqtt_device(stack, "bad-12")  # its own account: only its topic level is hostile
    device.publish("telemetry/plant t,x=1/environment/bad-12", encode(reading("bad-12", 1)), qos=1).wait_for_publish(10)
    device.loop_stop()
    device.disconnect()
    with hub_process(stack, tmp_path, "--only", "telemetry"):
        wait_until(lambda: count_stored(stack, "environment", "good-amid-bad") == len(HOSTILE_BODIES), 30)
        letters = collect(connection, channel, dead, len(HOSTILE_BODIES) + 2, timeout_s=15)
        wait_until(lambda: count_stored(stack, "conflicts", "relay-first") == 1, 10)
    connection.close()
    reasons = {
        routing_key.rsplit(".", 1)[-1]: properties.headers[DEAD_LETTER_REASON_HEADER]
        for routing_key, _body, properties in letters
        if routing_key.rsplit(".", 1)[-1].startswith("bad-")
    }
    expected = {key.rsplit(".", 1)[-1]: allowed for key, _body, allowed in HOSTILE_BODIES}
    assert set(reasons) == set(expected) | {"bad-12", "bad-13"}
    assert reasons["bad-13"] == "rejected_by_influxdb"
    for name, allowed in expected.items():
        assert reasons[name] in allowed, (name, reasons[name])
    assert reasons["bad-12"] == "routing_mismatch"
    assert influx_query(stack, "SELECT count(seq) FROM environment WHERE device =~ /^bad-/") == []


# --- rules, commands, acks, presence -------------------------------------------------------------


class _StompCommands(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self, connection: stomp.Connection12, device: str) -> None:
        self.connection, self.device = connection, device
        self.commands: list[Command] = []

    def on_message(self, frame: Any) -> None:
        command = decode(frame.body.encode(), Command)
        self.commands.append(command)
        ack = Ack(id=command.id, device=self.device, status="ok", state={"ventilation": True}, ts=now_ms())
        self.connection.send(stomp_destination(ack_key(self.device)), encode(ack))


RULES = """
rules:
  - {name: hot, type: threshold, kind: thermostat, sensor: temperature, above: 26,
     action: {command: set_setpoint, args: {value: 20.0}}, cooldown_s: 60}
  - {name: stale-air, type: threshold, kind: air_quality, sensor: co2, above: 1200, severity: critical,
     action: {command: set_ventilation, args: {"on": true}}, cooldown_s: 60}
"""


def test_a_rule_alerts_and_its_command_reaches_mqtt_and_stomp_devices_whose_acks_are_recorded(
    stack: Settings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    connection = amqp_connection(stack)
    channel = connection.channel()
    alerts = bind_temporary_queue(channel, "alerts.#")

    thermostat_commands: list[Command] = []
    thermostat = mqtt_device(stack, "th-rule-m")

    def on_mqtt_command(client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        command = decode(bytes(message.payload), Command)
        thermostat_commands.append(command)
        ack = Ack(id=command.id, device="th-rule-m", status="ok", state={"setpoint": 20.0}, ts=now_ms())
        client.publish(mqtt_topic(ack_key("th-rule-m")), encode(ack), qos=1)

    subscribed = threading.Event()
    thermostat.on_message = on_mqtt_command
    thermostat.on_subscribe = lambda *_args: subscribed.set()
    thermostat.subscribe(mqtt_topic(command_key("th-rule-m")), qos=1)
    assert subscribed.wait(10)

    air = stomp_device(stack, "aq-rule-s")
    air_listener = _StompCommands(air, "aq-rule-s")
    air.set_listener("commands", air_listener)
    air.subscribe(stomp_destination(command_key("aq-rule-s")), id="c", ack="auto", headers={"receipt": "s"})
    # the STOMP subscription's binding is made asynchronously
    wait_until(lambda: "aq-rule-s" in (read_subscribed_devices(stack) or set()))

    try:
        with hub_process(stack, tmp_path, IOT_RULES_FILE=str(rules)):
            hot = reading("th-rule-m", 1, kind="thermostat", temperature=29.5, setpoint=22.0)
            thermostat.publish(mqtt_topic(hot.routing_key), encode(hot), qos=1).wait_for_publish(10)
            stale = reading("aq-rule-s", 1, kind="air_quality", co2=1800.0)
            air.send(stomp_destination(stale.routing_key), encode(stale))
            wait_until(lambda: thermostat_commands and air_listener.commands, 20)
            seen = collect(connection, channel, alerts, 2, timeout_s=10)

            def outcomes() -> dict[str, dict[str, Any]]:
                series = influx_query(
                    stack,
                    "SELECT id, status, origin, rtt_ms, command FROM commands "
                    "WHERE device = 'th-rule-m' OR device = 'aq-rule-s' GROUP BY device",
                )
                return {
                    s["tags"]["device"]: {row[2]: row for row in s["values"]} for s in series if len(s["values"]) >= 2
                }

            recorded = wait_until(lambda: len(outcomes()) == 2 and outcomes(), 20)
    finally:
        thermostat.loop_stop()
        thermostat.disconnect()
        air.disconnect()
        connection.close()

    assert [c.command for c in thermostat_commands] == ["set_setpoint"]
    assert thermostat_commands[0].args == {"value": 20.0}
    assert [c.command for c in air_listener.commands] == ["set_ventilation"]
    assert sorted(key for key, _body, _props in seen) == [
        "alerts.critical.plant-t.aq-rule-s",
        "alerts.warning.plant-t.th-rule-m",
    ]
    for device, command in (("th-rule-m", "set_setpoint"), ("aq-rule-s", "set_ventilation")):
        sent, ok = recorded[device]["sent"], recorded[device]["ok"]
        assert sent[1] == ok[1], "one command id, sent then acked"
        assert sent[3] == "rule" and ok[3] == "rule"
        assert ok[4] is not None and ok[4] >= 0, "round-trip ms recorded with the ack"
        assert ok[5] == command
    [stored_alerts] = influx_query(stack, "SELECT rule, severity, value FROM alerts WHERE device = 'th-rule-m'")
    assert [row[1:] for row in stored_alerts["values"]] == [["hot", "warning", 29.5]]


def test_alerts_nobody_listens_to_are_stored_and_their_rule_commands_sent_while_the_telemetry_service_keeps_running(
    stack: Settings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    connection = amqp_connection(stack)
    channel = connection.channel()
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):  # the normal case: nobody tails alerts
        channel.basic_publish(EXCHANGE, "alerts.warning.plant-t.th-quiet-probe", b"{}", mandatory=True)
    commands = bind_temporary_queue(channel, "commands.th-quiet-1", "commands.th-quiet-2")
    devices = ("th-quiet-1", "th-quiet-2")

    def stored_alerts(device: str) -> list[list[Any]]:
        series = influx_query(stack, f"SELECT rule, severity, value FROM alerts WHERE device = '{device}'")
        return [row[1:] for row in series[0]["values"]] if series else []

    def rule_commands_recorded(device: str) -> list[str]:
        query = f"SELECT id, origin, command FROM commands WHERE device = '{device}' AND status = 'sent'"
        series = influx_query(stack, query)
        return [f"{row[2]}:{row[3]}" for row in series[0]["values"]] if series else []

    try:
        with hub_process(stack, tmp_path, IOT_RULES_FILE=str(rules)) as hub:
            for device in devices:  # one after the other: the second proves the service still consumes
                hot = reading(device, 1, kind="thermostat", temperature=29.5, setpoint=22.0)
                channel.basic_publish(EXCHANGE, hot.routing_key, encode(hot), pika.BasicProperties(delivery_mode=2))
                wait_until(partial(stored_alerts, device), 15)
            delivered = collect(connection, channel, commands, len(devices), timeout_s=10)
            wait_until(lambda: all(rule_commands_recorded(device) for device in devices), 15)
            assert hub.poll() is None
    finally:
        connection.close()
    for device in devices:
        assert stored_alerts(device) == [["hot", "warning", 29.5]]
        assert rule_commands_recorded(device) == ["rule:set_setpoint"]
    assert sorted(key for key, _body, _props in delivered) == [f"commands.{device}" for device in devices]
    for _key, body, properties in delivered:
        command = decode(body, Command)
        assert (command.command, command.args, properties.app_id) == ("set_setpoint", {"value": 20.0}, "rule")
    logs = hub_log(tmp_path)
    assert "service=telemetry event=disconnected" not in logs and "service=telemetry event=crashed" not in logs


def test_an_ack_that_overtakes_its_command_is_recorded_with_the_commands_name_and_the_command_never_times_out(
    stack: Settings, tmp_path: Path
) -> None:
    connection = amqp_connection(stack)
    channel = connection.channel()
    channel.confirm_delivery()
    sent_at = now_ms()
    command = Command(id=f"early-{sent_at}", command="set_relay", args={"on": True}, ts=sent_at, expires=sent_at + 1000)
    ack = Ack(id=command.id, device="pm-early", status="ok", state={"relay": True}, ts=sent_at + 5)
    unanswered = Command(id=f"lonely-{sent_at}", command="ping", ts=sent_at, expires=sent_at + 1000)

    def lifecycle(device: str) -> list[tuple[str, str, str]]:
        series = influx_query(stack, f"SELECT id, status, command, origin FROM commands WHERE device = '{device}'")
        return sorted((row[2], row[3], row[4]) for row in series[0]["values"]) if series else []

    try:
        with hub_process(stack, tmp_path, "--only", "commands"):
            properties = pika.BasicProperties(delivery_mode=2, app_id="cli")
            channel.basic_publish(EXCHANGE, ack_key("pm-early"), encode(ack), properties)
            # while the ack waits for its command, another delivery is written and acked on its own
            channel.basic_publish(EXCHANGE, command_key("pm-lonely"), encode(unanswered), properties)
            wait_until(lambda: lifecycle("pm-lonely"), 10)
            channel.basic_publish(EXCHANGE, command_key("pm-early"), encode(command), properties)
            wait_until(lambda: len(lifecycle("pm-early")) == 2, 10)
            # past both expiries, their grace and a timeout check: only the unanswered one times out
            wait_until(lambda: len(lifecycle("pm-lonely")) == 2, 10)
            early_outcomes = lifecycle("pm-early")
        # Back in the queue: only commands of other tests still waiting for their outcome (held by design)
        came_back = consume_for(connection, channel, COMMANDS.name, 1.0)
        for key, body, props in came_back:
            channel.basic_publish(EXCHANGE, key, body, props)  # theirs to settle, not ours
        left_in_queue = [key for key, _body, _props in came_back if key.endswith(("pm-early", "pm-lonely"))]
    finally:
        connection.close()
    assert early_outcomes == [("ok", "set_relay", "cli"), ("sent", "set_relay", "cli")]
    assert lifecycle("pm-lonely") == [("sent", "ping", "cli"), ("timeout", "ping", "cli")]
    [rtt] = influx_query(stack, "SELECT rtt_ms FROM commands WHERE device = 'pm-early' AND status = 'ok'")
    assert rtt["values"][0][1] >= 0
    assert left_in_queue == [], "every delivery of these two lifecycles acked once: none came back"
    logs = hub_log(tmp_path)
    assert "event=disconnected" not in logs, "a double or unknown ack would have closed the channel"


def test_presence_follows_status_last_will_and_silence(stack: Settings, tmp_path: Path) -> None:
    def status(
        device: str, state: Literal["online", "offline"], protocol: Literal["mqtt", "stomp"], interval_ms: int, ts: int
    ) -> bytes:
        return encode(
            Presence(
                device=device,
                state=state,
                protocol=protocol,
                kind="environment",
                site="plant-t",
                interval_ms=interval_ms,
                fw="1.2.3",
                ts=ts,
            )
        )

    with hub_process(stack, tmp_path, "--only", "presence"):
        connected_at = now_ms()
        will = (mqtt_topic(status_key("pres-m")), status("pres-m", "offline", "mqtt", 1000, connected_at))
        device = mqtt_device(stack, "pres-m", will=will)
        device.publish(will[0], status("pres-m", "online", "mqtt", 1000, now_ms() + 1), qos=1).wait_for_publish(10)
        stomp_dev = stomp_device(stack, "pres-s")
        stomp_dev.send(
            stomp_destination(status_key("pres-s")), status("pres-s", "online", "stomp", 300, now_ms()), headers={}
        )

        def transitions(name: str) -> list[tuple[str, str]]:
            series = influx_query(stack, f"SELECT state, reason FROM device_status WHERE device = '{name}'")
            return [(row[1], row[2]) for row in series[0]["values"]] if series else []

        online = [("online", "status")]
        wait_until(lambda: transitions("pres-m") == online and transitions("pres-s")[:1] == online, 30)
        cable = device.socket()
        assert cable is not None
        cable.close()  # the cable is pulled: the broker publishes the last will
        device.loop_stop()

        wait_until(lambda: len(transitions("pres-m")) == 2 and len(transitions("pres-s")) == 2, 30)
        stomp_dev.disconnect()
    assert transitions("pres-m") == [("online", "status"), ("offline", "last_will")]
    assert transitions("pres-s") == [("online", "status"), ("offline", "silent")]


def test_health_and_metrics_endpoints_report_the_stack(stack: Settings, tmp_path: Path) -> None:
    port = free_port()
    with hub_process(stack, tmp_path, "--only", "telemetry", IOT_METRICS_PORT=str(port)):
        publish_mqtt(stack, "metrics-m", 10, now_ms() - 40_000_000)
        wait_until(lambda: count_stored(stack, "environment", "metrics-m") == 10, 20)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            health = json.loads(response.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    assert health["status"] == "ok"
    assert health["rabbitmq"]["reachable"] and health["influxdb"]["reachable"]
    stored = [line for line in metrics.splitlines() if line.startswith('hub_readings_stored_total{protocol="mqtt"}')]
    assert stored and float(stored[0].split()[-1]) >= 10


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET, 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_ready_is_200_when_all_is_well(stack: Settings, tmp_path: Path) -> None:
    port = free_port()
    with hub_process(stack, tmp_path, "--only", "telemetry", IOT_METRICS_PORT=str(port)):
        publish_mqtt(stack, "ready-ok", 10, now_ms() - 5_000)
        wait_until(lambda: count_stored(stack, "environment", "ready-ok") == 10, 20)
        # Other tests' readings may still be draining from the partitions: ready once they are stored.

        def ready_report() -> dict[str, Any] | None:
            status, report = get_json(f"http://127.0.0.1:{port}/health/ready")
            return report if status == 200 else None

        ready = wait_until(ready_report, 20)
        live = get_json(f"http://127.0.0.1:{port}/health/live")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    assert live == (200, {"status": "live"})
    assert ready["status"] == "ok" and ready["reasons"] == []
    assert ready["rabbitmq"]["reachable"] and ready["influxdb"]["reachable"]
    names = [queue.name for queue in partitions(stack.partitions)]
    assert sorted(ready["queues"]) == sorted(names)
    assert all(ready["queues"][name]["max_backlog"] == 10_000 for name in names)
    assert ready["store"]["queues"] == names
    assert "hub_oldest_unstored_reading_age_seconds 0.0" in metrics.splitlines()
    for name in names:
        assert any(line.startswith(f'hub_queue_depth{{queue="{name}"}}') for line in metrics.splitlines())


def test_health_ready_is_503_with_a_backlog_reason_while_the_store_cannot_drain(
    stack: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "influxdb"
    influx_port, rpc, port = free_port(), free_port(), free_port()
    node, pid = start_influxd(stack, home, influx_port, rpc)
    own = stack.model_copy(update={"influx_url": node.url})
    ready_url = f"http://127.0.0.1:{port}/health/ready"

    def degraded_by_backlog() -> dict[str, Any] | None:
        status, report = get_json(ready_url)
        backlog = [r for r in report["reasons"] if r.startswith("backlog: hub.telemetry.")]
        return report if status == 503 and backlog else None

    try:
        with hub_process(own, tmp_path, "--only", "telemetry", IOT_METRICS_PORT=str(port), IOT_READY_MAX_BACKLOG="5"):
            assert stop(pid, str(home))  # nothing drains now: every write fails and is retried
            publish_mqtt(stack, "ready-backlog", 50, now_ms())
            ready = wait_until(degraded_by_backlog, 30)
            live = get_json(f"http://127.0.0.1:{port}/health/live")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            node, pid = start_influxd(stack, home, influx_port, rpc)  # the backlog drains, ready again
            wait_until(lambda: count_stored(own, "environment", "ready-backlog") == 50, 60)
            wait_until(lambda: get_json(ready_url)[0] == 200, 30)
    finally:
        stop(pid, str(home))
    assert live == (200, {"status": "live"})
    assert ready["status"] == "degraded"
    assert f"influxdb: unreachable at {node.url}" in ready["reasons"]
    # One device: every reading in one partition, which holds the backlog.
    assert max(queue["backlog"] for queue in ready["queues"].values()) >= 50
    assert all(queue["max_backlog"] == 5 for queue in ready["queues"].values())
    age = [line for line in metrics.splitlines() if line.startswith("hub_oldest_unstored_reading_age_seconds ")]
    assert age and float(age[0].split()[-1]) > 0
