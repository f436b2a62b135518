"""The broker auth service's policy, and the node's advanced.config that points RabbitMQ at it."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from hub.brokerauth.policy import (
    DEVICE_OVER_AMQP,
    FOREIGN_CLIENT_ID,
    NO_USERNAME,
    RESOURCE_PATH,
    TOPIC_PATH,
    UNKNOWN_PATH,
    USER_PATH,
    VHOST_PATH,
    decide,
)
from hub.brokerauth.server import AuthService, serve
from hub.core.config import load_settings
from hub.core.secrets import SECRETS_FILE_NAME, ensure_secrets
from hub.stack.brokerauth import operator_accounts
from hub.stack.certs import TlsFiles
from hub.stack.processes import free_port, port_open
from hub.stack.rabbitmq import ADVANCED_CONFIG_AUTHZ, RabbitNode, RabbitPorts, render_advanced_config

OPERATORS = ("hub", "admin")
#: What RabbitMQ 3.10.8's HTTP backend sends, as seen on the wire: MQTT logins carry the vhost and the
#: client id, STOMP logins the vhost, AMQP 0-9-1 (and HTTP) logins neither.
MQTT_LOGIN = {"username": "th-0001", "password": "s", "vhost": "iot", "client_id": "th-0001"}
STOMP_LOGIN = {"username": "th-0001", "password": "s", "vhost": "iot"}
AMQP_LOGIN = {"username": "th-0001", "password": "s"}
CERT_LOGIN = {"username": "th-0001"}
CERT_VHOST_CHECK = {"username": "th-0001", "vhost": "iot", "ip": "::ffff:127.0.0.1", "client_id": "th-0001"}


@pytest.mark.parametrize("login", [MQTT_LOGIN, STOMP_LOGIN, CERT_LOGIN], ids=["mqtt", "stomp", "certificate"])
def test_a_device_logs_in_over_mqtt_and_stomp_under_its_own_name(login: dict[str, str]) -> None:
    assert decide(USER_PATH, login, OPERATORS).allow
    vhost_check = {k: v for k, v in login.items() if k != "password"} | {"vhost": "iot", "ip": "127.0.0.1"}
    assert decide(VHOST_PATH, vhost_check, OPERATORS).allow


@pytest.mark.parametrize("path", [USER_PATH, VHOST_PATH])
def test_an_mqtt_client_id_that_is_not_the_login_s_own_is_refused(path: str) -> None:
    decision = decide(path, {**MQTT_LOGIN, "client_id": "th-0002"}, OPERATORS)
    assert (decision.allow, decision.reason, decision.body) == (False, FOREIGN_CLIENT_ID, b"deny")


def test_a_certificate_login_s_client_id_is_checked_with_the_vhost() -> None:
    assert decide(USER_PATH, CERT_LOGIN, OPERATORS).allow
    assert decide(VHOST_PATH, CERT_VHOST_CHECK, OPERATORS).allow
    assert decide(VHOST_PATH, {**CERT_VHOST_CHECK, "client_id": "th-0002"}, OPERATORS).reason == FOREIGN_CLIENT_ID


def test_an_empty_client_id_is_not_the_login_s_own() -> None:
    assert decide(USER_PATH, {**MQTT_LOGIN, "client_id": ""}, OPERATORS).reason == FOREIGN_CLIENT_ID


def test_a_device_account_over_amqp_or_http_is_refused_even_with_an_empty_password() -> None:
    for login in (AMQP_LOGIN, {**AMQP_LOGIN, "password": ""}):
        decision = decide(USER_PATH, login, OPERATORS)
        assert (decision.allow, decision.reason) == (False, DEVICE_OVER_AMQP)


@pytest.mark.parametrize("login", [AMQP_LOGIN, MQTT_LOGIN], ids=["amqp", "mqtt"])
def test_operator_accounts_log_in_over_any_protocol(login: dict[str, str]) -> None:
    for operator in OPERATORS:
        assert decide(USER_PATH, {**login, "username": operator}, OPERATORS).allow


@pytest.mark.parametrize("path", [RESOURCE_PATH, TOPIC_PATH])
def test_resources_and_topics_are_left_to_the_internal_permissions(path: str) -> None:
    assert decide(path, {"username": "th-0001", "name": "anything", "permission": "configure"}, OPERATORS).allow


def test_an_unknown_path_or_a_check_without_username_is_refused() -> None:
    assert decide("/auth/other", MQTT_LOGIN, OPERATORS).reason == UNKNOWN_PATH
    assert decide(USER_PATH, {"vhost": "iot"}, OPERATORS).reason == NO_USERNAME


def test_the_operators_are_the_hub_s_and_the_admin_s_accounts() -> None:
    settings = load_settings(amqp_url="amqp://hub-x:pw@localhost:5672/iot", admin_user="boss")
    assert operator_accounts(settings) == ("hub-x", "boss")


def test_the_node_asks_the_service_on_loopback_with_passwords_in_post_bodies(tmp_path: Path) -> None:
    text = render_advanced_config(15680)
    assert ADVANCED_CONFIG_AUTHZ not in text
    for path in (USER_PATH, VHOST_PATH, RESOURCE_PATH, TOPIC_PATH):
        assert f'"http://127.0.0.1:15680{path}"' in text
    assert "{http_method, post}" in text
    assert "[rabbit_auth_backend_internal, rabbit_auth_backend_http]" in text


@pytest.mark.parametrize("enabled", [True, False])
def test_the_node_s_advanced_config_follows_iot_broker_auth(tmp_path: Path, enabled: bool) -> None:
    ports = RabbitPorts(
        amqp=5672, mqtt=1883, stomp=61613, management=15672, prometheus=15692, dist=25672, epmd=4369, authz=15680
    )
    ensure_secrets(tmp_path / SECRETS_FILE_NAME)  # the stack's: its definitions need the accounts' passwords
    settings = load_settings(stack_dir=tmp_path, broker_auth=enabled)
    node = RabbitNode(settings, tmp_path / "rabbitmq", ports, TlsFiles(tmp_path / "tls"))
    node.prepare()
    advanced = Path(node.environment()["RABBITMQ_ADVANCED_CONFIG_FILE"]).read_text()
    assert ("rabbit_auth_backend_http" in advanced) is enabled


@pytest.fixture
def served() -> Iterator[int]:
    """The service's server on a free loopback port, in a thread of its own; its port."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    port = free_port()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve("127.0.0.1", port, AuthService(OPERATORS), stop),), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield port
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _post(connection: http.client.HTTPConnection, path: str, form: dict[str, str]) -> str:
    connection.request("POST", path, urlencode(form), {"Content-Type": "application/x-www-form-urlencoded"})
    answer = connection.getresponse()
    assert answer.status == 200
    return answer.read().decode()


