"""`python -m hub audit`: what a running deployment exposes, checked from this machine.

Each check returns rows: a subject and its verdict, `ok`, `finding` (something to fix before a
port is opened) or `skipped` (cannot be judged from here). The deciding is done by plain
functions over what was observed (sockets, modes, permissions); the probes around them only
dial, log in and read. A check that cannot reach what it checks is a finding: an audit that
could not look says nothing is fine.
"""

from __future__ import annotations

import socket
import ssl
import stat
import urllib.error
import urllib.request
import warnings
from base64 import b64encode
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import pika
import pika.exceptions

from hub.clients.management import ManagementAdmin, management_url
from hub.control.identity import impostors
from hub.core.config import Settings
from hub.core.contract import VHOST
from hub.core.errors import HubError
from hub.core.permissions import topic_permissions, vhost_permissions

Verdict = Literal["ok", "finding", "skipped"]


@dataclass(frozen=True)
class Row:
    check: str
    subject: str
    verdict: Verdict
    detail: str = ""


#: Credentials published in this project's repository, README or banners at some time, and RabbitMQ's own
#: default: none may log in anywhere.
KNOWN_CREDENTIALS = (("hub", "hub-dev-password"), ("admin", "admin-dev-password"), ("guest", "guest"))
#: TLS versions a listener must refuse, and the ones it may offer.
REFUSED_TLS = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
OFFERED_TLS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
#: Files under the stack folder that hold secrets (by name or suffix): owner-only, always.
SECRET_NAMES = ("secrets.json", "devices.json", "definitions.json", ".erlang.cookie", "cookie", "influxdb.env")
SECRET_SUFFIXES = (".key",)
#: Seconds a probe waits for an answer.
PROBE_TIMEOUT_S = 5.0
#: How many over-permissive paths a file-mode finding names.
PATHS_SHOWN = 5


# --- listeners ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """A socket a server of the deployment listens on: address, port, and the process holding it."""

    address: str
    port: int
    process: str


def listener_rows(listeners: Iterable[Listener], tls_ports: Mapping[int, str]) -> list[Row]:
    """Every listener beyond loopback, with its protocol: a TLS listener (`tls_ports`: port -> name) is fine,
    anything else answers the network in plain text."""
    rows = []
    for listener in sorted(listeners, key=lambda item: (item.port, item.address)):
        if _loopback(listener.address):
            continue
        where = f"{listener.address}:{listener.port} ({listener.process})"
        if listener.port in tls_ports:
            rows.append(Row("listeners", where, "ok", f"{tls_ports[listener.port]}: TLS"))
        else:
            rows.append(Row("listeners", where, "finding", "plain: reachable from the network without TLS"))
    return rows or [Row("listeners", "every server", "ok", "nothing listens beyond loopback")]


def endpoint_rows(settings: Settings) -> list[Row]:
    """Without a stack here to look at: the endpoints the settings name, judged by scheme and host."""
    endpoints = [
        ("AMQP", settings.amqp.host, settings.amqp.tls),
        *(("MQTT", host, settings.mqtt_tls) for host, _port in settings.mqtt_brokers),
        *(("STOMP", host, settings.stomp_tls) for host, _port in settings.stomp_brokers),
        ("InfluxDB", urlsplit(settings.influx_url).hostname or "localhost", settings.influx_url.startswith("https")),
    ]
    rows = []
    for name, host, tls in endpoints:
        if tls:
            rows.append(Row("listeners", f"{name} at {host}", "ok", "TLS"))
        elif _loopback(host):
            rows.append(Row("listeners", f"{name} at {host}", "ok", "plain, on loopback"))
        else:
            rows.append(Row("listeners", f"{name} at {host}", "finding", "plain over the network"))
    return rows


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


# --- TLS versions ------------------------------------------------------------------------------------


