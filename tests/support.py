"""Small helpers the tests share: talking to the real broker and InfluxDB started by the harness."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
import stomp
from paho.mqtt.enums import CallbackAPIVersion
from pika.adapters.blocking_connection import BlockingChannel

from devices.device import plan_fleet
from hub.clients.amqp import connect
from hub.control.identity import provision_into
from hub.core.config import InfluxAccount, Settings
from hub.core.contract import (
    EXCHANGE,
    VHOST,
    Ack,
    Batch,
    Command,
    Presence,
    Reading,
    command_key,
    decode,
    decode_telemetry,
    encode,
    now_ms,
)
from hub.core.credentials import Credential
from hub.core.errors import StackError
from hub.core.tls import settings_context
from hub.services import DEFAULT_SERVICES, service_names
from hub.stack import Stack
from hub.stack.influx import InfluxNode
from hub.stack.processes import free_port, start_detached, stop
from hub.stack.stack import settings_on_free_ports


def amqp_connection(settings: Settings) -> pika.BlockingConnection:
    return connect(settings, "test")


def bind_temporary_queue(channel: BlockingChannel, *patterns: str) -> str:
    """An exclusive, server-named queue bound to exchange `iot` with each pattern."""
    queue = channel.queue_declare("", exclusive=True).method.queue
    for pattern in patterns:
        channel.queue_bind(queue, EXCHANGE, routing_key=pattern)
    return str(queue)


def collect(
    connection: pika.BlockingConnection,
    channel: BlockingChannel,
    queue: str,
    count: int,
    timeout_s: float = 15.0,
) -> list[tuple[str, bytes, pika.BasicProperties]]:
    """Up to `count` messages (routing key, body, properties) from `queue`, waiting at most `timeout_s`."""
    messages: list[tuple[str, bytes, pika.BasicProperties]] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            connection.sleep(0.05)
            continue
        messages.append((method.routing_key, body, properties))
    return messages


def consume_for(
    connection: pika.BlockingConnection, channel: BlockingChannel, queue: str, seconds: float
) -> list[tuple[str, bytes, pika.BasicProperties]]:
    """Every message `queue` hands a consumer within `seconds`, taken (auto-ack).

    A consumer, not `basic.get`: quorum queues with a single active consumer refuse `basic.get`.
    """
    messages: list[tuple[str, bytes, pika.BasicProperties]] = []
    tag = channel.basic_consume(
        queue,
        lambda _ch, method, properties, body: messages.append((method.routing_key, body, properties)),
        auto_ack=True,
    )
    connection.process_data_events(time_limit=seconds)
    channel.basic_cancel(tag)
    return messages


def influx_request(
    settings: Settings, method: str, path: str, params: dict[str, str], body: bytes | None, account: InfluxAccount
) -> tuple[int, bytes]:
    """One HTTP request to the harness's InfluxDB as `account` (no user: no credentials); (status, body)."""
    request = urllib.request.Request(
        f"{settings.influx_url}{path}?{urllib.parse.urlencode(params)}", data=body, method=method
    )
    if account.user is not None:
        token = base64.b64encode(f"{account.user}:{account.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def influx_query(settings: Settings, query: str, epoch: str = "ms") -> list[dict[str, Any]]:
    """Run InfluxQL against the harness's InfluxDB as the reader; returns the `series` of the first result."""
    params = {"db": settings.influx_db, "q": query, "epoch": epoch}
    status, body = influx_request(settings, "GET", "/query", params, None, settings.influx_reader)
    assert status == 200, f"InfluxDB answered {status} to {query!r}: {body[:300]!r}"
    payload = json.loads(body)
    result = payload["results"][0]
    if "error" in result:
        raise AssertionError(f"InfluxQL error for {query!r}: {result['error']}")
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def transitions(settings: Settings, device: str, site: str | None = None) -> list[tuple[str, str]]:
    """A device's rows in `device_status` (at `site` only, if given), oldest first: (state, reason)."""
    at_site = f" AND site = '{site}'" if site else ""
    series = influx_query(settings, f"SELECT state, reason FROM device_status WHERE device = '{device}'{at_site}")
    return [(row[1], row[2]) for row in series[0]["values"]] if series else []


def wait_until(predicate: Callable[[], Any], timeout_s: float = 15.0, interval_s: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; return that, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


REPO = Path(__file__).resolve().parents[1]
#: `python -m hub run` logs this once per service when it starts consuming.
HUB_SERVICES = len(DEFAULT_SERVICES)


def settings_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a user would have: every IOT_* variable from `settings`, none of ours."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            environment[f"IOT_{name.upper()}"] = str(value)
    environment.update(IOT_METRICS_PORT="off", IOT_RULES_FILE=str(REPO / "rules.yaml"))
    environment.update(extra)
    return environment


def handshake_in_memory(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS handshake with no socket: the two ends pass their bytes through BIOs. Returns (client, server) ends."""
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    tls_server = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        done = 0
        for end in (tls_client, tls_server):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return tls_client, tls_server
    raise AssertionError("the handshake did not finish")


def run_module(
    settings: Settings, module: str, *args: str, timeout_s: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m module *args` to its end, as a user with `settings` in the environment would run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=settings_environment(settings, **env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def hub_cli(settings: Settings, *args: str, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return run_module(settings, "hub", *args, timeout_s=timeout_s, **env)


@contextmanager
def hub_process(settings: Settings, log_dir: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m hub run *args` against `settings`, started and consuming; stopped (SIGTERM) afterwards."""
    log = log_dir / f"hub-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", *args],
            cwd=REPO,
            env=settings_environment(settings, **env),
            stdout=out,
            stderr=out,
        )
    only = tuple(args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--only")
    services = len(service_names(only)) if only else HUB_SERVICES
    try:
        wait_until(lambda: log.read_text().count("event=consuming") >= services or process.poll() is not None, 30)
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def device_credentials(settings: Settings, devices: Iterable[str]) -> dict[str, Credential]:
    """Each device's own credential, provisioned on first use and kept in the stack's credentials file."""
    return provision_into(settings, devices, settings.credentials_path)


def fleet_credentials(settings: Settings, count: int, **plan: Any) -> dict[str, Credential]:
    """Credentials for the devices `Fleet(settings, count, **plan)` simulates (the same plan)."""
    return device_credentials(settings, [spec.device_id for spec in plan_fleet(count, **plan)])


def mqtt_device(settings: Settings, client_id: str, will: tuple[str, bytes] | None = None) -> mqtt.Client:
    """An MQTT client logged in as device `client_id` with its own credential, connected, looping in its own thread."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(100)
    client.username_pw_set(client_id, device_credentials(settings, [client_id])[client_id].password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1)
    if settings.mqtt_tls:
        client.tls_set_context(settings_context(settings))
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect(settings.mqtt_host, settings.mqtt_connect_port, keepalive=30)
    client.loop_start()
    assert connected.wait(10), "MQTT CONNACK not received"
    return client


def stomp_device(settings: Settings, device: str) -> stomp.Connection12:
    """A STOMP connection logged in to vhost `iot` as `device` with its own credential."""
    broker = (settings.stomp_host, settings.stomp_connect_port)
    connection = stomp.Connection12([broker], vhost=VHOST)
    if settings.stomp_tls:
        connection.set_ssl(for_hosts=[broker], ca_certs=str(settings.tls_ca_file))
    connection.connect(device, device_credentials(settings, [device])[device].password, wait=True)
    return connection


class Watcher:
    """An AMQP queue on exchange `iot` that sorts what devices publish into readings, presence and acks."""

    def __init__(self, settings: Settings, *patterns: str) -> None:
        self.connection = amqp_connection(settings)
        self.channel: BlockingChannel = self.connection.channel()
        self.queue = bind_temporary_queue(self.channel, *patterns)
        self.readings: dict[str, list[Reading]] = defaultdict(list)
        self.presence: dict[str, list[Presence]] = defaultdict(list)
        self.acks: dict[str, Ack] = {}

    def poll(self, timeout_s: float = 0.3) -> None:
        for routing_key, body, _props in collect(self.connection, self.channel, self.queue, 100_000, timeout_s):
            if routing_key.startswith("telemetry."):
                telemetry = decode_telemetry(body, routing_key)  # contract-valid, on the right routing key
                for reading in telemetry.readings() if isinstance(telemetry, Batch) else [telemetry]:
                    self.readings[reading.device].append(reading)
            elif routing_key.startswith("status."):
                presence = decode(body, Presence)
                assert routing_key == presence.routing_key
                self.presence[presence.device].append(presence)
            elif routing_key.startswith("acks."):
                ack = decode(body, Ack)
                assert routing_key == ack.routing_key
                self.acks[ack.id] = ack

    def states(self, device: str) -> list[str]:
        return [p.state for p in self.presence[device]]

    def wait_readings_from(self, devices: list[str], timeout_s: float = 10.0) -> None:
        """Poll until readings came from exactly `devices` (sorted)."""

        def seen() -> bool:
            self.poll(0.1)
            return sorted(self.readings) == devices

        wait_until(seen, timeout_s=timeout_s)

    def wait_states(self, device: str, expected: list[str], timeout_s: float = 10.0) -> None:
        def seen() -> bool:
            self.poll(0.1)
            return self.states(device) == expected

        wait_until(seen, timeout_s=timeout_s)

    def send(self, device: str, command: str, expires_in_ms: int = 10_000, **args: bool | int | float | str) -> str:
        sent = now_ms()
        body = Command(id=uuid.uuid4().hex, command=command, args=args, ts=sent, expires=sent + expires_in_ms)
        self.channel.basic_publish(
            EXCHANGE,
            command_key(device),
            encode(body),
            pika.BasicProperties(delivery_mode=2, app_id="cli", content_type="application/json"),
        )
        return body.id

    def ack_for(self, command_id: str, timeout_s: float = 10.0) -> Ack:
        def arrived() -> Ack | None:
            self.poll(0.1)
            return self.acks.get(command_id)

        ack: Ack = wait_until(arrived, timeout_s=timeout_s)
        return ack

    def close(self) -> None:
        self.connection.close()


#: Telemetry partitions of the tests' stacks: more than the default one, so that every test that
#: runs a hub runs it on a partitioned telemetry (the hubs get IOT_PARTITIONS from the settings).
TEST_PARTITIONS = 4
#: Another program may take one of our free ports between the choice and RabbitMQ's bind.
START_ATTEMPTS = 3


def started_stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Stack]:
    """A running stack on free ports in a new temporary directory (the caller stops it)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        settings = settings_on_free_ports(tmp_path_factory.mktemp("stack")).model_copy(
            update={"partitions": TEST_PARTITIONS}
        )
        the_stack = Stack(settings)
        try:
            the_stack.up()
            return settings, the_stack
        except StackError:
            the_stack.down()
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def start_influxd(settings: Settings, home: Path, port: int, rpc_port: int) -> tuple[InfluxNode, int]:
    """An influxd of the test's own (to stop and start again), answering, with the accounts of
    `settings` (those of the session's stack: its clients log in there too); returns it and its pid."""
    node = InfluxNode(home, port, rpc_port)
    node.prepare()
    process = start_detached(node.argv(), node.environment(), node.log_path, home)
    wait_until(lambda: not node.problems(), 60, 0.2)
    node.ensure_accounts(settings)
    return node, process.pid


def start_influxd_without_auth(home: Path) -> tuple[str, Callable[[], None]]:
    """An influxd of the test's own as InfluxDB ships, without logins: its URL, and how to stop it."""
    node = InfluxNode(home, free_port(), free_port())
    node.prepare()
    environment = {**node.environment(), "INFLUXDB_HTTP_AUTH_ENABLED": "false"}
    process = start_detached(node.argv(), environment, node.log_path, home)
    wait_until(lambda: not node.problems(), 60, 0.2)

    def stop_it() -> None:
        stop(process.pid, str(home))

    return node.url, stop_it