def test_the_server_answers_the_backend_s_forms_over_one_keep_alive_connection(served: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", served, timeout=5)
    try:
        assert _post(connection, USER_PATH, MQTT_LOGIN) == "allow"
        assert _post(connection, USER_PATH, {**MQTT_LOGIN, "client_id": "th-0002"}) == "deny"
        assert _post(connection, USER_PATH, AMQP_LOGIN) == "deny"
        assert _post(connection, TOPIC_PATH, {"username": "th-0001", "routing_key": "x"}) == "allow"
        connection.request("GET", "/health")
        counts = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert counts == {"allowed": 2, f"refused:{FOREIGN_CLIENT_ID}": 1, f"refused:{DEVICE_OVER_AMQP}": 1}


def test_requests_split_across_packets_or_sent_back_to_back_are_answered_in_order(served: int) -> None:
    form = urlencode(MQTT_LOGIN).encode()
    request = f"POST {USER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(form)}\r\n\r\n".encode() + form
    with socket.create_connection(("127.0.0.1", served), timeout=5) as sock:
        sock.sendall(request[:7])
        time.sleep(0.05)
        sock.sendall(request[7:] + request + request)
        received = b""
        while received.count(b"allow") < 3:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 3


@pytest.mark.parametrize(
    "request_bytes",
    [b"GARBAGE\r\n\r\n", b"POST /auth/user HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", b"X" * 10_000],
    ids=["no request line", "oversized form", "endless head"],
)
def test_a_malformed_request_gets_an_error_and_the_connection_closed(served: int, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", served), timeout=5) as sock:
        sock.sendall(request_bytes)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413"))
    assert b"deny" in received
