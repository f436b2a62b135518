"""TLS on every protocol: AMQPS, MQTTS and STOMP over TLS with the stack's CA, and what is refused.

The session's stack has plain listeners on loopback and TLS listeners on every interface; one
test starts a second stack with `--no-plain` (IOT_PLAIN_LISTENERS=false).
"""

from __future__ import annotations

import base64
import fcntl
import ipaddress
import json
import socket
import ssl
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import stomp.exception

from devices.fleet import Fleet
from hub.clients.amqp import connect
from hub.core.config import Settings, over_tls
from hub.core.contract import EXCHANGE, Reading, encode, mqtt_topic, now_ms, stomp_destination
from hub.core.errors import BrokerUnavailable
from hub.stack import Stack
from hub.stack.certs import issue_ca
from hub.stack.processes import port_open
from hub.stack.stack import settings_on_free_ports
from tests.support import (
    REPO,
    Watcher,
    amqp_connection,
    bind_temporary_queue,
    collect,
    hub_process,
    influx_query,
    mqtt_device,
    settings_environment,
    stomp_device,
    wait_until,
)

#: ioctl asking the kernel for an interface's IPv4 address.
SIOCGIFADDR = 0x8915
#: Linux routes all of 127/8 to loopback, and the TLS listeners listen everywhere: a client
#: that dials this address reaches the node, but the certificate does not name it.
ADDRESS_NOT_IN_CERTIFICATE = "127.0.0.2"
#: The management API and Prometheus endpoint (plain HTTP) are plain listeners too, but 3.10's
#: management API lists them as `::` whatever they bind: their ports are probed below instead.
PLAIN_PROTOCOLS = {"amqp", "mqtt", "stomp"}
TLS_PROTOCOLS = {"amqp/ssl", "mqtt/ssl", "stomp/ssl"}
LOOPBACK = {"127.0.0.1", "::1"}


def _tls(stack: Settings) -> Settings:
    return over_tls(stack).model_copy(update={"tls_ca": stack.stack_path / "tls" / "ca.pem"})


def _reading(device: str, seq: int = 1) -> Reading:
    return Reading(device=device, site="tls", kind="environment", seq=seq, ts=now_ms(), readings={"temperature": 21.5})


def _management(settings: Settings, path: str) -> Any:
    amqp = settings.amqp
    request = urllib.request.Request(f"http://127.0.0.1:{settings.management_port}/api/{path}")
    token = base64.b64encode(f"{amqp.user}:{amqp.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def _listeners(settings: Settings) -> dict[str, set[str]]:
    """Protocol (`amqp`, `mqtt/ssl`, ...) -> the addresses the node listens on, from the management API."""
    bound: dict[str, set[str]] = {}
    for listener in _management(settings, "overview")["listeners"]:
        bound.setdefault(listener["protocol"], set()).add(listener["ip_address"])
    return bound


def _non_loopback_addresses() -> list[str]:
    """This machine's addresses that are not loopback (nor IPv6 link-local, which needs a scope)."""
    found = []
    for _index, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        found.append(socket.inet_ntoa(answer[20:24]))
    with open("/proc/net/if_inet6") as table:
        for line in table:
            raw = line.split()[0]
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return [
        address
        for address in found
        if not ipaddress.ip_address(address).is_loopback and not ipaddress.ip_address(address).is_link_local
    ]


def _publish_over_each_protocol(tls: Settings, device: str) -> None:
    mqtt_client = mqtt_device(tls, f"{device}-m")
    try:
        reading = _reading(f"{device}-m")
        mqtt_client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1).wait_for_publish(10)
    finally:
        mqtt_client.loop_stop()
        mqtt_client.disconnect()
    connection = stomp_device(tls, f"{device}-s")
    try:
        reading = _reading(f"{device}-s")
        connection.send(stomp_destination(reading.routing_key), encode(reading), headers={"receipt": "r1"})
    finally:
        connection.disconnect()


def test_readings_over_mqtts_and_stomp_tls_are_stored_by_a_hub_on_amqps(stack: Settings, tmp_path: Path) -> None:
    tls = _tls(stack)
    with hub_process(tls, tmp_path):
        _publish_over_each_protocol(tls, "tls-e2e")

        def stored(device: str) -> Callable[[], list[dict[str, Any]]]:
            return lambda: influx_query(stack, f"SELECT temperature FROM environment WHERE device = '{device}'")

        for device in ("tls-e2e-m", "tls-e2e-s"):
            [series] = wait_until(stored(device), 30)
            assert series["values"][0][1] == 21.5

        def encrypted() -> set[str]:
            return {c["protocol"].split()[0] for c in _management(stack, "connections") if c.get("ssl")}

        # The hub's own AMQP connections are encrypted too (the devices have gone by now).
        assert wait_until(lambda: "AMQP" in encrypted(), 15)


def test_each_tls_listener_carries_its_protocol_with_the_stacks_ca(stack: Settings) -> None:
    tls = _tls(stack)
    watcher = connect(tls, "tls test")
    try:
        channel = watcher.channel()
        queue = bind_temporary_queue(channel, "telemetry.tls.#")
        _publish_over_each_protocol(tls, "tls-routed")
        keys = {key for key, _body, _props in collect(watcher, channel, queue, 2)}
    finally:
        watcher.close()
    assert keys == {"telemetry.tls.environment.tls-routed-m", "telemetry.tls.environment.tls-routed-s"}


