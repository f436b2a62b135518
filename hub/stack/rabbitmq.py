"""A project-local RabbitMQ node built from the files in `rabbitmq/`.

The node gets its own name, Erlang cookie, epmd and distribution ports, so it never meets
the system's RabbitMQ nor another stack (the test harness runs beside a developer's). Its
epmd and distribution listener, and those of the CLI tools run against it, are on loopback:
the nodes of a local cluster meet there, and nothing else needs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub.clients.amqp import connect
from hub.clients.management import password_hash
from hub.core.config import PROJECT_ROOT, Settings, TlsPorts, missing_secret, over_tls
from hub.core.contract import VHOST
from hub.core.errors import StackError
from hub.core.tls import settings_context
from hub.runtime import topology
from hub.stack.certs import TlsFiles, ensure_dev_tls
from hub.stack.folders import private_folder
from hub.stack.packages import RABBITMQ_SERVER
from hub.stack.processes import port_open

RABBITMQ_CONFIG_DIR = PROJECT_ROOT / "rabbitmq"
#: Seconds a readiness probe waits for the broker's answer.
PROBE_TIMEOUT_S = 5.0
#: The users of rabbitmq/definitions.json, renamed and given their passwords from settings. The
#: file in the repository gives them none (an empty hash: no password logs in).
DEFINITIONS_HUB_USER = "hub"
DEFINITIONS_ADMIN_USER = "admin"
#: The readiness probes log in with this made-up account: a refusal proves the listener answers.
PROBE_USER = "stack-probe"


@dataclass(frozen=True)
class RabbitPorts:
    amqp: int
    mqtt: int
    stomp: int
    management: int
    prometheus: int
    dist: int
    epmd: int
    #: TLS listeners (0 in the state file of a stack started before they existed: none).
    amqps: int = 0
    mqtts: int = 0
    stomps: int = 0
    #: The broker's authorisation service (hub/brokerauth) on loopback: one per stack, every node asks it.
    authz: int = 0

    @property
    def tls(self) -> TlsPorts:
        """This node's TLS listeners (what `over_tls` moves its clients to)."""
        return TlsPorts(self.amqps, self.mqtts, self.stomps)


#: A readiness check of one listener: connect with these settings to host:port, or raise.
Probe = Callable[[Settings, str, int], None]


@dataclass(frozen=True)
class Listeners:
    """How the node's listeners bind: plain ones on these loopback addresses (none: off), TLS ones everywhere."""

    plain_on: tuple[str, ...]
    tls: TlsFiles


#: Where the native node's management API and Prometheus endpoint listen (plain HTTP: loopback only).
HTTP_ADDRESS = "127.0.0.1"
#: Where epmd and Erlang distribution listen: whoever reaches them with the cookie owns the node,
#: and the nodes of a local cluster (`stack up --nodes N`) meet on this machine. epmd adds ::1 itself.
DIST_ADDRESS = "127.0.0.1"
#: The node's own folders under its home.
NODE_FOLDERS = ("mnesia", "log", "home", "conf.d")


def dist_erl_args(address: str = DIST_ADDRESS) -> str:
    """`erl` arguments that bind an Erlang VM's distribution listener to the IPv4 `address` alone."""
    return f"-kernel inet_dist_use_interface {{{address.replace('.', ',')}}}"


def loopback_addresses() -> tuple[str, ...]:
    """127.0.0.1, and ::1 where this machine can bind it (RabbitMQ fails to start on an address it cannot bind)."""
    addresses = ["127.0.0.1"]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        addresses.append("::1")
    return tuple(addresses)


