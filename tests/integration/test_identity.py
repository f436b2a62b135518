"""Every device its own identity, on the real broker: provisioning, confinement to its own topics, revocation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.cli.identity import IMPOSTORS_FOUND
from hub.clients.management import ManagementAdmin
from hub.control.identity import impostors, provision, revoke
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, command_key, mqtt_topic, telemetry_key
from hub.core.errors import InvalidIdentifier
from hub.stack.stack import Stack, settings_on_free_ports
from tests.device_clients import MqttDevice, StompDevice, connect_device, gone, publish, refused
from tests.support import (
    REPO,
    amqp_connection,
    bind_temporary_queue,
    collect,
    hub_cli,
    settings_environment,
    wait_until,
)

#: A routing key no hub queue is bound to, published after a refused message: it arrives, the refused one does not.
MARKER_KEY = "test.identity-marker"
#: What "at once" means for a revoked device's connection.
REVOKED_WITHIN_S = 1.0
#: The management API's statistics interval (5 s) and then some.
IMPOSTOR_LISTED_WITHIN_S = 20.0
#: The account every device shared before each had its own.
FORMER_SHARED_USER, FORMER_SHARED_PASSWORD = "device", "device-dev-password"


@pytest.fixture
def pair(stack: Settings) -> Iterator[dict[str, str]]:
    """Two fresh devices A and B with their own secrets; revoked afterwards."""
    nonce = uuid.uuid4().hex[:8]
    devices = [f"id-{nonce}-a", f"id-{nonce}-b"]
    issued = provision(stack, devices).issued
    yield {device: credential.password for device, credential in issued.items()}
    revoke(stack, devices)


PROTOCOLS = ["mqtt", "stomp"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_device_cannot_publish_as_another_and_nothing_of_it_is_routed(
    stack: Settings, pair: dict[str, str], protocol: str
) -> None:
    (a, a_secret), (b, _) = pair.items()
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, "telemetry.#", MARKER_KEY)
    device = connect_device(stack, protocol, a, a_secret)
    publish(device, telemetry_key("plant-id", "environment", a), b'{"own":true}')
    publish(device, telemetry_key("plant-id", "environment", b), b'{"forged":true}')
    wait_until(lambda: gone(device), 10)
    device.close()
    channel.basic_publish(EXCHANGE, MARKER_KEY, b"after the forgery")
    received = [key for key, _body, _props in collect(connection, channel, queue, 3, timeout_s=3)]
    connection.close()
    assert received == [telemetry_key("plant-id", "environment", a), MARKER_KEY]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_device_receives_its_own_commands_and_cannot_subscribe_to_another_s(
    stack: Settings, pair: dict[str, str], protocol: str
) -> None:
    (a, a_secret), (b, _) = pair.items()
    device = connect_device(stack, protocol, a, a_secret)
    device.subscribe(command_key(a))
    connection = amqp_connection(stack)
    channel = connection.channel()

    def heard() -> bool:
        channel.basic_publish(EXCHANGE, command_key(a), b"{}")
        connection.sleep(0.2)
        return bool(device.messages)

    wait_until(heard, 10)
    device.subscribe(command_key(b))
    wait_until(lambda: gone(device), 10)
    device.close()
    connection.close()
    if isinstance(device, StompDevice):
        assert any("ACCESS_REFUSED" in error and command_key(b) in error for error in device.errors), device.errors
    else:
        assert not any(topic == mqtt_topic(command_key(b)) for topic in device.messages)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_login_with_another_device_s_secret_nor_as_the_former_shared_account(
    stack: Settings, pair: dict[str, str], protocol: str
) -> None:
    (a, _), (_b, b_secret) = pair.items()
    assert refused(stack, protocol, a, b_secret)
    assert refused(stack, protocol, FORMER_SHARED_USER, FORMER_SHARED_PASSWORD)


def test_over_mqtt_a_device_with_another_client_id_cannot_take_commands(stack: Settings, pair: dict[str, str]) -> None:
    (a, a_secret), (b, _) = pair.items()
    device = MqttDevice(stack, a, a_secret, client_id=b)
    device.subscribe(command_key(a))
    wait_until(lambda: gone(device), 10)
    device.close()
    assert not device.subacks, "its session queue is named by the client id, which must be its own"


@pytest.fixture(scope="module")
def unguarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of its own whose broker asks no auth service (IOT_BROKER_AUTH=false): there an MQTT client
    id is not checked, as on a broker configured without the service, which `hub impostors` audits."""
    settings = settings_on_free_ports(tmp_path_factory.mktemp("unguarded")).model_copy(update={"broker_auth": False})
    the_stack = Stack(settings)
    try:
        the_stack.up()
        yield settings
    finally:
        the_stack.down()