def test_a_simulated_fleet_runs_over_tls_and_every_reading_arrives(stack: Settings) -> None:
    tls = _tls(stack)
    watcher = Watcher(stack, "telemetry.tls-fleet.#", "status.*")
    try:
        with Fleet(tls, count=4, interval_s=0.1, site="tls-fleet", seed=1) as fleet:
            wait_until(lambda: fleet.stats().total.confirmed >= 4 * 5)

            def encrypted() -> set[str]:
                return {
                    connection["protocol"].split()[0]
                    for connection in _management(stack, "connections")
                    if connection.get("ssl") and connection.get("user") in {d.device_id for d in fleet.devices}
                }

            # The management API lists a connection once its first statistics are in (every 5 s).
            assert wait_until(lambda: encrypted() == {"MQTT", "STOMP"}, 15)
        watcher.poll(1.0)
        assert {device.protocol for device in fleet.devices} == {"mqtt", "stomp"}
        for device in fleet.devices:
            assert [r.seq for r in watcher.readings[device.device_id]] == list(range(1, device.seq + 1))
        totals = fleet.stats().total
        assert totals.confirmed == totals.produced and totals.errors == 0
    finally:
        watcher.close()


def test_the_simulator_flag_tls_puts_its_devices_on_the_tls_listeners(stack: Settings) -> None:
    watcher = Watcher(stack, "telemetry.tls-cli.#")
    flags = ["--tls", "--count", "2", "--interval", "0.2", "--duration", "2", "--site", "tls-cli"]
    run = subprocess.run(
        [sys.executable, "-m", "devices.sim", *flags],
        cwd=REPO,
        env=settings_environment(stack, IOT_TLS_CA=str(_tls(stack).tls_ca)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    watcher.poll(1.0)
    watcher.close()
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"MQTTS {stack.mqtt_host}:{stack.mqtts_port}" in run.stderr
    assert f"STOMP over TLS {stack.stomp_host}:{stack.stomps_port}" in run.stderr
    assert all(len(watcher.readings[device]) >= 3 for device in ("env-0001", "aq-0001")), dict(watcher.readings)


def _connectors(settings: Settings) -> dict[str, Callable[[], object]]:
    return {
        "amqp": lambda: connect(settings, "tls test").close(),
        "mqtt": lambda: mqtt_device(settings, "tls-refused").disconnect(),
        "stomp": lambda: stomp_device(settings, "tls-refused").disconnect(),
    }


#: What each client raises when the handshake fails: ours, paho's (ssl's own), stomp.py's.
REFUSED: dict[str, type[Exception] | tuple[type[Exception], ...]] = {
    "amqp": BrokerUnavailable,
    "mqtt": ssl.SSLCertVerificationError,
    "stomp": stomp.exception.ConnectFailedException,
}


@pytest.mark.parametrize("protocol", ["amqp", "mqtt", "stomp"])
def test_a_client_trusting_another_ca_is_refused(stack: Settings, tmp_path: Path, protocol: str) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(issue_ca("some other CA").cert_pem)
    settings = _tls(stack).model_copy(update={"tls_ca": other_ca})
    with pytest.raises(REFUSED[protocol]) as refused:
        _connectors(settings)[protocol]()
    if protocol != "stomp":  # stomp.py says only that it could not connect
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


@pytest.mark.parametrize("protocol", ["amqp", "mqtt", "stomp"])
def test_a_host_name_the_certificate_does_not_name_is_refused(stack: Settings, protocol: str) -> None:
    wrong = ADDRESS_NOT_IN_CERTIFICATE
    settings = _tls(stack)
    amqp = settings.amqp
    settings = settings.model_copy(
        update={
            "amqp_url": f"amqps://{amqp.user}:{amqp.password}@{wrong}:{amqp.port}/{amqp.vhost}",
            "mqtt_host": wrong,
            "stomp_host": wrong,
        }
    )
    assert port_open(wrong, settings.mqtt_connect_port), "the TLS listener answers there: only the name is wrong"
    with pytest.raises(REFUSED[protocol]) as refused:
        _connectors(settings)[protocol]()
    if protocol != "stomp":
        assert "mismatch" in str(refused.value) or "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_plain_listeners_answer_on_loopback_only(stack: Settings) -> None:
    bound = _listeners(stack)
    for protocol in PLAIN_PROTOCOLS:
        assert bound[protocol] and bound[protocol] <= LOOPBACK, f"{protocol} listens on {bound[protocol]}"
    for protocol in TLS_PROTOCOLS:
        assert bound[protocol] & {"::", "0.0.0.0"}, f"{protocol} listens on {bound[protocol]} only"
    http_ports = {stack.management_port, stack.rabbitmq_prometheus_port}
    plain_ports = {stack.amqp.port, stack.mqtt_port, stack.stomp_port} | http_ports
    tls_ports = {stack.amqps_port, stack.mqtts_port, stack.stomps_port}
    for address in _non_loopback_addresses():
        assert all(port_open(address, port) for port in tls_ports), f"TLS listeners unreachable on {address}"
        assert not any(port_open(address, port) for port in plain_ports), f"a plain listener answers on {address}"
    for port in plain_ports:
        assert port_open("127.0.0.1", port)
    # The plain AMQP listener still serves this machine's own clients.
    amqp_connection(stack).close()


def test_no_plain_leaves_only_tls_listeners(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path / "stack").model_copy(update={"plain_listeners": False})
    the_stack = Stack(settings)
    try:
        the_stack.up()
        bound = _listeners(settings)
        assert not PLAIN_PROTOCOLS & set(bound), f"plain listeners left: {bound}"
        assert set(bound) >= TLS_PROTOCOLS
        assert not any(port_open("127.0.0.1", port) for port in (settings.amqp.port, settings.mqtt_port))
        assert not port_open("127.0.0.1", settings.stomp_port)
        tls = _tls(settings)
        connection = connect(tls, "tls test")
        connection.channel().exchange_declare(EXCHANGE, passive=True)
        connection.close()
        assert "CA" in the_stack.status().services[0].endpoints
    finally:
        the_stack.down()