def render_config(ports: RabbitPorts, definitions_path: Path, listeners: Listeners) -> str:
    """rabbitmq/rabbitmq.conf with only the listeners, ports and paths replaced (the "native:" lines)."""
    replacements = {
        "listeners.tcp.default": _plain_listener("listeners.tcp", ports.amqp, listeners.plain_on),
        "mqtt.listeners.tcp.default": _plain_listener("mqtt.listeners.tcp", ports.mqtt, listeners.plain_on),
        "stomp.listeners.tcp.default": _plain_listener("stomp.listeners.tcp", ports.stomp, listeners.plain_on),
        "listeners.ssl.default": f"listeners.ssl.default = {ports.amqps}",
        "mqtt.listeners.ssl.default": f"mqtt.listeners.ssl.default = {ports.mqtts}",
        "stomp.listeners.ssl.default": f"stomp.listeners.ssl.default = {ports.stomps}",
        "ssl_options.cacertfile": f"ssl_options.cacertfile = {listeners.tls.ca_cert}",
        "ssl_options.certfile": f"ssl_options.certfile = {listeners.tls.server_cert}",
        "ssl_options.keyfile": f"ssl_options.keyfile = {listeners.tls.server_key}",
        # Plain HTTP carries the admin password: this machine's own tools only, like the plain listeners.
        "management.tcp.port": f"management.tcp.port = {ports.management}\nmanagement.tcp.ip = {HTTP_ADDRESS}",
        "prometheus.tcp.port": f"prometheus.tcp.port = {ports.prometheus}\nprometheus.tcp.ip = {HTTP_ADDRESS}",
        "load_definitions": f"load_definitions = {definitions_path}",
    }
    text = (RABBITMQ_CONFIG_DIR / "rabbitmq.conf").read_text()
    for key, lines in replacements.items():
        # A function, not a replacement string: paths and IPv6 addresses must not be read as escapes.
        text, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", _literal(lines), text)
        if count != 1:
            raise StackError(f"rabbitmq/rabbitmq.conf must set {key} exactly once")
    return text


#: The authorisation service's address in rabbitmq/advanced.config (compose's service name and port).
ADVANCED_CONFIG_AUTHZ = "http://brokerauth:8099"
#: The node's advanced.config with IOT_BROKER_AUTH=false: nothing beyond rabbitmq.conf (internal logins only).
NO_ADVANCED_CONFIG = "[].\n"


def render_advanced_config(authz_port: int) -> str:
    """rabbitmq/advanced.config with the authorisation service on this machine's loopback at `authz_port`."""
    text = (RABBITMQ_CONFIG_DIR / "advanced.config").read_text()
    if ADVANCED_CONFIG_AUTHZ not in text:
        raise StackError(f"rabbitmq/advanced.config must name the authorisation service as {ADVANCED_CONFIG_AUTHZ}")
    return text.replace(ADVANCED_CONFIG_AUTHZ, f"http://{HTTP_ADDRESS}:{authz_port}")


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text


def _plain_listener(key: str, port: int, addresses: tuple[str, ...]) -> str:
    """`key.1 = 127.0.0.1:port` ... one line per address, or `key = none` to have no plain listener."""
    if not addresses:
        return f"{key} = none"
    return "\n".join(f"{key}.{index} = {address}:{port}" for index, address in enumerate(addresses, start=1))


def render_definitions(settings: Settings) -> dict[str, Any]:
    """rabbitmq/definitions.json with the hub and admin users and passwords from settings (IOT_*, else the
    stack's secrets): the node imports them at every boot, so a changed password takes effect at its next start."""
    definitions: dict[str, Any] = json.loads((RABBITMQ_CONFIG_DIR / "definitions.json").read_text())
    amqp = settings.amqp
    if not amqp.password:
        raise missing_secret(settings, f"the hub's broker account {amqp.user!r}", "IOT_AMQP_URL")
    if not settings.admin_password:
        raise missing_secret(settings, f"the broker's admin account {settings.admin_user!r}", "IOT_ADMIN_PASSWORD")
    names = {DEFINITIONS_HUB_USER: amqp.user, DEFINITIONS_ADMIN_USER: settings.admin_user}
    passwords = {DEFINITIONS_HUB_USER: amqp.password, DEFINITIONS_ADMIN_USER: settings.admin_password}
    for user in definitions["users"]:
        original = user["name"]
        user["name"] = names[original]
        user["password_hash"] = password_hash(passwords[original])
    for section in ("permissions", "topic_permissions"):
        for entry in definitions.get(section, []):
            entry["user"] = names[entry["user"]]
    return with_partitions(definitions, settings.partitions, VHOST)


