"""Certificates as device identity, the pure parts: the files `provision --cert` writes, the accounts it asks for,
the context a certificate device connects with, and what the simulator refuses before connecting."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from devices.fleet import Fleet
from hub.control.identity import NO_PASSWORD_HASH, certificate_definitions, device_definitions
from hub.core.config import load_settings, over_tls
from hub.core.credentials import Credential
from hub.core.errors import ConfigError, InvalidIdentifier
from hub.core.tls import DeviceCert, device_context
from hub.stack.certs import ensure_dev_tls, issue_ca, load_ca, stack_ca, write_device_cert
from hub.stack.rabbitmq import Listeners, RabbitPorts, render_config
from tests.support import handshake_in_memory


def test_a_device_certificate_is_written_with_its_key_0600_and_the_ca(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "stack" / "tls")
    cert = write_device_cert(load_ca(files), "cam-0001", tmp_path / "certs")
    assert cert == DeviceCert(tmp_path / "certs", "cam-0001") and cert.present()
    assert (cert.cert_file.name, cert.key_file.name) == ("cam-0001.pem", "cam-0001.key")
    assert stat.S_IMODE(cert.key_file.stat().st_mode) == 0o600
    issued = x509.load_pem_x509_certificate(cert.cert_file.read_bytes())
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-0001"
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca_cert.read_bytes()))
    assert (tmp_path / "certs" / "ca.pem").read_bytes() == files.ca_cert.read_bytes()


def test_no_certificate_is_written_for_an_invalid_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidIdentifier):
        write_device_cert(issue_ca(), "cam/0001", tmp_path / "certs")
    assert not (tmp_path / "certs").exists()


def test_the_stack_ca_is_the_one_under_the_stack_folder_or_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(stack_dir=tmp_path / "stack")
    with pytest.raises(ConfigError, match="stack up"):
        stack_ca(settings)
    files = ensure_dev_tls(tmp_path / "stack" / "tls")
    assert stack_ca(settings).cert_pem == files.ca_cert.read_bytes()


def test_a_certificate_account_has_no_usable_password_and_a_password_account_s_permissions() -> None:
    by_certificate = certificate_definitions(["cam-0001"])
    by_password = device_definitions({"cam-0001": Credential("cam-0001", "a secret")})
    [user] = by_certificate["users"]
    assert user["name"] == "cam-0001" and user["password_hash"] == NO_PASSWORD_HASH == ""
    assert by_certificate["permissions"] == by_password["permissions"]
    assert by_certificate["topic_permissions"] == by_password["topic_permissions"]


def test_a_certificate_device_presents_its_certificate_to_a_broker_that_asks(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "stack" / "tls")
    cert = write_device_cert(load_ca(files), "cam-0002", tmp_path / "certs")
    settings = load_settings(stack_dir=tmp_path / "stack")
    # The broker's side, as RabbitMQ's ssl_options: verify_peer against the stack's CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    server.load_verify_locations(files.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    _client, tls_server = handshake_in_memory(device_context(settings, cert), server)
    peer = tls_server.getpeercert()
    assert peer is not None and peer["subject"] == ((("commonName", "cam-0002"),),)


def test_a_device_context_without_the_certificate_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no certificate for cam-0003"):
        device_context(load_settings(stack_dir=tmp_path), DeviceCert(tmp_path, "cam-0003"))


def test_the_simulator_wants_tls_and_every_device_s_certificate_before_connecting(tmp_path: Path) -> None:
    plain = load_settings(stack_dir=tmp_path, device_cert_dir=tmp_path / "certs")
    with pytest.raises(ConfigError, match="need TLS"):
        Fleet(plain, count=2)
    with pytest.raises(ConfigError, match=r"2 devices have no credential in .*certs .*--cert --cert-dir"):
        Fleet(over_tls(plain), count=2)


def test_the_broker_config_logs_certificates_in_by_their_common_name(tmp_path: Path) -> None:
    ports = RabbitPorts(
        amqp=5672, mqtt=1883, stomp=61613, management=15672, prometheus=15692, dist=25672, epmd=4369,
        amqps=5671, mqtts=8883, stomps=61614,
    )  # fmt: skip
    conf = render_config(ports, tmp_path / "definitions.json", Listeners(("127.0.0.1",), ensure_dev_tls(tmp_path)))
    for line in ("mqtt.ssl_cert_login = true", "stomp.ssl_cert_login = true", "ssl_cert_login_from = common_name"):
        assert f"\n{line}\n" in conf
    # A password device over TLS presents no certificate: the broker must not require one.
    assert "\nssl_options.fail_if_no_peer_cert = false\n" in conf
