"""Certificates as device identity, on the real broker: a device logs in by its client certificate, no password.

`python -m hub provision --cert --cert-dir DIR` issues each device a certificate (CN = its id)
from the stack's CA and an account without a usable password; over MQTTS and STOMP over TLS
the broker logs the certificate in as that account, with the same confinement as a password
device. Revoking deletes the account: the certificate, still valid, logs in no more.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from devices.fleet import Fleet
from hub.clients.management import ManagementAdmin
from hub.control.identity import provision, revoke
from hub.core.config import Settings, over_tls
from hub.core.contract import EXCHANGE, Reading, command_key, encode, mqtt_topic, now_ms, telemetry_key
from hub.core.tls import DeviceCert
from hub.stack.certs import issue_ca, write_device_cert
from tests.device_clients import AnyDevice, MqttDevice, StompDevice, connect_device, gone, publish, refused
from tests.support import (
    Watcher,
    amqp_connection,
    bind_temporary_queue,
    collect,
    hub_cli,
    hub_process,
    influx_query,
    run_module,
    wait_until,
)

PROTOCOLS = ["mqtt", "stomp"]
SITE = "cert-id"
#: A routing key no hub queue is bound to, published after a refused message: it arrives, the refused one does not.
MARKER_KEY = "test.cert-identity-marker"
#: What "at once" means for a revoked device's connection.
REVOKED_WITHIN_S = 1.0
#: A STOMP device over TLS notices a closed connection by missed heart-beats: 10 s each way, and some slack.
STOMP_TLS_NOTICES_WITHIN_S = 40
#: A kind of the tests' own (IOT_MODELS_FILE), so the simulator's device ids are not the session's password devices.
CERT_KIND_MODELS = """
kinds:
  cert_probe:
    prefix: certsim
    description: a probe that logs in with its certificate
    sensors:
      level: {unit: "%", type: number, range: [0, 100]}
