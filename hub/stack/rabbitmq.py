"""A project-local RabbitMQ node built from the files in `rabbitmq/`.

The node gets its own name, Erlang cookie, epmd and distribution ports, so it never meets
the system's RabbitMQ nor another stack (the test harness runs beside a developer's).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub.clients.amqp import connect
from hub.clients.management import password_hash
from hub.core.config import PROJECT_ROOT, Settings
from hub.core.contract import VHOST
from hub.core.errors import StackError
from hub.stack.packages import RABBITMQ_SERVER
from hub.stack.processes import port_open

RABBITMQ_CONFIG_DIR = PROJECT_ROOT / "rabbitmq"
#: Seconds a readiness probe waits for the broker's answer.
PROBE_TIMEOUT_S = 5.0
#: The development users in rabbitmq/definitions.json, renamed and re-passworded from settings.
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


def render_config(ports: RabbitPorts, definitions_path: Path) -> str:
    """rabbitmq/rabbitmq.conf with only the ports and the definitions path replaced."""
    replacements = {
        "listeners.tcp.default": str(ports.amqp),
        "mqtt.listeners.tcp.default": str(ports.mqtt),
        "stomp.listeners.tcp.default": str(ports.stomp),
        "management.tcp.port": str(ports.management),
        "prometheus.tcp.port": str(ports.prometheus),
        "load_definitions": str(definitions_path),
    }
    text = (RABBITMQ_CONFIG_DIR / "rabbitmq.conf").read_text()
    for key, value in replacements.items():
        text, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
        if count != 1:
            raise StackError(f"rabbitmq/rabbitmq.conf must set {key} exactly once")
    return text


def render_definitions(settings: Settings) -> dict[str, Any]:
    """rabbitmq/definitions.json with the hub and admin users and passwords from settings."""
    definitions: dict[str, Any] = json.loads((RABBITMQ_CONFIG_DIR / "definitions.json").read_text())
    amqp = settings.amqp
    names = {DEFINITIONS_HUB_USER: amqp.user, DEFINITIONS_ADMIN_USER: settings.admin_user}
    passwords = {DEFINITIONS_HUB_USER: amqp.password, DEFINITIONS_ADMIN_USER: settings.admin_password}
    for user in definitions["users"]:
        original = user["name"]
        user["name"] = names[original]
        user["password_hash"] = password_hash(passwords[original])
    for section in ("permissions", "topic_permissions"):
        for entry in definitions.get(section, []):
            entry["user"] = names[entry["user"]]
    return definitions


class RabbitNode:
    """One node: its files under `home`, its ports, its environment."""

    def __init__(self, settings: Settings, home: Path, ports: RabbitPorts) -> None:
        self.settings = settings
        self.home = home
        self.ports = ports
        digest = hashlib.sha1(str(home).encode()).hexdigest()[:8]
        self.node_name = f"iot-{digest}@localhost"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def prepare(self) -> None:
        for sub in ("mnesia", "log", "home", "conf.d"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        definitions = self.home / "definitions.json"
        definitions.write_text(json.dumps(render_definitions(self.settings), indent=2))
        definitions.chmod(0o600)
        (self.home / "rabbitmq.conf").write_text(render_config(self.ports, definitions))
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
            RABBITMQ_ENABLED_PLUGINS_FILE=str(RABBITMQ_CONFIG_DIR / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.home / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.home / "log"),
            RABBITMQ_PID_FILE=str(self.home / "rabbitmq.pid"),
            RABBITMQ_DIST_PORT=str(self.ports.dist),
            ERL_EPMD_PORT=str(self.ports.epmd),
        )
        return env

    def argv(self) -> list[str]:
        return [str(RABBITMQ_SERVER)]

    def problems(self) -> list[str]:
        """What is not ready yet: an empty list means AMQP, MQTT, STOMP and the HTTP API all answer."""
        host = "127.0.0.1"
        closed = [
            name
            for name, port in (
                ("AMQP", self.ports.amqp),
                ("MQTT", self.ports.mqtt),
                ("STOMP", self.ports.stomp),
                ("management", self.ports.management),
            )
            if not port_open(host, port)
        ]
        if closed:
            return [f"{name} port not open" for name in closed]
        problems = []
        for name, check in (("AMQP", self._amqp_ok), ("MQTT", self._mqtt_ok), ("STOMP", self._stomp_ok)):
            try:
                check(host)
            except Exception as exc:
                problems.append(f"{name}: {exc or type(exc).__name__}")
        return problems

    def _amqp_ok(self, host: str) -> None:
        connection = connect(self.settings, "stack check", host=host, port=self.ports.amqp)
        try:
            channel = connection.channel()
            channel.exchange_declare("iot", passive=True)
        finally:
            connection.close()

    # No device account exists before one is provisioned, so the MQTT and STOMP probes log in as
    # nobody: any CONNACK or ERROR frame (here: not authorised) shows the plugin answers and checks logins.

    def _mqtt_ok(self, host: str) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stack-check-{os.getpid()}")
        client.username_pw_set(PROBE_USER, PROBE_USER)
        result: list[Any] = []
        client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason)
        client.connect(host, self.ports.mqtt, keepalive=10)
        try:
            for _ in range(50):
                client.loop(timeout=0.1)
                if result:
                    break
        finally:
            client.disconnect()
        if not result:
            raise StackError("MQTT: no CONNACK")

    def _stomp_ok(self, host: str) -> None:
        frame = f"CONNECT\naccept-version:1.2\nhost:{VHOST}\nlogin:{PROBE_USER}\npasscode:{PROBE_USER}\n\n\0"
        with socket.create_connection((host, self.ports.stomp), timeout=PROBE_TIMEOUT_S) as sock:
            sock.sendall(frame.encode())
            answer = sock.recv(1024)
        if not answer.startswith((b"CONNECTED", b"ERROR")):
            raise StackError(f"STOMP: no answer to CONNECT ({answer[:40]!r})")

    def stop_epmd(self) -> None:
        """Our epmd listens on its own port; stop it once our node is gone."""
        subprocess.run(
            ["epmd", "-port", str(self.ports.epmd), "-kill"],
            env=self.environment(),
            capture_output=True,
            check=False,
            timeout=10,
        )


def read_log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
