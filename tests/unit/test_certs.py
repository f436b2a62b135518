"""The development CA (hub/stack/certs.py): what `stack up` issues, once; and the TLS listeners it renders."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.core.config import load_settings, over_tls
from hub.core.errors import InvalidIdentifier
from hub.stack.certs import TlsFiles, ensure_dev_tls, issue_ca, issue_device_cert, load_ca, server_names
from hub.stack.rabbitmq import Listeners, RabbitNode, RabbitPorts, render_config
from tests.support import handshake_in_memory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_names_loopback_and_this_host(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    names = _cert(files.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", *server_names()[3:]} <= set(names.get_values_for_type(x509.DNSName))
    addresses = set(names.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= addresses


def test_server_certificate_is_valid_now_and_signed_by_the_ca(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    ca, server = _cert(files.ca_cert), _cert(files.server_cert)
    now = datetime.datetime.now(datetime.UTC)
    for cert in (ca, server):
        assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_python_verifies_the_server_certificate_against_the_ca(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca_cert))
    tls_client, _server = handshake_in_memory(client, server)
    peer = tls_client.getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", "IoT hub RabbitMQ node"),),)


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_second_call_reuses_what_the_first_made(tmp_path: Path) -> None:
    first = ensure_dev_tls(tmp_path / "tls")
    before = {path: path.read_bytes() for path in (first.ca_cert, first.ca_key, first.server_cert, first.server_key)}
    second = ensure_dev_tls(tmp_path / "tls")
    assert {path: path.read_bytes() for path in before} == before
    assert second == first


def test_device_certificate_names_the_device_and_chains_to_the_stack_ca(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    issued = issue_device_cert(load_ca(files), "th-0001")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "th-0001"
    cert.verify_directly_issued_by(_cert(files.ca_cert))
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_device_certificate_refuses_an_id_that_is_not_an_identifier() -> None:
    with pytest.raises(InvalidIdentifier):
        issue_device_cert(issue_ca(), "th/0001")


# --- how the native node's listeners are rendered into its config -----------------------------

PORTS = RabbitPorts(
    amqp=5672, mqtt=1883, stomp=61613, management=15672, prometheus=15692, dist=25672, epmd=4369,
    amqps=5671, mqtts=8883, stomps=61614,
)  # fmt: skip


def test_native_plain_listeners_bind_loopback_and_tls_ones_every_interface(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path / "tls")
    conf = render_config(PORTS, tmp_path / "definitions.json", Listeners(("127.0.0.1", "::1"), tls))
    for key, port in (("listeners.tcp", 5672), ("mqtt.listeners.tcp", 1883), ("stomp.listeners.tcp", 61613)):
        assert f"\n{key}.1 = 127.0.0.1:{port}\n{key}.2 = ::1:{port}\n" in conf
        assert f"\n{key}.default" not in conf
    for key, port in (("listeners.ssl", 5671), ("mqtt.listeners.ssl", 8883), ("stomp.listeners.ssl", 61614)):
        assert f"\n{key}.default = {port}\n" in conf
    assert f"\nssl_options.keyfile = {tls.server_key}\n" in conf
    assert f"\nssl_options.cacertfile = {tls.ca_cert}\n" in conf
    assert "\nmanagement.tcp.port = 15672\nmanagement.tcp.ip = 127.0.0.1\n" in conf
    assert "\nprometheus.tcp.port = 15692\nprometheus.tcp.ip = 127.0.0.1\n" in conf


def test_no_plain_renders_no_plain_listener(tmp_path: Path) -> None:
    conf = render_config(PORTS, tmp_path / "definitions.json", Listeners((), TlsFiles(tmp_path / "tls")))
    for key in ("listeners.tcp", "mqtt.listeners.tcp", "stomp.listeners.tcp"):
        assert f"\n{key} = none\n" in conf
        assert f"\n{key}.1 " not in conf


def test_readiness_probes_cover_every_listener_each_over_its_own_transport(tmp_path: Path) -> None:
    settings = load_settings(amqp_url="amqps://hub:pw@localhost:5671/iot", stack_dir=tmp_path)
    node = RabbitNode(settings, tmp_path / "rabbitmq", PORTS, TlsFiles(tmp_path / "tls"))
    probes = {name: (port, probe_settings) for name, port, _check, probe_settings in node._probes()}
    assert {name: port for name, (port, _s) in probes.items()} == {
        "AMQP over TLS": 5671, "MQTT over TLS": 8883, "STOMP over TLS": 61614,
        "AMQP": 5672, "MQTT": 1883, "STOMP": 61613,
    }  # fmt: skip
    assert probes["AMQP over TLS"][1].amqp.tls and probes["MQTT over TLS"][1].mqtt_tls
    assert probes["STOMP over TLS"][1].tls_ca == tmp_path / "tls" / "ca.pem"
    assert not probes["AMQP"][1].amqp.tls and not probes["MQTT"][1].mqtt_tls and not probes["STOMP"][1].stomp_tls
    no_plain = RabbitNode(
        settings.model_copy(update={"plain_listeners": False}), tmp_path, PORTS, TlsFiles(tmp_path / "tls")
    )
    assert {name for name, *_rest in no_plain._probes()} == {"AMQP over TLS", "MQTT over TLS", "STOMP over TLS"}


def test_over_tls_moves_every_client_to_the_tls_listeners() -> None:
    settings = over_tls(load_settings(amqp_url="amqp://hub:p%40ss@[::1]:5672/iot", amqps_port=15671))
    assert settings.amqp_url == "amqps://hub:p%40ss@[::1]:15671/iot"
    assert (settings.amqp.tls, settings.amqp.password, settings.amqp.port) == (True, "p@ss", 15671)
    assert settings.mqtt_connect_port == settings.mqtts_port and settings.stomp_connect_port == settings.stomps_port
