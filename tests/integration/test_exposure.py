"""The broker closed inside: what the session's stack lets a network reach, and what it keeps to itself.

Only the TLS listeners (AMQPS, MQTTS, STOMP over TLS) are bound beyond loopback, and they speak
TLS 1.2 and 1.3 only; Erlang distribution, epmd, InfluxDB and the HTTP APIs are on loopback;
the data folders are private. Linux routes all of 127/8 to loopback, so 127.0.0.2 stands in for
a non-loopback address: a listener on every interface answers there, one bound to 127.0.0.1 not.
"""

from __future__ import annotations

import socket
import ssl
import stat
import warnings

import pytest

from hub.core.config import Settings
from hub.stack import Stack
from hub.stack.processes import port_open
from hub.stack.sockets import exposed, listening_sockets
from hub.stack.stack import INFLUXDB_DIR, RABBITMQ_DIR

ADDRESSES = ("127.0.0.1", "127.0.0.2")
#: The client offers every cipher and drops OpenSSL's own floor (which refuses TLS < 1.2 by
#: itself), so a refusal comes from the server.
ANY_CIPHER = "ALL:@SECLEVEL=0"
#: TLS 1.2 suites a default server would take: CBC, and a key exchange without forward secrecy.
OLD_CIPHERS = "ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES256-SHA:AES256-GCM-SHA384:AES128-SHA"
#: What OpenSSL reports when the server answers with a protocol_version / insufficient_security alert.
REFUSED_VERSION = "TLSV1_ALERT_PROTOCOL_VERSION"
REFUSED_CIPHERS = "TLSV1_ALERT_INSUFFICIENT_SECURITY"
#: The TLS 1.2 suites the broker offers: forward-secret key exchange, authenticated encryption.
MODERN_TLS12 = {
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
}


def _tls_ports(settings: Settings) -> dict[str, int]:
    return {"AMQPS": settings.amqps_port, "MQTTS": settings.mqtts_port, "STOMP over TLS": settings.stomps_port}


def _handshake(settings: Settings, address: str, port: int, version: ssl.TLSVersion, ciphers: str) -> str:
    """The TLS version and cipher a handshake with exactly `version` ends with, or the reason it failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(settings.stack_path / "tls" / "ca.pem")
    context.check_hostname = False  # 127.0.0.2 is not in the certificate; its CA is still checked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1, on purpose
        context.minimum_version = context.maximum_version = version
    context.set_ciphers(ciphers)
    try:
        with socket.create_connection((address, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            return f"{tls.version()} {tls.cipher()[0]}"  # type: ignore[index]
    except ssl.SSLError as exc:
        return str(exc.reason)


@pytest.mark.parametrize("address", ADDRESSES)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLS 1.0", "TLS 1.1"])
def test_tls_1_0_and_1_1_are_refused_on_every_tls_listener(
    stack: Settings, address: str, version: ssl.TLSVersion
) -> None:
    outcomes = {name: _handshake(stack, address, port, version, ANY_CIPHER) for name, port in _tls_ports(stack).items()}
    assert outcomes == dict.fromkeys(outcomes, REFUSED_VERSION)


@pytest.mark.parametrize("address", ADDRESSES)
def test_tls_1_2_and_1_3_are_accepted_with_modern_ciphers_only(stack: Settings, address: str) -> None:
    for name, port in _tls_ports(stack).items():
        tls13 = _handshake(stack, address, port, ssl.TLSVersion.TLSv1_3, ANY_CIPHER)
        assert tls13.startswith("TLSv1.3 TLS_"), f"{name}: {tls13}"
        tls12 = _handshake(stack, address, port, ssl.TLSVersion.TLSv1_2, ANY_CIPHER)
        version, cipher = tls12.split()
        assert version == "TLSv1.2" and cipher in MODERN_TLS12, f"{name}: {tls12}"
        refused = _handshake(stack, address, port, ssl.TLSVersion.TLSv1_2, f"{OLD_CIPHERS}:@SECLEVEL=0")
        assert refused == REFUSED_CIPHERS, f"{name}: a TLS 1.2 client offering only old suites got {refused}"


def test_only_the_tls_listeners_are_bound_beyond_loopback(stack: Settings) -> None:
    sockets = listening_sockets(Stack(stack).server_pids())
    assert {"beam.smp", "epmd", "influxd"} <= {s.process for s in sockets}, [str(s) for s in sockets]
    tls_ports = set(_tls_ports(stack).values())
    assert {s.port for s in exposed(sockets)} == tls_ports, [str(s) for s in exposed(sockets)]
    # Dialled: Erlang distribution, epmd, InfluxDB (HTTP and RPC), the HTTP APIs, the plain
    # listeners answer on loopback only; the TLS listeners beyond it too.
    assert {s.port for s in sockets if port_open("127.0.0.2", s.port)} == tls_ports
    assert all(port_open("127.0.0.1", s.port) for s in sockets if s.address.version == 4)


def test_the_stack_folder_and_the_servers_data_are_private(stack: Settings) -> None:
    root = stack.stack_path
    mnesia = root / RABBITMQ_DIR / "mnesia"
    assert list(mnesia.glob("*/rabbit_user.*")), "the node's user table (password hashes) is in mnesia"
    for folder in (root, root / RABBITMQ_DIR, mnesia, root / INFLUXDB_DIR):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
