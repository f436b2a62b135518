"""The stack: MQTT and STOMP land on exchange `iot`, commands reach both, InfluxDB stores."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import stomp

from hub.clients.management import read_subscribed_devices
from hub.core.config import Settings
from hub.core.contract import (
    EXCHANGE,
    Reading,
    command_key,
    encode,
    mqtt_topic,
    now_ms,
    stomp_destination,
    telemetry_key,
)
from hub.core.errors import StackError
from hub.stack import Stack
from hub.stack.processes import is_ours
from hub.stack.stack import settings_on_free_ports
from tests.support import (
    REPO,
    amqp_connection,
    bind_temporary_queue,
    collect,
    influx_query,
    influx_request,
    mqtt_device,
    stomp_device,
    wait_until,
)

#: A routing key no hub queue is bound to: a test publishes it to know that what was routed
#: before it has arrived, and leaves nothing behind for a later hub.
MARKER_KEY = "test.marker"


def _reading(device: str, seq: int = 1) -> Reading:
    return Reading(
        device=device,
        site="plant-a",
        kind="environment",
        seq=seq,
        ts=now_ms(),
        readings={"temperature": 21.5, "humidity": 40.0},
    )


def test_mqtt_publish_arrives_on_exchange_iot_with_the_contract_routing_key(stack: Settings) -> None:
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, "telemetry.#")
    reading = _reading("env-mqtt-1")
    client = mqtt_device(stack, "env-mqtt-1")
    try:
        client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    [(routing_key, body, _props)] = collect(connection, channel, queue, 1)
    connection.close()
    assert routing_key == "telemetry.plant-a.environment.env-mqtt-1"
    assert json.loads(body) == json.loads(encode(reading))


def test_stomp_send_arrives_on_exchange_iot_with_the_contract_routing_key(stack: Settings) -> None:
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, "telemetry.#")
    reading = _reading("env-stomp-1")
    device = stomp_device(stack, "env-stomp-1")
    try:
        device.send(
            stomp_destination(reading.routing_key),
            encode(reading),
            content_type="application/json",
            headers={"receipt": "r-1"},
        )
    finally:
        device.disconnect()
    [(routing_key, body, _props)] = collect(connection, channel, queue, 1)
    connection.close()
    assert routing_key == telemetry_key("plant-a", "environment", "env-stomp-1")
    assert json.loads(body)["device"] == "env-stomp-1"


class _StompInbox(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.bodies: list[str] = []

    def on_message(self, frame: Any) -> None:
        self.bodies.append(frame.body)


def test_amqp_command_reaches_an_mqtt_and_a_stomp_subscriber(stack: Settings) -> None:
    mqtt_inbox: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt_device(stack, "dev-m")
    client.on_message = lambda _c, _u, message: mqtt_inbox.append(bytes(message.payload))
    client.on_subscribe = lambda *_args: subscribed.set()
    client.subscribe(mqtt_topic(command_key("dev-m")), qos=1)
    assert subscribed.wait(10)

    stomp_subscriber = stomp_device(stack, "dev-s")
    stomp_inbox = _StompInbox()
    stomp_subscriber.set_listener("inbox", stomp_inbox)
    stomp_subscriber.subscribe(
        stomp_destination(command_key("dev-s")), id="commands", ack="auto", headers={"receipt": "sub-1"}
    )
    # the STOMP subscription's binding is made asynchronously
    wait_until(lambda: "dev-s" in (read_subscribed_devices(stack) or set()))

    connection = amqp_connection(stack)
    channel = connection.channel()
    channel.basic_publish(EXCHANGE, command_key("dev-m"), b'{"to":"mqtt"}')
    channel.basic_publish(EXCHANGE, command_key("dev-s"), b'{"to":"stomp"}')
    connection.close()
    try:
        wait_until(lambda: mqtt_inbox and stomp_inbox.bodies, timeout_s=10)
    finally:
        client.loop_stop()
        client.disconnect()
        stomp_subscriber.disconnect()
    assert mqtt_inbox == [b'{"to":"mqtt"}']
    assert stomp_inbox.bodies == ['{"to":"stomp"}']


def test_a_point_written_to_influxdb_reads_back(stack: Settings) -> None:
    ts_ms = now_ms()
    line = f"environment,device=env-1,site=plant-a,protocol=mqtt temperature=21.5,seq=7i {ts_ms}"
    params = {"db": stack.influx_db, "precision": "ms"}
    assert influx_request(stack, "POST", "/write", params, line.encode(), stack.influx_writer)[0] == 204
    [series] = influx_query(stack, "SELECT temperature, seq FROM environment WHERE device = 'env-1'")
    assert series["values"] == [[ts_ms, 21.5, 7]]


def test_devices_may_not_publish_commands(stack: Settings) -> None:
    """The device user's topic permissions let it send telemetry, status and acks only."""
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, "commands.#", "telemetry.#", MARKER_KEY)
    client = mqtt_device(stack, "test-mqtt-forger")
    disconnected = threading.Event()
    client.on_disconnect = lambda *_args: disconnected.set()
    client.publish("commands/victim", b"{}", qos=1)
    assert disconnected.wait(10), "the broker should drop a device that publishes a command"
    client.loop_stop()
    # Published after the refusal: a forged command, had it been routed, would arrive before it.
    channel.basic_publish(EXCHANGE, MARKER_KEY, b"after the forgery")
    received = collect(connection, channel, queue, 1)
    connection.close()
    assert [routing_key for routing_key, _body, _props in received] == [MARKER_KEY]


def test_guest_cannot_log_in_from_the_network(stack: Settings) -> None:
    """`guest` is either absent or limited to loopback connections (loopback_users)."""
    request = urllib.request.Request(f"http://127.0.0.1:{stack.management_port}/api/users")
    import base64

    token = base64.b64encode(f"{stack.amqp.user}:{stack.amqp.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            users = {user["name"] for user in json.loads(response.read())}
    except urllib.error.HTTPError as exc:
        assert exc.code in (401, 403)  # the hub user is not an administrator: it cannot list users
        users = set()
    conf = (REPO / "rabbitmq" / "rabbitmq.conf").read_text()
    assert "loopback_users.guest = true" in conf
    assert "guest" not in users or "loopback_users.guest = true" in conf


def test_a_second_stack_up_leaves_the_running_one_alone(stack: Settings) -> None:
    before = Stack(stack).status()
    again = Stack(stack).up()
    assert again.already_running
    assert [s.pid for s in again.services] == [s.pid for s in before.services]
    assert Stack(stack).status().running


def test_down_stops_exactly_the_processes_its_stack_started(stack: Settings, tmp_path: Path) -> None:
    other = Stack(settings_on_free_ports(tmp_path / "other"))
    status = other.up()
    pids = {s.name: s.pid for s in status.services}
    assert other.down() == ["RabbitMQ", "broker auth", "InfluxDB"]
    for service in status.services:
        assert not is_ours(pids[service.name], str(tmp_path / "other"))
    assert Stack(stack).status().running, "stopping one stack must not touch another"


def test_stack_up_refuses_ports_in_use(stack: Settings, tmp_path: Path) -> None:
    clash = settings_on_free_ports(tmp_path / "clash").model_copy(update={"mqtt_port": stack.mqtt_port})
    with pytest.raises(StackError, match="IOT_MQTT_PORT"):
        Stack(clash).up()