def handshake(host: str, port: int, version: ssl.TLSVersion) -> bool:
    """True if a TLS handshake of exactly `version` completes (any cipher, no certificate check: the version
    is what is asked, and OpenSSL's own floor is dropped so a refusal is the server's)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1, on purpose
        context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw, context.wrap_socket(raw):
            return True
    except (OSError, ssl.SSLError):
        return False


def tls_rows(addresses: Sequence[str], tls_ports: Mapping[int, str]) -> list[Row]:
    rows = []
    for (port, name), host in ((item, host) for item in sorted(tls_ports.items()) for host in addresses):
        accepted = [v for v in (*REFUSED_TLS, *OFFERED_TLS) if handshake(host, port, v)]
        offered = ", ".join(_version_name(v) for v in accepted) or "none"
        subject = f"{name} {host}:{port}"
        if any(v in REFUSED_TLS for v in accepted):
            rows.append(Row("TLS versions", subject, "finding", f"offers {offered}: before 1.2 is broken"))
        elif not accepted:
            rows.append(Row("TLS versions", subject, "finding", "no TLS handshake completes"))
        else:
            rows.append(Row("TLS versions", subject, "ok", f"offers {offered}"))
    return rows


def _version_name(version: ssl.TLSVersion) -> str:
    return version.name.replace("TLSv1_", "TLS 1.").replace("TLSv1", "TLS 1.0")


# --- secrets -----------------------------------------------------------------------------------------


def configured_secret_rows(settings: Settings) -> list[Row]:
    """The secrets the settings hold: none may be one this project ever published."""
    published = {password for _user, password in KNOWN_CREDENTIALS}
    rows = []
    for name, value in (
        ("IOT_AMQP_URL (the hub's)", settings.amqp.password),
        ("IOT_ADMIN_PASSWORD", settings.admin_password),
    ):
        if value in published:
            rows.append(Row("secrets", name, "finding", "a password published in this project"))
        else:
            rows.append(Row("secrets", name, "ok", "not a published password"))
    return rows


def known_login_rows(settings: Settings, amqp_ports: Mapping[int, str], addresses: Sequence[str]) -> list[Row]:
    """Each published credential tried on every AMQP listener (the TLS ones at each of `addresses`) and the
    management API: none may log in."""
    rows = []
    for user, password in KNOWN_CREDENTIALS:
        worked = []
        for port, name in sorted(amqp_ports.items()):
            tls = name == "AMQPS"
            for host in addresses if tls else [settings.amqp.host]:
                if _amqp_login(host, port, tls, user, password):
                    worked.append(f"{name} at {host}")
        if _management_login(settings, user, password):
            worked.append("management API")
        verdict: Verdict = "finding" if worked else "ok"
        detail = f"logs in on {', '.join(worked)}" if worked else "refused everywhere"
        rows.append(Row("secrets", f"{user}:{'*' * len(password)}", verdict, detail))
    return rows


def _amqp_login(host: str, port: int, tls: bool, user: str, password: str) -> bool:
    """True if `user` logs in to vhost `iot` at host:port (over TLS: whatever the certificate, the login is asked)."""
    ssl_options = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        ssl_options = pika.SSLOptions(context, host)
    parameters = pika.ConnectionParameters(
        host,
        port,
        VHOST,
        pika.PlainCredentials(user, password),
        ssl_options=ssl_options,
        connection_attempts=1,
        socket_timeout=PROBE_TIMEOUT_S,
        blocked_connection_timeout=PROBE_TIMEOUT_S,
    )
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def _management_login(settings: Settings, user: str, password: str) -> bool:
    request = urllib.request.Request(f"{management_url(settings)}/api/whoami")
    request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
            return True
    except (OSError, urllib.error.URLError):
        return False


# --- InfluxDB ----------------------------------------------------------------------------------------


def influx_rows(settings: Settings) -> list[Row]:
    """A query and a write without a login must both be refused (401)."""
    base = settings.influx_url.rstrip("/")
    probes = {
        "query without a login": urllib.request.Request(f"{base}/query?q={quote('SHOW DATABASES')}"),
        "write without a login": urllib.request.Request(
            f"{base}/write?db={quote(settings.influx_db)}", data=b"hub_audit_probe value=1", method="POST"
        ),
    }
    rows = []
    for subject, request in probes.items():
        try:
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, urllib.error.URLError) as exc:
            rows.append(Row("InfluxDB authentication", subject, "finding", f"cannot reach {base}: {exc}"))
            continue
        if status in (401, 403):
            rows.append(Row("InfluxDB authentication", subject, "ok", f"refused ({status})"))
        else:
            rows.append(Row("InfluxDB authentication", subject, "finding", f"answered {status}: no login needed"))
    return rows


# --- file modes --------------------------------------------------------------------------------------


def mode_rows(root: Path) -> list[Row]:
    """The stack folder owner-only (then nobody else reaches anything under it, whatever the servers' own
    modes there), and every file under it that holds a secret owner-only too."""
    if not root.is_dir():
        return [Row("file modes", str(root), "skipped", "no stack folder here")]
    rows = []
    if root.stat().st_mode & 0o077:
        rows.append(Row("file modes", str(root), "finding", f"{_described(root, root)}: others may enter"))
    secrets = [p for p in root.rglob("*") if p.name in SECRET_NAMES or p.suffix in SECRET_SUFFIXES]
    open_secrets = [p for p in secrets if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o077]
    if open_secrets:
        named = ", ".join(_described(root, path) for path in open_secrets[:PATHS_SHOWN])
        more = f" and {len(open_secrets) - PATHS_SHOWN} more" if len(open_secrets) > PATHS_SHOWN else ""
        rows.append(Row("file modes", f"{len(open_secrets)} secret files others may read", "finding", named + more))
    return rows or [Row("file modes", str(root), "ok", f"folder and its {len(secrets)} secret files owner-only")]


def _described(root: Path, path: Path) -> str:
    return f"{path.relative_to(root) if path != root else '.'} ({stat.filemode(path.lstat().st_mode)})"


# --- device accounts ---------------------------------------------------------------------------------


def permission_rows(
    users: Iterable[Mapping[str, Any]],
    granted: Iterable[Mapping[str, Any]],
    topics: Iterable[Mapping[str, Any]],
    operators: Iterable[str],
) -> list[Row]:
    """Every account but the operators' is a device's: exactly its own permissions, on vhost `iot` only, no tags."""
    devices = {str(user.get("name", "")): user.get("tags") or [] for user in users}
    for operator in operators:
        devices.pop(operator, None)
    wider: dict[str, list[str]] = {name: [f"tags {tags}"] for name, tags in devices.items() if tags}
    for kind, entries, own in (("permissions", granted, _own_vhost), ("topic permissions", topics, _own_topics)):
        for entry in entries:
            name = str(entry.get("user", ""))
            expected = own(name)
            if name in devices and (entry.get("vhost") != VHOST or any(entry.get(k) != v for k, v in expected.items())):
                wider.setdefault(name, []).append(f"{kind} beyond its own on vhost {entry.get('vhost')!r}")
    rows = [Row("device accounts", name, "finding", "; ".join(reasons)) for name, reasons in sorted(wider.items())]
    return rows or [Row("device accounts", f"{len(devices)} accounts", "ok", "each confined to its own topics")]


def _own_vhost(device: str) -> dict[str, str]:
    try:
        return vhost_permissions(device)
    except HubError:  # not a device id: nothing of it is its own
        return {"configure": "", "write": "", "read": ""}


def _own_topics(device: str) -> dict[str, str]:
    try:
        return topic_permissions(device)
    except HubError:
        return {"exchange": "", "write": "", "read": ""}


def account_rows(settings: Settings, operators: Iterable[str]) -> list[Row]:
    admin = ManagementAdmin(settings)
    return permission_rows(admin.users(), admin.permissions(), admin.topic_permissions(), operators)


def impostor_rows(settings: Settings) -> list[Row]:
    found = impostors(settings)
    rows = [
        Row("impostors", impostor.user, "finding", f"connected under client id {impostor.client_id!r}")
        for impostor in found
    ]
    return rows or [Row("impostors", "MQTT connections", "ok", "every client id is its login's own")]