def with_partitions(definitions: dict[str, Any], count: int, vhost: str) -> dict[str, Any]:
    """`definitions` with exactly `count` telemetry partitions (queues and bindings), as IOT_PARTITIONS
    says: the file declares the default number, and a node made with another would hold partitions
    the hub does not consume (it refuses to start) or lack some until the hub declares them."""
    queues = [q for q in definitions["queues"] if not _is_partition(q["name"])]
    bindings = [b for b in definitions["bindings"] if not _is_partition(b["destination"])]
    for queue in topology.partitions(count):
        queues.append(
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": topology.queue_arguments(queue),
            }
        )
        for key in queue.bindings:
            bindings.append(
                {
                    "source": queue.exchange,
                    "vhost": vhost,
                    "destination": queue.name,
                    "destination_type": "queue",
                    "routing_key": key,
                    "arguments": {},
                }
            )
    return {**definitions, "queues": queues, "bindings": bindings}


def _is_partition(name: str) -> bool:
    prefix = topology.PARTITION_PREFIX
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


class RabbitNode:
    """One node: its files under `home`, its ports, its environment."""

    def __init__(self, settings: Settings, home: Path, ports: RabbitPorts, tls: TlsFiles) -> None:
        self.settings = settings
        self.home = home
        self.ports = ports
        self.tls = tls
        digest = hashlib.sha1(str(home).encode()).hexdigest()[:8]
        self.node_name = f"iot-{digest}@localhost"

    @property
    def plugins_path(self) -> Path:
        """The node's enabled_plugins: rabbitmq/enabled_plugins, copied by `prepare`."""
        return self.home / "enabled_plugins"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def prepare(self) -> None:
        """The node's files, fresh from `rabbitmq/` and the settings; its folders private (also those made before)."""
        private_folder(self.home)
        for sub in NODE_FOLDERS:
            private_folder(self.home / sub)
        definitions = self.home / "definitions.json"
        definitions.write_text(json.dumps(render_definitions(self.settings), indent=2))
        definitions.chmod(0o600)
        plain_on = loopback_addresses() if self.settings.plain_listeners else ()
        listeners = Listeners(plain_on, ensure_dev_tls(self.tls.folder))
        (self.home / "rabbitmq.conf").write_text(render_config(self.ports, definitions, listeners))
        if self.settings.broker_auth and not self.ports.authz:
            raise StackError("the node has no broker auth service port (a stack started before it existed?)")
        advanced = render_advanced_config(self.ports.authz) if self.settings.broker_auth else NO_ADVANCED_CONFIG
        (self.home / "advanced.config").write_text(advanced)
        # A copy, fresh at every start: the node (and rabbitmq-plugins) may rewrite its plugins
        # file, e.g. from ENABLED_PLUGINS in rabbitmq-env.conf, and must never write into rabbitmq/.
        self.plugins_path.write_text((RABBITMQ_CONFIG_DIR / "enabled_plugins").read_text())
        cookie = self.home / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(hashlib.sha256(os.urandom(32)).hexdigest()[:20].upper())
            cookie.chmod(0o400)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home / "home"),
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_CONFIG_FILE=str(self.home / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(self.home / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.home / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.home / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.plugins_path),
            RABBITMQ_MNESIA_BASE=str(self.home / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.home / "log"),
            RABBITMQ_PID_FILE=str(self.home / "rabbitmq.pid"),
            RABBITMQ_DIST_PORT=str(self.ports.dist),
            ERL_EPMD_PORT=str(self.ports.epmd),
            # The node starts its epmd with this environment, and epmd reads its address from it.
            ERL_EPMD_ADDRESS=DIST_ADDRESS,
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=dist_erl_args(),
            # rabbitmqctl and the other CLI tools are distributed nodes too, listening while they run.
            RABBITMQ_CTL_ERL_ARGS=dist_erl_args(),
        )
        return env

    def argv(self) -> list[str]:
        return [str(RABBITMQ_SERVER)]

    def problems(self) -> list[str]:
        """What is not ready yet: empty once AMQP, MQTT and STOMP answer on every listener, and the HTTP API."""
        host = "127.0.0.1"
        probes = self._probes()
        closed = [
            f"{name} port {port} not open"
            for name, port in (*((name, port) for name, port, _c, _s in probes), ("management", self.ports.management))
            if not port_open(host, port)
        ]
        if closed:
            return closed
        problems = []
        for name, port, check, settings in probes:
            try:
                check(settings, host, port)
            except Exception as exc:
                problems.append(f"{name}: {exc or type(exc).__name__}")
        return problems

    def _probes(self) -> list[tuple[str, int, Probe, Settings]]:
        """(what, port, check, settings to connect with) for every listener the node should have."""
        tls = over_tls(self.settings.model_copy(update={"tls_ca": self.tls.ca_cert, "amqps_port": self.ports.amqps}))
        probes: list[tuple[str, int, Probe, Settings]] = [
            ("AMQP over TLS", self.ports.amqps, _amqp_ok, tls),
            ("MQTT over TLS", self.ports.mqtts, _mqtt_ok, tls),
            ("STOMP over TLS", self.ports.stomps, _stomp_ok, tls),
        ]
        if self.settings.plain_listeners:
            plain_url = re.sub(r"^amqps://", "amqp://", self.settings.amqp_url)
            plain = self.settings.model_copy(update={"amqp_url": plain_url, "mqtt_tls": False, "stomp_tls": False})
            probes += [
                ("AMQP", self.ports.amqp, _amqp_ok, plain),
                ("MQTT", self.ports.mqtt, _mqtt_ok, plain),
                ("STOMP", self.ports.stomp, _stomp_ok, plain),
            ]
        return probes

    def stop_epmd(self) -> None:
        """Our epmd listens on its own port; stop it once our node is gone."""
        subprocess.run(
            ["epmd", "-port", str(self.ports.epmd), "-kill"],
            env=self.environment(),
            capture_output=True,
            check=False,
            timeout=10,
        )


