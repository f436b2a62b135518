"""A native RabbitMQ cluster: N project-local nodes on this machine, formed by peer discovery, and influxd.

Ports: node i (0, 1, 2...) listens on the single node's port plus `i * NODE_PORT_OFFSET` for
every listener (AMQP 5672, 5772, 5872; MQTT 1883, 1983, 2083; ...), so node 0 answers where a
single node would. The nodes share one Erlang cookie and one epmd (on a free port) and each
has its own distribution port, data and logs under `<stack>/cluster/rabbit-<i>/`.

The cluster forms by declarative peer discovery (`classic_config`, every node listed in each
node's configuration), never by `rabbitmqctl join_cluster`: node 0 boots first and imports the
definitions, the others join it as they boot. The quorum queues of the definitions were made
while node 0 was alone, so once all nodes run they are grown to every node (`rabbitmq-queues
grow`); queues declared later get every node from the start.

A cluster that ran before starts all its nodes at once. A node on its data waits for the peers
it last saw before it serves (RabbitMQ's "Waiting for Mnesia tables"): only the node that stopped
last may start alone, and `down` stops the nodes in turn, node 0 first, while a node lost before
`down` may have been any. Started together, they find each other whatever the order they stopped
in; all but one then wait for the MQTT plugin's client id tracking (`MQTT_TRACKING_WAIT_S`), so
such a start takes about two minutes where a new cluster takes half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hub.core.config import CLUSTER_DIR, CLUSTER_STATE_FILE, Settings
from hub.core.contract import VHOST
from hub.core.errors import StackError
from hub.stack import processes
from hub.stack.brokerauth import BrokerAuthService, operator_accounts
from hub.stack.folders import private_folder
from hub.stack.influx import apply_retention
from hub.stack.rabbitmq import RabbitNode, RabbitPorts, render_definitions
from hub.stack.stack import (
    BROKER_AUTH,
    HOMES,
    INFLUXDB_DIR,
    READY_POLL_S,
    READY_TIMEOUT_S,
    Server,
    ServiceStatus,
    Stack,
    StackStatus,
    settings_on_free_ports,
)

#: Node i listens on every single-node port plus i times this (100 keeps 15672/15692 apart).
NODE_PORT_OFFSET = 100
#: Ports that are not a node's own listeners: the distribution port (each node its own, free), one epmd
#: and one broker auth service for all nodes.
SHARED_PORTS = ("dist", "epmd", "authz")
RABBITMQ_QUEUES = Path("/usr/lib/rabbitmq/bin/rabbitmq-queues")
RABBITMQCTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
#: Seconds `restart_node` waits for the node's client connections to be gone before its SIGTERM.
CLOSE_WAIT_S = 10.0
#: What a client whose connection `restart_node` closes is told.
RESTART_REASON = "node restarting: connect to another node"
#: Seconds one `rabbitmq-queues grow` or `rabbitmqctl list_queues` may take (a CLI tool starts an Erlang VM).
CTL_TIMEOUT_S = 120.0
#: Seconds a management API call of `status` may take.
API_TIMEOUT_S = 5.0
COOKIE_LENGTH = 20
#: The definitions' policy for MQTT devices' session queues (see `_mirror_device_sessions`).
SESSIONS_POLICY = "device-sessions"
#: The health checks that say a node may stop without a queue losing its quorum or its last synchronised mirror.
SAFE_TO_STOP_CHECKS = ("check_if_node_is_quorum_critical", "check_if_node_is_mirror_sync_critical")
#: Seconds between two looks at a restarting node's queues (each look starts an Erlang VM).
SYNC_POLL_S = 1.0
#: Seconds a node on its data may wait, once its peers run, for the MQTT plugin's client id tracking
#: (a Raft cluster of its own in RabbitMQ 3.10, `mqtt_node`) to find a leader before it serves: none
#: has one after the whole cluster stopped, and a node asks its peers for one for up to 100 s.
MQTT_TRACKING_WAIT_S = 100.0


def offset_ports(ports: RabbitPorts, index: int, dist: int, epmd: int) -> RabbitPorts:
    """Node `index`: every listener `index * NODE_PORT_OFFSET` above node 0; its own dist port, the shared epmd
    and auth service."""
    shift = index * NODE_PORT_OFFSET
    listeners = {name: value + shift for name, value in asdict(ports).items() if name not in SHARED_PORTS and value}
    return replace(ports, **listeners, dist=dist, epmd=epmd)


def node_settings(settings: Settings, ports: RabbitPorts) -> Settings:
    """Settings as one node sees itself: its own AMQP URL, listener ports and HTTP API."""
    first = settings.amqp_urls[0]
    parts = urlsplit(first)
    scheme_port = ports.amqps if parts.scheme == "amqps" else ports.amqp
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{scheme_port}", parts.path, parts.query, ""))
    return settings.model_copy(
        update={
            "amqp_url": url,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": ports.mqtt,
            "stomp_host": "127.0.0.1",
            "stomp_port": ports.stomp,
            "mqtt_addresses": "",
            "stomp_addresses": "",
            "management_addresses": "",
            "amqps_port": ports.amqps,
            "mqtts_port": ports.mqtts,
            "stomps_port": ports.stomps,
            "management_port": ports.management,
            "rabbitmq_prometheus_port": ports.prometheus,
        }
    )


def client_settings(settings: Settings, all_ports: list[RabbitPorts]) -> dict[str, str]:
    """The IOT_* variables that point clients at every node (what `stack up --nodes N` prints)."""
    urls = [node_settings(settings, ports).amqp_url for ports in all_ports]
    tls_m, tls_s = settings.mqtt_tls, settings.stomp_tls
    return {
        "IOT_AMQP_URL": ",".join(urls),
        "IOT_MQTT_ADDRESSES": ",".join(f"127.0.0.1:{p.mqtts if tls_m else p.mqtt}" for p in all_ports),
        "IOT_STOMP_ADDRESSES": ",".join(f"127.0.0.1:{p.stomps if tls_s else p.stomp}" for p in all_ports),
        "IOT_MANAGEMENT_PORT": str(all_ports[0].management),
        "IOT_MANAGEMENT_ADDRESSES": ",".join(f"127.0.0.1:{p.management}" for p in all_ports),
    }


def has_data(node: RabbitNode) -> bool:
    """Whether `node` ran before: its database (RabbitMQ's Mnesia directory, named after the node) exists."""
    return (node.home / "mnesia" / node.node_name).is_dir()


def cluster_config(node_names: list[str]) -> str:
    """The conf.d file that makes a node find the others by `classic_config` peer discovery."""
    lines = ["cluster_formation.peer_discovery_backend = classic_config"]
    lines += [f"cluster_formation.classic_config.nodes.{i} = {name}" for i, name in enumerate(node_names, start=1)]
    return "\n".join(lines) + "\n"


def lagging_quorum_queues(rows: list[dict[str, Any]], nodes: list[str]) -> list[str]:
    """The quorum queues (rows of `rabbitmqctl list_queues name type members online`) not online on every node."""
    wanted = set(nodes)
    return sorted(
        str(row["name"])
        for row in rows
        if row.get("type") == "quorum" and not wanted <= set(row.get("online") or []) & set(row.get("members") or [])
    )


@dataclass
class QueueReplicas:
    name: str
    leader: str
    members: list[str] = field(default_factory=list)


@dataclass
class ClusterStatus(StackStatus):
    queues: list[QueueReplicas] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    #: Seconds `up` took, from the first start to quorum queues on every node (0: not started by this call).
    ready_s: float = 0.0


class Cluster:
    """`nodes` RabbitMQ nodes clustered on this machine, plus the stack's influxd, under the stack folder."""

    def __init__(
        self, settings: Settings, nodes: int = 3, root: Path | None = None, ports: list[RabbitPorts] | None = None
    ) -> None:
        if nodes < 2:
            raise StackError(f"a cluster has at least 2 nodes (got {nodes}); one node is `stack up`")
        self.settings = settings
        self.count = nodes
        #: The single-node stack of the same folder: its influxd, TLS files and helpers.
        self.base = Stack(settings, root)
        self.root = self.base.root
        self.state_path = self.root / CLUSTER_STATE_FILE
        self._given_ports = ports

    # --- public --------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = lambda _msg: None) -> ClusterStatus:
        """Start every node and influxd, wait until the cluster has all its nodes, grow the quorum queues."""
        private_folder(self.root)
        with self.base._lock():
            current = self._status_unlocked()
            self.base.adopt_secrets(any(s.running for s in current.services), progress)
            self.settings = self.base.settings
            if current.services and any(s.running for s in current.services):
                current.already_running = current.running
                if not current.running:
                    raise StackError(
                        "part of the cluster runs: `python -m hub stack down` first, then `stack up --nodes N`"
                    )
                state = self._load_state()
                if state is not None:
                    apply_retention(f"http://127.0.0.1:{state['influx_http_port']}", self.settings, progress)
                return current
            if self.base.state_path.exists() and any(s.running for s in self.base._status_unlocked().services):
                raise StackError("a single-node stack runs in this folder: `python -m hub stack down` first")
            started = time.monotonic()
            nodes = self._nodes(self._choose_ports())
            _rabbit, influx = self.base._nodes(nodes[0].ports)
            authz = self._broker_auth(nodes[0].ports)
            for node in nodes:
                self.base._refuse_busy_ports(node, None)
            self.base._refuse_busy_ports(None, influx, authz=authz)
            self._prepare(nodes)
            pids: list[int] = [0] * len(nodes)
            try:
                influx.prepare()
                influx_process = processes.start_detached(
                    influx.argv(), influx.environment(), influx.log_path, self.root
                )
                extra = {"influx_pid": influx_process.pid}
                if self.settings.broker_auth:
                    authz.prepare()
                    authz_process = processes.start_detached(
                        authz.argv(), authz.environment(), authz.log_path, self.root
                    )
                    extra["authz_pid"] = authz_process.pid
                    self._save_state(nodes, pids, influx.http_port, influx.rpc_port, extra)
                    # Every login asks the auth service, the nodes' own readiness probes included.
                    self.base._wait_ready({BROKER_AUTH: (authz, authz_process)}, progress)
                if any(has_data(node) for node in nodes):
                    # Each node waits for the peers it last saw: the cluster starts as a whole.
                    started_nodes = {f"node {i}": (node, self._start(node)) for i, node in enumerate(nodes)}
                    for i, (_node, process) in enumerate(started_nodes.values()):
                        pids[i] = process.pid
                    self._save_state(nodes, pids, influx.http_port, influx.rpc_port, extra)
                    progress(f"started nodes 0-{len(nodes) - 1} on their data together, and influxd")
                    waiting: dict[str, tuple[Server, subprocess.Popen[bytes]]] = {
                        **started_nodes,
                        "InfluxDB": (influx, influx_process),
                    }
                    self.base._wait_ready(waiting, progress, READY_TIMEOUT_S + MQTT_TRACKING_WAIT_S)
                else:
                    # Node 0 first: it boots alone and imports the definitions; the others then join it.
                    first = self._start(nodes[0])
                    pids[0] = first.pid
                    self._save_state(nodes, pids, influx.http_port, influx.rpc_port, extra)
                    progress(f"started node 0 (pid {first.pid}) and influxd (pid {influx_process.pid})")
                    self.base._wait_ready({"node 0": (nodes[0], first), "InfluxDB": (influx, influx_process)}, progress)
                    rest = {f"node {i}": (node, self._start(node)) for i, node in enumerate(nodes[1:], start=1)}
                    for i, (_node, process) in enumerate(rest.values(), start=1):
                        pids[i] = process.pid
                    self._save_state(nodes, pids, influx.http_port, influx.rpc_port, extra)
                    progress(f"started nodes 1-{len(nodes) - 1}; waiting until they join")
                    self.base._wait_ready(dict(rest), progress)
                self._wait_members(nodes, progress)
                self._grow(nodes, progress)
                self._mirror_device_sessions(nodes[0])
                influx.ensure_accounts(self.settings, progress)
            except BaseException:
                self._stop_unlocked()
                raise
            ready_s = time.monotonic() - started
            progress(f"cluster of {len(nodes)} ready in {ready_s:.1f} s")
            status = self._status_unlocked()
            status.ready_s = ready_s
            return status

    def down(self, purge: bool = False) -> list[str]:
        """Stop exactly the processes `up` started. Returns the names of those that were running."""
        if not self.root.exists():
            return []
        with self.base._lock():
            stopped = self._stop_unlocked()
        if purge:
            shutil.rmtree(self.root / CLUSTER_DIR, ignore_errors=True)
            self.base.down(purge=True)
        return stopped

    def status(self) -> ClusterStatus:
        return self._status_unlocked()

    def node_pids(self) -> list[int]:
        """The pid of each node's server, by index (0: not started)."""
        state = self._load_state()
        return [int(entry["pid"]) for entry in state["nodes"]] if state else []

    def restart_node(self, index: int, progress: Callable[[str], None] = lambda _msg: None) -> float:
        """Stop node `index` (SIGTERM, as `down` does), start it on its data and ports, wait until it is back.

        It waits first until stopping the node costs no queue its quorum or its last synchronised
        mirror; back means answering on every listener, running in the cluster and online in every
        quorum queue. Returns the seconds from the stop to back.
        """
        with self.base._lock():
            state = self._load_state()
            if state is None:
                raise StackError("no cluster runs here")
            nodes = self._nodes([RabbitPorts(**entry["ports"]) for entry in state["nodes"]])
            node = nodes[index]
            self._wait_safe_to_stop(node, progress)
            self._send_clients_away(node, progress)
            stopped_at = time.monotonic()
            processes.stop(int(state["nodes"][index]["pid"]), str(node.home))
            stop_s = time.monotonic() - stopped_at
            forced = " (not within the grace: killed)" if stop_s >= processes.STOP_GRACE_S else ""
            progress(f"node {index} stopped in {stop_s:.1f} s{forced}; starting it again")
            process = self._start(node)
            state["nodes"][index]["pid"] = process.pid
            self.state_path.write_text(json.dumps(state, indent=2))
            self.base._wait_ready({f"node {index}": (node, process)}, progress)
            self._wait_members(nodes, progress)
            self._wait_quorum_online(node, [n.node_name for n in nodes], progress)
            return time.monotonic() - stopped_at

    def server_pids(self) -> list[int]:
        """Every running process of the cluster's servers: each node with its helpers, their epmd, influxd and
        the broker auth service."""
        state = self._load_state()
        if state is None:
            return []
        nodes = self._nodes([RabbitPorts(**entry["ports"]) for entry in state["nodes"]])
        authz = self._broker_auth(nodes[0].ports).home
        return processes.all_ours(*(node.home for node in nodes), self.root / INFLUXDB_DIR, authz)

    def node_ports(self) -> list[RabbitPorts]:
        """Every node's ports, by index (empty: no cluster here)."""
        state = self._load_state()
        return [RabbitPorts(**entry["ports"]) for entry in state["nodes"]] if state is not None else []

    def broker_auth(self) -> BrokerAuthService | None:
        """The cluster's broker auth service (None: no cluster here, or one without it)."""
        state = self._load_state()
        if state is None or "authz_pid" not in state:
            return None
        return self._broker_auth(RabbitPorts(**state["nodes"][0]["ports"]))

    def node(self, index: int) -> RabbitNode:
        state = self._load_state()
        if state is None:
            raise StackError("no cluster runs here")
        return self._nodes([RabbitPorts(**entry["ports"]) for entry in state["nodes"]])[index]

    # --- internals -----------------------------------------------------------------------------

    def _nodes(self, ports: list[RabbitPorts]) -> list[RabbitNode]:
        return [
            RabbitNode(node_settings(self.settings, p), self.root / CLUSTER_DIR / f"rabbit-{i}", p, self.base.tls)
            for i, p in enumerate(ports)
        ]

    def _broker_auth(self, ports: RabbitPorts) -> BrokerAuthService:
        """The cluster's one auth service, under the cluster's folder, on the port every node's config names."""
        return BrokerAuthService(
            self.root / CLUSTER_DIR / HOMES[BROKER_AUTH], ports.authz, operator_accounts(self.settings)
        )

    def _choose_ports(self) -> list[RabbitPorts]:
        if self._given_ports is not None:
            if len(self._given_ports) != self.count:
                raise StackError(f"{self.count} nodes need {self.count} sets of ports")
            return list(self._given_ports)
        first = self.base._choose_ports()
        epmd = first.epmd
        return [offset_ports(first, i, processes.free_port(), epmd) for i in range(self.count)]

    def _prepare(self, nodes: list[RabbitNode]) -> None:
        cookie_file = private_folder(self.root / CLUSTER_DIR) / "cookie"
        if not cookie_file.exists():
            cookie_file.write_text(os.urandom(COOKIE_LENGTH).hex()[:COOKIE_LENGTH].upper())
            cookie_file.chmod(0o400)
        config = cluster_config([node.node_name for node in nodes])
        for node in nodes:
            cookie = node.home / "home" / ".erlang.cookie"
            cookie.parent.mkdir(parents=True, exist_ok=True)
            if not cookie.exists():
                shutil.copyfile(cookie_file, cookie)
                cookie.chmod(0o400)
            node.prepare()
            (node.home / "conf.d" / "20-cluster.conf").write_text(config)

    def _start(self, node: RabbitNode) -> subprocess.Popen[bytes]:
        return processes.start_detached(node.argv(), node.environment(), node.log_path, self.root)

    def _wait_members(self, nodes: list[RabbitNode], progress: Callable[[str], None]) -> None:
        """Until node 0's HTTP API lists every node as running."""
        wanted = {node.node_name for node in nodes}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                running = {n["name"] for n in self._api(nodes[0].ports.management, "/api/nodes") if n.get("running")}
            except OSError:
                running = set()
            if wanted <= running:
                progress(f"all {len(wanted)} nodes in the cluster")
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"the cluster has {sorted(running)} running, not all of {sorted(wanted)}; see the logs under "
                    f"{self.root / CLUSTER_DIR}"
                )
            time.sleep(READY_POLL_S)

    def _wait_safe_to_stop(self, node: RabbitNode, progress: Callable[[str], None]) -> None:
        """Until RabbitMQ's own checks say `node` may stop: no queue would lose its quorum or last synced mirror."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        for check in SAFE_TO_STOP_CHECKS:
            began, tries = time.monotonic(), 1
            while (result := self._ctl(node, RABBITMQ_QUEUES, check)).returncode != 0:
                if time.monotonic() > deadline:
                    raise StackError(f"{node.node_name} is still needed: {(result.stdout or result.stderr).strip()}")
                time.sleep(SYNC_POLL_S)
                tries += 1
            progress(f"{node.node_name} passes {check} ({tries} tries, {time.monotonic() - began:.1f} s)")

    def _send_clients_away(self, node: RabbitNode, progress: Callable[[str], None]) -> None:
        """Refuse new clients on `node` and close the ones it has, so they reconnect to the others first.

        A node stopped with its clients still connected closes them itself while its vhost
        stops, and under load that step outlasted the stop's grace (the node was then killed).
        """
        for args in (("suspend_listeners",), ("close_all_connections", "--global", RESTART_REASON)):
            result = self._ctl(node, RABBITMQCTL, *args)
            if result.returncode != 0:
                progress(f"{node.node_name}: {args[0]} failed ({(result.stderr or result.stdout).strip()})")
        # Closing takes a moment per connection; a stop that overlaps it is the slow case again.
        began = time.monotonic()
        left = self._connections_on(node)
        while left and time.monotonic() - began < CLOSE_WAIT_S:
            time.sleep(SYNC_POLL_S)
            left = self._connections_on(node)
        progress(
            f"{node.node_name}: listeners suspended, client connections closed "
            f"({left} left after {time.monotonic() - began:.1f} s)"
        )

    def _connections_on(self, node: RabbitNode) -> int:
        """Client connections `node` still holds, as `rabbitmqctl list_connections` says (0 if it cannot say)."""
        result = self._ctl(node, RABBITMQCTL, "list_connections", "node")
        if result.returncode != 0:
            return 0
        try:
            listed = json.loads(result.stdout or "[]")
        except ValueError:
            return 0
        return sum(1 for entry in listed if isinstance(entry, dict) and entry.get("node") == node.node_name)

    def _wait_quorum_online(self, node: RabbitNode, names: list[str], progress: Callable[[str], None]) -> None:
        """Until every quorum queue has all its members online again, as `node` sees them."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            result = self._ctl(node, RABBITMQCTL, "list_queues", "-p", VHOST, "name", "type", "members", "online")
            lagging = lagging_quorum_queues(json.loads(result.stdout or "[]"), names) if result.returncode == 0 else []
            if result.returncode == 0 and not lagging:
                progress(f"{node.node_name} back: every quorum queue online on all {len(names)} nodes")
                return
            if time.monotonic() > deadline:
                raise StackError(f"quorum queues not online on every node: {lagging or result.stderr.strip()}")
            time.sleep(SYNC_POLL_S)

    def _grow(self, nodes: list[RabbitNode], progress: Callable[[str], None]) -> None:
        """Quorum queues made while node 0 was alone get a replica on every other node; leaders are spread."""
        commands = [["grow", node.node_name, "all"] for node in nodes[1:]] + [["rebalance", "quorum"]]
        for command in commands:
            result = self._ctl(nodes[0], RABBITMQ_QUEUES, *command)
            if result.returncode != 0:
                raise StackError(f"rabbitmq-queues {' '.join(command)} failed: {result.stderr or result.stdout}")
        progress("quorum queues on every node, leaders spread")

    def _mirror_device_sessions(self, node: RabbitNode) -> None:
        """Mirror the MQTT devices' command queues on every node, so a device can resume on another node.

        RabbitMQ 3.10 gives a clean MQTT session a durable, auto-delete classic queue on the node the
        device connected to. When that node dies, the queue is neither deleted nor reachable, and the
        device's SUBSCRIBE on any other node fails ("home node ... is down") until the node returns.
        A mirrored queue survives its node: a mirror takes over. The policy replaces the definitions'
        `device-sessions` policy for these queues (one policy applies to a queue), so it repeats its keys.
        """
        [sessions] = [p for p in render_definitions(self.settings)["policies"] if p["name"] == SESSIONS_POLICY]
        policy = {
            "pattern": sessions["pattern"],
            "apply-to": "queues",
            "priority": sessions["priority"] + 1,
            "definition": {**sessions["definition"], "ha-mode": "all", "ha-sync-mode": "automatic"},
        }
        self._api(node.ports.management, f"/api/policies/{VHOST}/{SESSIONS_POLICY}-mirrored", policy)

    def _api(self, port: int, path: str, put: Any = None) -> Any:
        token = b64encode(f"{self.settings.admin_user}:{self.settings.admin_password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        body = None if put is None else json.dumps(put).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="GET" if put is None else "PUT"
        )
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
            answer = response.read()
        return json.loads(answer) if answer else None

    def _stop_unlocked(self) -> list[str]:
        state = self._load_state()
        if state is None:
            return []
        nodes = self._nodes([RabbitPorts(**entry["ports"]) for entry in state["nodes"]])
        stopped = [
            f"RabbitMQ node {i}"
            for i, (node, entry) in enumerate(zip(nodes, state["nodes"], strict=True))
            if processes.stop(int(entry["pid"]), str(node.home))
        ]
        nodes[0].stop_epmd()
        if processes.stop(int(state.get("authz_pid", 0)), str(self._broker_auth(nodes[0].ports).home)):
            stopped.append(BROKER_AUTH)
        _rabbit, influx = self.base._nodes(nodes[0].ports, state["influx_http_port"], state["influx_rpc_port"])
        if processes.stop(state["influx_pid"], str(influx.home)):
            stopped.append("InfluxDB")
        self.state_path.unlink(missing_ok=True)
        return stopped

    def _status_unlocked(self) -> ClusterStatus:
        state = self._load_state()
        if state is None:
            return ClusterStatus(self.root, [])
        all_ports = [RabbitPorts(**entry["ports"]) for entry in state["nodes"]]
        nodes = self._nodes(all_ports)
        services = [
            ServiceStatus(
                f"RabbitMQ node {i} ({node.node_name})",
                int(entry["pid"]),
                processes.is_ours(int(entry["pid"]), str(node.home)),
                {
                    "AMQP": f"amqp://localhost:{node.ports.amqp}/iot",
                    "MQTT": f"mqtt://localhost:{node.ports.mqtt}",
                    "STOMP": f"stomp://localhost:{node.ports.stomp}",
                    "AMQPS / MQTTS / STOMPS": f"{node.ports.amqps} / {node.ports.mqtts} / {node.ports.stomps}",
                    "management": f"http://localhost:{node.ports.management}/",
                },
            )
            for i, (node, entry) in enumerate(zip(nodes, state["nodes"], strict=True))
        ]
        _rabbit, influx = self.base._nodes(all_ports[0], state["influx_http_port"], state["influx_rpc_port"])
        services.append(
            ServiceStatus(
                "InfluxDB",
                state["influx_pid"],
                processes.is_ours(state["influx_pid"], str(influx.home)),
                {"HTTP": f"http://localhost:{influx.http_port}", "database": self.settings.influx_db},
            )
        )
        if "authz_pid" in state:
            authz = self._broker_auth(all_ports[0])
            services.append(
                ServiceStatus(
                    BROKER_AUTH,
                    int(state["authz_pid"]),
                    processes.is_ours(int(state["authz_pid"]), str(authz.home)),
                    {"HTTP": f"{authz.url}/health"},
                )
            )
        return ClusterStatus(
            self.root,
            services,
            queues=self._queues(nodes, services),
            exports=client_settings(self.settings, all_ports),
        )

    def _queues(self, nodes: list[RabbitNode], services: list[ServiceStatus]) -> list[QueueReplicas]:
        """The quorum queues' leaders and members, as the first running node knows them.

        From `rabbitmqctl list_queues`, not the HTTP API: the API's `members` keeps the list a queue
        had when its statistics were first emitted, so it misses the replicas `up` added.
        """
        for node, service in zip(nodes, services, strict=False):
            if not service.running:
                continue
            result = self._ctl(node, RABBITMQCTL, "list_queues", "-p", VHOST, "name", "type", "leader", "members")
            if result.returncode != 0:
                continue
            return [
                QueueReplicas(q["name"], q.get("leader", ""), sorted(q.get("members", [])))
                for q in json.loads(result.stdout or "[]")
                if q.get("type") == "quorum"
            ]
        return []

    @staticmethod
    def _ctl(node: RabbitNode, tool: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """A RabbitMQ command line tool run against `node` (its cookie, epmd and name), JSON out where it can."""
        formatter = ["--formatter", "json", "-q"] if tool == RABBITMQCTL else []
        return subprocess.run(
            [str(tool), "-n", node.node_name, *args, *formatter],
            env=node.environment(),
            capture_output=True,
            text=True,
            check=False,
            timeout=CTL_TIMEOUT_S,
        )

    def _save_state(
        self, nodes: list[RabbitNode], pids: list[int], influx_http: int, influx_rpc: int, extra_pids: dict[str, int]
    ) -> None:
        state = {
            "nodes": [
                {"name": node.node_name, "pid": pid, "ports": asdict(node.ports)}
                for node, pid in zip(nodes, pids, strict=True)
            ],
            "influx_http_port": influx_http,
            "influx_rpc_port": influx_rpc,
            **extra_pids,
        }
        self.state_path.write_text(json.dumps(state, indent=2))

    def _load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


#: Another program may take one of the free ports between their choice and a node's bind.
FREE_PORT_ATTEMPTS = 3


def started_on_free_ports(
    new_root: Callable[[], Path], nodes: int = 3, progress: Callable[[str], None] = lambda _msg: None
) -> tuple[Settings, Cluster, float]:
    """A running cluster on free ports in a new folder (tests, benchmarks), settings that know every node,
    and the seconds its start took.

    The caller stops it (`down`). A port taken before a node could bind it means another try, in a new folder.
    """
    for attempt in range(1, FREE_PORT_ATTEMPTS + 1):
        settings = settings_on_free_ports(new_root())
        cluster = Cluster(settings, nodes, ports=cluster_on_free_ports(settings, nodes))
        try:
            status = cluster.up(progress)
        except StackError:
            cluster.down()
            if attempt == FREE_PORT_ATTEMPTS:
                raise
            continue
        exports = status.exports
        clients = settings.model_copy(
            update={
                "amqp_url": exports["IOT_AMQP_URL"],
                "mqtt_addresses": exports["IOT_MQTT_ADDRESSES"],
                "stomp_addresses": exports["IOT_STOMP_ADDRESSES"],
                "management_addresses": exports["IOT_MANAGEMENT_ADDRESSES"],
            }
        )
        return clients, cluster, status.ready_s
    raise AssertionError("unreachable")


def cluster_on_free_ports(settings: Settings, nodes: int = 3) -> list[RabbitPorts]:
    """Every node's ports, free right now and all different; node 0's from `settings` (see `settings_on_free_ports`)."""
    first = Stack(settings)._choose_ports()
    taken = set(asdict(first).values())
    ports = [first]
    for _ in range(1, nodes):
        listeners: dict[str, int] = {}
        for name, value in asdict(first).items():
            if name in ("epmd", "authz") or not value:
                continue
            port = processes.free_port()
            while port in taken:
                port = processes.free_port()
            taken.add(port)
            listeners[name] = port
        ports.append(replace(first, **listeners))
    return ports