"""


def _tls(stack: Settings) -> Settings:
    return over_tls(stack).model_copy(update={"tls_ca": stack.stack_path / "tls" / "ca.pem"})


def _stopped(device: AnyDevice) -> bool:
    """The broker ended the session: MQTT drops the connection; STOMP sends an ERROR frame, then closes
    (over TLS stomp.py may not notice the close, so the frame is what it sees)."""
    return gone(device) or bool(isinstance(device, StompDevice) and device.errors)


def _reading(device: str) -> bytes:
    return encode(Reading(device=device, site=SITE, kind="environment", seq=1, ts=now_ms(), readings={"level": 42.0}))


@pytest.fixture
def certified(stack: Settings, tmp_path: Path) -> Iterator[tuple[DeviceCert, DeviceCert]]:
    """Two fresh certificate devices A and B, provisioned by the CLI; revoked afterwards."""
    nonce = uuid.uuid4().hex[:8]
    devices = [f"cert-{nonce}-a", f"cert-{nonce}-b"]
    folder = tmp_path / "certs"
    done = hub_cli(stack, "provision", "--cert", "--cert-dir", str(folder), *devices)
    assert done.returncode == 0, done.stderr
    yield DeviceCert(folder, devices[0]), DeviceCert(folder, devices[1])
    revoke(stack, devices)


def test_provision_cert_writes_a_certificate_per_device_and_an_account_without_a_password(
    stack: Settings, certified: tuple[DeviceCert, DeviceCert]
) -> None:
    a, b = certified
    ca = x509.load_pem_x509_certificate((stack.stack_path / "tls" / "ca.pem").read_bytes())
    for cert in (a, b):
        issued = x509.load_pem_x509_certificate(cert.cert_file.read_bytes())
        assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cert.device
        issued.verify_directly_issued_by(ca)
        assert cert.key_file.stat().st_mode & 0o777 == 0o600
    assert (a.folder / "ca.pem").read_bytes() == (stack.stack_path / "tls" / "ca.pem").read_bytes()
    assert {a.device, b.device} <= ManagementAdmin(stack).user_names()
    tls = _tls(stack)
    for protocol in PROTOCOLS:
        # The account exists, but no password opens it, not even the empty one.
        assert refused(tls, protocol, a.device, "any password")
        assert refused(tls, protocol, a.device, "")


def test_certificate_devices_publish_without_a_password_and_their_readings_are_stored(
    stack: Settings, certified: tuple[DeviceCert, DeviceCert], tmp_path: Path
) -> None:
    a, b = certified
    tls = _tls(stack)
    with hub_process(stack, tmp_path):
        for protocol, cert in zip(PROTOCOLS, (a, b), strict=True):
            device = connect_device(tls, protocol, cert.device, cert=cert)
            key = telemetry_key(SITE, "environment", cert.device)
            if isinstance(device, StompDevice):
                publish(device, key, _reading(cert.device))
                # With a receipt: the broker has routed the reading before it answers the DISCONNECT.
                device.connection.disconnect(receipt="bye")
            else:
                device.client.publish(mqtt_topic(key), _reading(cert.device), qos=1).wait_for_publish(10)
                device.close()

        def stored(device: str) -> Callable[[], list[dict[str, Any]]]:
            return lambda: influx_query(stack, f"SELECT level FROM environment WHERE device = '{device}'")

        for cert in (a, b):
            [series] = wait_until(stored(cert.device), 30)
            assert series["values"][0][1] == 42.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_certificate_device_cannot_publish_as_another(
    stack: Settings, certified: tuple[DeviceCert, DeviceCert], protocol: str
) -> None:
    a, b = certified
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, f"telemetry.{SITE}.#", MARKER_KEY)
    device = connect_device(_tls(stack), protocol, a.device, cert=a)
    publish(device, telemetry_key(SITE, "environment", a.device), b'{"own":true}')
    publish(device, telemetry_key(SITE, "environment", b.device), b'{"forged":true}')
    wait_until(lambda: _stopped(device), 10)
    device.close()
    channel.basic_publish(EXCHANGE, MARKER_KEY, b"after the forgery")
    received = [key for key, _body, _props in collect(connection, channel, queue, 3, timeout_s=3)]
    connection.close()
    assert received == [telemetry_key(SITE, "environment", a.device), MARKER_KEY]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_certificate_device_receives_its_own_commands_and_not_another_s(
    stack: Settings, certified: tuple[DeviceCert, DeviceCert], protocol: str
) -> None:
    a, b = certified
    device = connect_device(_tls(stack), protocol, a.device, cert=a)
    device.subscribe(command_key(a.device))
    connection = amqp_connection(stack)
    channel = connection.channel()

    def heard() -> bool:
        channel.basic_publish(EXCHANGE, command_key(a.device), b"{}")
        connection.sleep(0.2)
        return bool(device.messages)

    wait_until(heard, 10)
    device.subscribe(command_key(b.device))
    wait_until(lambda: _stopped(device), 10)
    channel.basic_publish(EXCHANGE, command_key(b.device), b"{}")
    connection.close()
    device.close()
    assert all(command_key(b.device) not in topic.replace("/", ".") for topic in device.messages), device.messages
    if isinstance(device, StompDevice):
        assert any("ACCESS_REFUSED" in error and command_key(b.device) in error for error in device.errors)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_revoked_certificate_device_is_disconnected_at_once_and_refused_afterwards(
    stack: Settings, certified: tuple[DeviceCert, DeviceCert], protocol: str
) -> None:
    a, _b = certified
    tls = _tls(stack)
    admin = ManagementAdmin(stack)
    device = connect_device(tls, protocol, a.device, cert=a)

    def connected() -> bool:
        return any(user == a.device for _name, user in admin.connections())

    # The management API lists a connection once its first statistics are in (every 5 s).
    wait_until(connected, 15)
    revoked_at = time.monotonic()
    result = revoke(stack, [a.device])
    wait_until(lambda: not connected(), REVOKED_WITHIN_S * 5, 0.05)
    closed_after = time.monotonic() - revoked_at
    if isinstance(device, MqttDevice):
        # stomp.py over TLS reads without blocking and takes the broker's close for "nothing yet":
        # only the broker's side tells for STOMP (a running device notices by its heart-beats).
        wait_until(lambda: gone(device), REVOKED_WITHIN_S * 5, 0.02)
        assert device.disconnected_at is not None and device.disconnected_at - revoked_at < REVOKED_WITHIN_S
    device.close()
    assert result.deleted == [a.device]
    assert closed_after < REVOKED_WITHIN_S
    assert a.present(), "the certificate is still there and still valid"
    assert refused(tls, protocol, a.device, cert=a)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_certificate_from_another_ca_is_refused(
    stack: Settings, certified: tuple[DeviceCert, DeviceCert], tmp_path: Path, protocol: str
) -> None:
    a, _b = certified
    forged = write_device_cert(issue_ca("some other CA"), a.device, tmp_path / "forged")
    assert refused(_tls(stack), protocol, a.device, cert=forged)
    # The genuine certificate of the same device still logs in.
    assert not refused(_tls(stack), protocol, a.device, cert=a)


def test_provision_cert_refuses_an_invalid_id_and_creates_nothing(stack: Settings, tmp_path: Path) -> None:
    fine = f"certfine-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "certs"
    done = hub_cli(stack, "provision", "--cert", "--cert-dir", str(folder), fine, "bad/id")
    assert done.returncode == 2 and "bad/id" in done.stderr, done.stderr
    assert fine not in ManagementAdmin(stack).user_names()
    assert not folder.exists() or not any(folder.iterdir())


def test_the_simulator_runs_certificate_devices_and_issues_the_missing_certificates(
    stack: Settings, tmp_path: Path
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(CERT_KIND_MODELS)
    folder = tmp_path / "certs"
    devices = ["certsim-0001", "certsim-0002"]
    watcher = Watcher(stack, "telemetry.cert-sim.#")
    flags = ["--certs", str(folder), "--kinds", "cert_probe", "--count", "2", "--interval", "0.2", "--duration", "2"]
    try:
        flags += ["--site", "cert-sim", "--models-file", str(models)]
        run = run_module(stack, "devices.sim", *flags, timeout_s=90, IOT_TLS_CA=str(_tls(stack).tls_ca))
        watcher.poll(1.0)
    finally:
        watcher.close()
        revoke(stack, devices)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"provisioning 2 certificate devices into {folder}" in run.stderr
    assert "all 2 devices online, each with its own certificate" in run.stderr
    assert f"MQTTS {stack.mqtt_host}:{stack.mqtts_port}" in run.stderr
    assert all(DeviceCert(folder, device).present() for device in devices)
    assert all(len(watcher.readings[device]) >= 3 for device in devices), dict(watcher.readings)


def test_a_certificate_fleet_counts_revoked_devices_as_refused(stack: Settings, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(CERT_KIND_MODELS)
    folder = tmp_path / "certs"
    devices = ["certsim-0001", "certsim-0002", "certsim-0003"]
    done = hub_cli(stack, "provision", "--cert", "--cert-dir", str(folder), *devices)
    assert done.returncode == 0, done.stderr
    settings = _tls(stack).model_copy(update={"device_cert_dir": folder, "models_file": models})
    try:
        with Fleet(settings, count=3, kinds=["cert_probe"], interval_s=0.1, site="cert-fleet") as fleet:
            protocols = {d.device_id: d.protocol for d in fleet.devices}
            revoked = devices[:2]
            assert {protocols[d] for d in revoked} == {"mqtt", "stomp"}
            revoke(stack, revoked)
            # The STOMP device notices by its heart-beats (stomp.py over TLS misses the broker's close).
            wait_until(lambda: fleet.stats().total.refused == 2, STOMP_TLS_NOTICES_WITHIN_S)
            kept = fleet.device(devices[2]).seq
            wait_until(lambda: fleet.device(devices[2]).seq > kept + 5)
            stats = fleet.stats()
    finally:
        revoke(stack, devices)
    assert {name: row.refused for name, row in stats.by_protocol.items()} == {"mqtt": 1, "stomp": 1}
    assert stats.total.online == 1


def test_a_password_device_becomes_a_certificate_device_only_with_rotate(stack: Settings, tmp_path: Path) -> None:
    device = f"certrot-{uuid.uuid4().hex[:8]}"
    secret = provision(stack, [device]).issued[device].password
    folder = tmp_path / "certs"
    cert = DeviceCert(folder, device)
    tls = _tls(stack)
    try:
        kept = hub_cli(stack, "provision", "--cert", "--cert-dir", str(folder), device)
        assert kept.returncode == 0 and f"{device}: exists" in kept.stderr, kept.stderr
        assert not cert.present()
        assert not refused(tls, "mqtt", device, secret)
        rotated = hub_cli(stack, "provision", "--cert", "--rotate", "--cert-dir", str(folder), device)
        assert rotated.returncode == 0 and "1 rotated" in rotated.stderr, rotated.stderr
        assert cert.present()
        for protocol in PROTOCOLS:
            assert refused(tls, protocol, device, secret), "its password stops working"
            assert not refused(tls, protocol, device, cert=cert)
    finally:
        revoke(stack, [device])