def _amqp_ok(settings: Settings, host: str, port: int) -> None:
    connection = connect(settings, "stack check", host=host, port=port)
    try:
        channel = connection.channel()
        channel.exchange_declare("iot", passive=True)
    finally:
        connection.close()


# No device account exists before one is provisioned, so the MQTT and STOMP probes log in as
# nobody: any CONNACK or ERROR frame (here: not authorised) shows the plugin answers and checks logins.


def _mqtt_ok(settings: Settings, host: str, port: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stack-check-{os.getpid()}")
    client.username_pw_set(PROBE_USER, PROBE_USER)
    if settings.mqtt_tls:
        client.tls_set_context(settings_context(settings))
    result: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason)
    client.connect(host, port, keepalive=10)
    try:
        for _ in range(50):
            client.loop(timeout=0.1)
            if result:
                break
    finally:
        client.disconnect()
    if not result:
        raise StackError("MQTT: no CONNACK")


def _stomp_ok(settings: Settings, host: str, port: int) -> None:
    frame = f"CONNECT\naccept-version:1.2\nhost:{VHOST}\nlogin:{PROBE_USER}\npasscode:{PROBE_USER}\n\n\0"
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw:
        sock = settings_context(settings).wrap_socket(raw, server_hostname=host) if settings.stomp_tls else raw
        sock.sendall(frame.encode())
        answer = sock.recv(1024)
    if not answer.startswith((b"CONNECTED", b"ERROR")):
        raise StackError(f"STOMP: no answer to CONNECT ({answer[:40]!r})")


def read_log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