def test_a_device_under_another_s_client_id_is_found_and_closed(unguarded: Settings) -> None:
    stack = unguarded
    nonce = uuid.uuid4().hex[:8]
    issued = provision(stack, [f"id-{nonce}-a", f"id-{nonce}-b"]).issued
    (a, a_secret), (b, _) = ((device, credential.password) for device, credential in issued.items())
    impostor = MqttDevice(stack, a, a_secret, client_id=b)
    try:
        # The management API lists a connection once its first statistics are emitted (seconds).
        found = wait_until(lambda: [i for i in impostors(stack) if i.user == a], IMPOSTOR_LISTED_WITHIN_S, 0.5)
        assert [(i.user, i.client_id) for i in found] == [(a, b)]
        result = hub_cli(stack, "impostors", "--close")
        assert result.returncode == IMPOSTORS_FOUND, result.stderr
        assert f"{a}: closed under client id '{b}'" in result.stderr
        wait_until(lambda: gone(impostor), 5)
    finally:
        impostor.close()
    assert not [i for i in impostors(stack) if i.user == a and i.connection == found[0].connection]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_revoked_device_is_disconnected_at_once_and_refused_afterwards(
    stack: Settings, pair: dict[str, str], protocol: str
) -> None:
    (a, a_secret), _b = pair.items()
    device = connect_device(stack, protocol, a, a_secret)
    revoked_at = time.monotonic()
    result = revoke(stack, [a])
    wait_until(lambda: gone(device), REVOKED_WITHIN_S * 5, 0.02)
    device.close()
    assert result.deleted == [a]
    assert device.disconnected_at is not None and device.disconnected_at - revoked_at < REVOKED_WITHIN_S
    assert refused(stack, protocol, a, a_secret)


def test_provisioning_is_idempotent_and_rotate_gives_a_new_secret(stack: Settings, pair: dict[str, str]) -> None:
    (a, first), _b = pair.items()
    again = provision(stack, [a])
    assert (again.issued, again.existing) == ({}, [a])
    assert not refused(stack, "mqtt", a, first), "provisioning again keeps the secret"
    rotated = provision(stack, [a], rotate=True)
    assert rotated.rotated == [a]
    second = rotated.issued[a].password
    assert second != first
    assert refused(stack, "mqtt", a, first)
    assert not refused(stack, "stomp", a, second)


def test_an_invalid_id_refuses_the_whole_call_and_creates_nothing(stack: Settings, tmp_path: Path) -> None:
    fine = f"fine-{time.monotonic_ns() % 10**9}"
    with pytest.raises(InvalidIdentifier):
        provision(stack, [fine, "Not.A.Device"])
    out = tmp_path / "creds.json"
    cli = subprocess.run(
        [sys.executable, "-m", "hub", "provision", fine, "bad/id", "--out", str(out)],
        cwd=REPO,
        env=settings_environment(stack),
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 2 and "bad/id" in cli.stderr, cli.stderr
    assert fine not in ManagementAdmin(stack).user_names()
    assert not out.exists()


def test_the_cli_writes_secrets_once_to_a_0600_file_and_revoke_forgets_them(stack: Settings, tmp_path: Path) -> None:
    devices = [f"cli-{n}-{time.monotonic_ns() % 10**9}" for n in range(3)]
    out = tmp_path / "fleet.json"
    env = settings_environment(stack, IOT_CREDENTIALS_FILE=str(out))

    def hub(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hub", *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )

    first = hub("provision", *devices, "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    written = json.loads(out.read_text())
    assert sorted(written) == sorted(devices)
    assert all(written[d]["username"] == d and len(written[d]["password"]) >= 32 for d in devices)
    again = hub("provision", devices[0], "--out", str(out))
    assert again.returncode == 0 and f"{devices[0]}: exists" in again.stderr
    assert json.loads(out.read_text()) == written
    gone = hub("revoke", devices[0])
    assert gone.returncode == 0 and "1 revoked" in gone.stderr, gone.stderr
    assert sorted(json.loads(out.read_text())) == sorted(devices[1:])
    revoke(stack, devices)


def test_the_audit_finds_a_broker_without_its_auth_service_and_the_impostor_it_lets_in(unguarded: Settings) -> None:
    stack = unguarded
    nonce = uuid.uuid4().hex[:8]
    issued = provision(stack, [f"id-{nonce}-a", f"id-{nonce}-b"]).issued
    (a, a_secret), (b, _) = ((device, credential.password) for device, credential in issued.items())
    impostor = MqttDevice(stack, a, a_secret, client_id=b)
    try:
        wait_until(lambda: [i for i in impostors(stack) if i.user == a], IMPOSTOR_LISTED_WITHIN_S, 0.5)
        done = hub_cli(stack, "audit", "--json", timeout_s=120)
    finally:
        impostor.close()
        revoke(stack, [a, b])
    assert done.returncode == 1, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines() if '"finding"' in line]
    assert {(row["check"], row["subject"]) for row in found} >= {
        ("broker auth", "the stack's service"),
        ("impostors", a),
    }
