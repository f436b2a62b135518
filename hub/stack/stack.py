"""Bring the whole native stack up, report on it, and take it down again."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hub.core.config import DEFAULT_AMQP_PORT, DEV_TLS_DIR, Settings, load_settings, with_stack_secrets
from hub.core.errors import StackError
from hub.core.secrets import HUB_USER, SECRETS_FILE_NAME, ensure_secrets
from hub.stack import processes
from hub.stack.brokerauth import BrokerAuthService, operator_accounts
from hub.stack.certs import TlsFiles
from hub.stack.device_permissions import upgrade_device_permissions
from hub.stack.folders import private_folder
from hub.stack.influx import InfluxNode, apply_retention
from hub.stack.packages import ensure_packages
from hub.stack.rabbitmq import RabbitNode, RabbitPorts, read_log_tail

#: A cold RabbitMQ start with four plugins takes 10-20 s on two cores; leave room for a busy CI.
READY_TIMEOUT_S = 180.0
READY_POLL_S = 0.5
#: How long the ports of a server that has just died may take to be released before a restart.
PORT_RELEASE_WAIT_S = 15.0
STATE_FILE = "stack.json"
#: The stack's processes by name, in the order `up` starts them: the broker asks the auth service at every login.
INFLUXDB, BROKER_AUTH, RABBITMQ = "InfluxDB", "broker auth", "RabbitMQ"
#: Where stack.json keeps each process's pid.
STATE_PIDS = {INFLUXDB: "influx_pid", BROKER_AUTH: "authz_pid", RABBITMQ: "rabbit_pid"}
#: The folder under the stack's root of each process (its data, logs; what recognises it as ours).
HOMES = {INFLUXDB: "influxdb", BROKER_AUTH: "brokerauth", RABBITMQ: "rabbitmq"}

#: What `up` starts and waits for.
Server = RabbitNode | InfluxNode | BrokerAuthService
#: The servers' homes (data, logs, configuration) in the stack folder.
RABBITMQ_DIR = HOMES[RABBITMQ]
INFLUXDB_DIR = HOMES[INFLUXDB]

#: `up` refuses a stack that runs without a secrets file: it was started before the stack had
#: secrets of its own, and its broker still takes the passwords the README once published.
RUNNING_WITHOUT_SECRETS = (
    "the stack under {root} runs without its own secrets (started before they existed, or {secrets} was "
    "deleted), and its broker takes passwords that are not secret: run `python -m hub stack down`, then "
    "`python -m hub stack up` (the data is kept; the accounts get generated passwords)"
)


@dataclass
class ServiceStatus:
    name: str
    pid: int
    running: bool
    endpoints: dict[str, str] = field(default_factory=dict)


@dataclass
class StackStatus:
    root: Path
    services: list[ServiceStatus]
    already_running: bool = False

    @property
    def running(self) -> bool:
        return bool(self.services) and all(s.running for s in self.services)


def settings_on_free_ports(root: Path) -> Settings:
    """Settings for a private stack under `root` with every port free right now (tests, benchmarks),
    and the stack's secrets, made now, in them."""
    ports: set[int] = set()
    while len(ports) < 9:
        ports.add(processes.free_port())
    amqp, mqtt, stomp, management, prometheus, influx, amqps, mqtts, stomps = sorted(ports)
    ensure_secrets(root / SECRETS_FILE_NAME)
    return load_settings(
        amqp_url=f"amqp://{HUB_USER}@127.0.0.1:{amqp}/iot",
        mqtt_host="127.0.0.1",
        mqtt_port=mqtt,
        stomp_host="127.0.0.1",
        stomp_port=stomp,
        amqps_port=amqps,
        mqtts_port=mqtts,
        stomps_port=stomps,
        management_port=management,
        rabbitmq_prometheus_port=prometheus,
        influx_url=f"http://127.0.0.1:{influx}",
        stack_dir=root,
    )


def stack_root(settings: Settings) -> Path:
    return settings.stack_path


class Stack:
    """The project-local RabbitMQ node and influxd, with data and logs under one folder."""

    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        self.settings = settings
        self.root = (root or stack_root(settings)).resolve()
        self.state_path = self.root / STATE_FILE
        #: The development CA and the node's certificate: made at the first `up`, kept after.
        self.tls = TlsFiles(self.root / DEV_TLS_DIR)

    # --- public --------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = lambda _msg: None) -> StackStatus:
        """Start both servers and wait until they really answer.

        A running stack is left alone; a partly running one gets its missing server started
        again on the ports it had, and the running one is left alone. The stack folder is
        made private (mode 0700) even if an older version left it open, and each server's
        folders as it starts.
        """
        private_folder(self.root)
        with self._lock():
            current = self._status_unlocked()
            self.adopt_secrets(any(s.running for s in current.services), progress)
            if current.running:
                current.already_running = True
                # Settings may have changed since it started: the retention follows IOT_RETENTION_* now.
                running_state = self._load_state()
                if running_state is not None:
                    port = running_state["influx_http_port"]
                    apply_retention(InfluxNode(self.root, port, 0).url, self.settings, progress)
                upgrade_device_permissions(self.settings, progress)
                return current
            state = self._load_state() if any(s.running for s in current.services) else None
            installed = ensure_packages()
            if installed:
                progress(f"installed Debian packages: {' '.join(installed)}")
            if state is None:
                rabbit, influx = self._nodes(self._choose_ports())
                missing = {INFLUXDB, BROKER_AUTH, RABBITMQ}
            else:
                ports = RabbitPorts(**state["rabbit_ports"])
                if not ports.authz:
                    ports = replace(ports, authz=processes.free_port())
                rabbit, influx = self._nodes(ports, state["influx_http_port"], state["influx_rpc_port"])
                missing = {s.name for s in current.services if not s.running} | (
                    set() if any(s.name == BROKER_AUTH for s in current.services) else {BROKER_AUTH}
                )
            if not self.settings.broker_auth:
                missing.discard(BROKER_AUTH)
            if state is not None:
                kept = ", ".join(s.name for s in current.services if s.running)
                progress(f"{' and '.join(sorted(missing))} not running: starting it again ({kept} left as it is)")
            authz = self._broker_auth(rabbit.ports)
            self._refuse_busy_ports(
                rabbit if RABBITMQ in missing else None,
                influx if INFLUXDB in missing else None,
                release_wait_s=0.0 if state is None else PORT_RELEASE_WAIT_S,
                authz=authz if BROKER_AUTH in missing else None,
            )
            started = time.monotonic()
            pending: dict[str, tuple[Server, subprocess.Popen[bytes]]] = {}
            pids = {name: state.get(STATE_PIDS[name], 0) if state else 0 for name in STATE_PIDS}
            if not self.settings.broker_auth and not pids[BROKER_AUTH]:
                del pids[BROKER_AUTH]
            if RABBITMQ in missing and state is not None:
                # An epmd left by the node that died keeps the address it was started with: the
                # new node starts its own, as configured now (epmd refuses while a node is registered).
                rabbit.stop_epmd()
            try:
                for name, node in ((INFLUXDB, influx), (BROKER_AUTH, authz), (RABBITMQ, rabbit)):
                    if name not in missing:
                        continue
                    if name == RABBITMQ and BROKER_AUTH in pending:
                        # The node's first logins (its own probes, the hub) already ask the service.
                        self._wait_ready({BROKER_AUTH: pending.pop(BROKER_AUTH)}, progress)
                    node.prepare()
                    process = processes.start_detached(node.argv(), node.environment(), node.log_path, self.root)
                    pending[name] = (node, process)
                    pids[name] = process.pid
                    self._save_state(rabbit, influx, pids)
                progress(
                    " and ".join(f"started {'influxd' if n == INFLUXDB else n} (pid {pids[n]})" for n in pending)
                    + "; waiting until they answer"
                )
                self._wait_ready(pending, progress)
                if INFLUXDB in missing:
                    influx.ensure_accounts(self.settings, progress)
                upgrade_device_permissions(self.settings, progress)
            except BaseException:
                if state is None:
                    self._stop_unlocked()
                raise
            progress(f"ready in {time.monotonic() - started:.1f} s")
            return self._status_unlocked()

    def down(self, purge: bool = False) -> list[str]:
        """Stop exactly the processes `up` started. Returns the names of those that were running."""
        if not self.root.exists():
            return []
        with self._lock():
            stopped = self._stop_unlocked()
        if purge:
            shutil.rmtree(self.root, ignore_errors=True)
        return stopped

    def status(self) -> StackStatus:
        return self._status_unlocked()

    def node_ports(self) -> list[RabbitPorts]:
        """The running node's ports, as a list like a cluster's (empty: no stack here)."""
        state = self._load_state()
        return [RabbitPorts(**state["rabbit_ports"])] if state is not None else []

    def broker_auth(self) -> BrokerAuthService | None:
        """The running stack's broker auth service (None: no stack here, or one without it)."""
        state = self._load_state()
        if state is None or "authz_pid" not in state:
            return None
        return self._broker_auth(RabbitPorts(**state["rabbit_ports"]))

    def server_pids(self) -> list[int]:
        """Every running process of the stack's servers: the RabbitMQ node with its epmd and helpers,
        influxd and the broker auth service (see `hub.stack.sockets` for what they listen on)."""
        return processes.all_ours(*(self.root / home for home in HOMES.values()))

    @property
    def secrets_path(self) -> Path:
        return self.root / SECRETS_FILE_NAME

    def adopt_secrets(self, running: bool, progress: Callable[[str], None] = lambda _msg: None) -> None:
        """The stack's secrets, made at its first start, into `self.settings` (IOT_* values still win).

        A stack that runs without them (`running`) is refused: see RUNNING_WITHOUT_SECRETS.
        One stopped, made before secrets existed, gets them now and is migrated as it starts:
        the broker imports its users' new passwords at boot, and InfluxDB gets its accounts.
        """
        if running and not self.secrets_path.exists():
            raise StackError(RUNNING_WITHOUT_SECRETS.format(root=self.root, secrets=self.secrets_path))
        secrets, made = ensure_secrets(self.secrets_path)
        if made:
            progress(f"generated the stack's secrets into {self.secrets_path} (mode 0600)")
        self.settings = with_stack_secrets(self.settings, secrets)

    def kill(self, name: str, sig: signal.Signals = signal.SIGTERM) -> bool:
        """Stop one server ("RabbitMQ" or "InfluxDB") with `sig` and wait until it is gone; `up()` starts it again.

        For fault drills and tests: its data, ports and the other server are left as they are.
        True if it was running.
        """
        with self._lock():
            for service in self._status_unlocked().services:
                if service.name == name:
                    return processes.stop(service.pid, str(self.root / HOMES[name]), first=sig)
        raise StackError(f"no server {name!r} in the stack at {self.root}")

    # --- internals -----------------------------------------------------------------------------

    def _nodes(
        self, ports: RabbitPorts, influx_http: int | None = None, influx_rpc: int | None = None
    ) -> tuple[RabbitNode, InfluxNode]:
        rabbit = RabbitNode(self.settings, self.root / RABBITMQ_DIR, ports, self.tls)
        influx = InfluxNode(
            self.root / INFLUXDB_DIR,
            influx_http or self.settings.influx_port,
            influx_rpc or processes.free_port(),
        )
        return rabbit, influx

    def _broker_auth(self, ports: RabbitPorts) -> BrokerAuthService:
        return BrokerAuthService(self.root / HOMES[BROKER_AUTH], ports.authz, operator_accounts(self.settings))

    def _choose_ports(self) -> RabbitPorts:
        s = self.settings
        amqp = s.amqp
        return RabbitPorts(
            # An amqps:// URL names the TLS listener's port; the plain one keeps its default then.
            amqp=DEFAULT_AMQP_PORT if amqp.tls else amqp.port,
            amqps=amqp.port if amqp.tls else s.amqps_port,
            mqtts=s.mqtts_port,
            stomps=s.stomps_port,
            mqtt=s.mqtt_port,
            stomp=s.stomp_port,
            management=s.management_port,
            prometheus=s.rabbitmq_prometheus_port,
            dist=processes.free_port(),
            epmd=processes.free_port(),
            authz=processes.free_port(),
        )

    def _refuse_busy_ports(
        self,
        rabbit: RabbitNode | None,
        influx: InfluxNode | None,
        release_wait_s: float = 0.0,
        authz: BrokerAuthService | None = None,
    ) -> None:
        """Refuse to start a server whose ports another program holds (None: that server is not started).

        `release_wait_s`: how long ports may take to be released first. A server that has just died
        can hold its sockets a few seconds longer than its pid looks alive (a many-threaded
        process is torn down thread by thread), so a restart gives them that long.
        """
        wanted: dict[str, int] = {}
        if rabbit is not None:
            wanted.update(
                {
                    "IOT_AMQP_URL (AMQP port)": rabbit.ports.amqp,
                    "IOT_MQTT_PORT": rabbit.ports.mqtt,
                    "IOT_STOMP_PORT": rabbit.ports.stomp,
                    "IOT_MANAGEMENT_PORT": rabbit.ports.management,
                    "IOT_RABBITMQ_PROMETHEUS_PORT": rabbit.ports.prometheus,
                    "IOT_AMQPS_PORT": rabbit.ports.amqps,
                    "IOT_MQTTS_PORT": rabbit.ports.mqtts,
                    "IOT_STOMPS_PORT": rabbit.ports.stomps,
                }
            )
        if influx is not None:
            wanted["IOT_INFLUX_URL (InfluxDB port)"] = influx.http_port
        if authz is not None:
            wanted["the broker auth service (a free port chosen at the first `up`)"] = authz.port
        deadline = time.monotonic() + release_wait_s
        while True:
            busy = [f"{port} ({name})" for name, port in wanted.items() if processes.port_open("127.0.0.1", port)]
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(READY_POLL_S)
        if busy:
            raise StackError(
                "ports already in use by another program: "
                + ", ".join(busy)
                + ". Stop it, or choose other ports with the IOT_* variables or flags."
            )

    def _wait_ready(
        self,
        pending: dict[str, tuple[Server, subprocess.Popen[bytes]]],
        progress: Callable[[str], None],
        timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while pending:
            for name, (node, process) in list(pending.items()):
                if process.poll() is not None:
                    raise StackError(
                        f"{name} exited ({process.returncode}) while starting; "
                        f"last lines of {node.log_path}:\n" + read_log_tail(node.log_path) + self._rabbit_log_hint(node)
                    )
                problems = node.problems()
                if not problems:
                    progress(f"{name} is ready")
                    del pending[name]
                elif time.monotonic() > deadline:
                    raise StackError(
                        f"{name} not ready after {timeout_s:.0f} s ({'; '.join(problems)}); "
                        f"see {node.log_path}" + self._rabbit_log_hint(node)
                    )
            if pending:
                time.sleep(READY_POLL_S)

    @staticmethod
    def _rabbit_log_hint(node: Server) -> str:
        if isinstance(node, RabbitNode):
            logs = sorted((node.home / "log").glob("*.log"))
            if logs:
                return f"\n(node log: {logs[0]})\n" + read_log_tail(logs[0], 15)
        return ""

    def _stop_unlocked(self) -> list[str]:
        state = self._load_state()
        if state is None:
            return []
        rabbit, influx = self._nodes(
            RabbitPorts(**state["rabbit_ports"]), state["influx_http_port"], state["influx_rpc_port"]
        )
        stopped = []
        if processes.stop(state["rabbit_pid"], str(rabbit.home)):
            stopped.append(RABBITMQ)
        rabbit.stop_epmd()
        if processes.stop(state.get("authz_pid", 0), str(self.root / HOMES[BROKER_AUTH])):
            stopped.append(BROKER_AUTH)
        if processes.stop(state["influx_pid"], str(influx.home)):
            stopped.append(INFLUXDB)
        self.state_path.unlink(missing_ok=True)
        return stopped

    def _status_unlocked(self) -> StackStatus:
        state = self._load_state()
        if state is None:
            return StackStatus(self.root, [])
        ports = RabbitPorts(**state["rabbit_ports"])
        rabbit, influx = self._nodes(ports, state["influx_http_port"], state["influx_rpc_port"])
        host = "localhost"
        return StackStatus(
            self.root,
            [
                ServiceStatus(
                    "RabbitMQ",
                    state["rabbit_pid"],
                    processes.is_ours(state["rabbit_pid"], str(rabbit.home)),
                    {
                        **(
                            {
                                "AMQP": f"amqp://{host}:{ports.amqp}/iot",
                                "MQTT": f"mqtt://{host}:{ports.mqtt}",
                                "STOMP": f"stomp://{host}:{ports.stomp}",
                            }
                            if state.get("plain_listeners", True)
                            else {}
                        ),
                        **(
                            {
                                "AMQPS": f"amqps://{host}:{ports.amqps}/iot",
                                "MQTTS": f"mqtts://{host}:{ports.mqtts}",
                                "STOMP over TLS": f"stomp+ssl://{host}:{ports.stomps}",
                                "CA": str(self.tls.ca_cert),
                            }
                            if ports.amqps
                            else {}
                        ),
                        "management": f"http://{host}:{ports.management}/",
                        "prometheus": f"http://{host}:{ports.prometheus}/metrics",
                    },
                ),
                ServiceStatus(
                    INFLUXDB,
                    state["influx_pid"],
                    processes.is_ours(state["influx_pid"], str(influx.home)),
                    {"HTTP": f"http://{host}:{influx.http_port}", "database": self.settings.influx_db},
                ),
                *self._broker_auth_status(state, ports),
            ],
        )

    def _broker_auth_status(self, state: dict[str, Any], ports: RabbitPorts) -> list[ServiceStatus]:
        """The auth service's line (none in the state of a stack started before it existed: `up` adds it)."""
        if "authz_pid" not in state:
            return []
        authz = self._broker_auth(ports)
        running = processes.is_ours(state["authz_pid"], str(authz.home))
        return [ServiceStatus(BROKER_AUTH, state["authz_pid"], running, {"HTTP": f"{authz.url}/health"})]

    def _save_state(self, rabbit: RabbitNode, influx: InfluxNode, pids: dict[str, int]) -> None:
        state = {
            **{STATE_PIDS[name]: pid for name, pid in pids.items()},
            "rabbit_ports": asdict(rabbit.ports),
            "influx_http_port": influx.http_port,
            "influx_rpc_port": influx.rpc_port,
            "node_name": rabbit.node_name,
            "plain_listeners": self.settings.plain_listeners,
        }
        self.state_path.write_text(json.dumps(state, indent=2))

    def _load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / "stack.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
