"""Drills on a real three-node RabbitMQ cluster (`stack up --nodes 3`) under a steady load, losing nothing.

The cluster is this module's own (its start costs about a minute on two busy cores), on free
ports in a temporary folder, and always stopped at the end. One load (two `hub run`, twelve
devices of both protocols, see `tests/integration/drills.py`) runs through the drills in turn:
a rolling restart, the active hub SIGKILLed, a node SIGKILLed. Each drill sends commands while
it runs and ends with the same checks: every reading produced so far stored once per (device,
seq), every command acked or reported failed and recorded, the hubs alive, the devices online.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.core.config import CLUSTER_DIR, CREDENTIALS_FILE_NAME, AmqpParts, Settings, over_tls
from hub.core.credentials import read_credentials
from hub.core.secrets import read_secrets
from hub.stack.cluster import Cluster, ClusterStatus, started_on_free_ports
from hub.stack.processes import free_port, is_ours
from hub.stack.sockets import exposed, listening_sockets
from tests.integration.drills import (
    DEVICES,
    INTERVAL_S,
    DrillCommands,
    Load,
    alive,
    check_window,
    steady_load,
    stored_seqs,
    wait_for_active,
)
from tests.support import REPO, amqp_connection, fleet_credentials, hub_process, settings_environment, wait_until

NODES = 3
#: Seconds of load after a drill's fault before its window closes.
LOAD_AFTER_S = 6.0
#: Seconds the drill's commands run before its fault, so some are in flight when it strikes.
COMMAND_LEAD_S = 1.0
#: The TLS check's devices (both protocols), its site, and how long they publish.
TLS_DEVICES, TLS_SITE, TLS_LOAD_S = 4, "cluster-tls", 3.0
#: A durable queue and the persistent message in it that must outlive a node loss and a restart.
SURVIVOR_QUEUE, SURVIVOR_BODY = "hub.test-survivor", b"kept through a node loss and a restart"
#: The issue's bound: /health/ready is 200 again this soon after the first node is SIGKILLed.
HEALTH_BACK_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Settings]]:
    """A running 3-node cluster and influxd; settings whose clients know every node."""
    settings, the_cluster, _ready_s = started_on_free_ports(lambda: tmp_path_factory.mktemp("cluster"), NODES)
    try:
        fleet_credentials(settings, DEVICES)
        yield the_cluster, settings
    finally:
        the_cluster.down()


@pytest.fixture(scope="module")
def load(cluster: tuple[Cluster, Settings], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    """The steady load every drill runs under, from the first drill that asks for it to the module's end."""
    _the_cluster, settings = cluster
    with steady_load(settings, tmp_path_factory.mktemp("hubs")) as the_load:
        yield the_load


def leave_a_survivor(settings: Settings) -> None:
    """A quorum queue (a replica on every node) holding one persistent message the broker confirmed."""
    connection = amqp_connection(settings)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(SURVIVOR_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_publish("", SURVIVOR_QUEUE, SURVIVOR_BODY, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def sigkill_node(the_cluster: Cluster, index: int) -> None:
    pid, home = the_cluster.node_pids()[index], str(the_cluster.node(index).home)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not is_ours(pid, home), 15)


def ready_report(port: int) -> tuple[int, dict[str, Any]]:
    """A hub's /health/ready: its status and its JSON report."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_cluster_has_every_node_and_three_replicas_of_every_quorum_queue(
    cluster: tuple[Cluster, Settings],
) -> None:
    the_cluster, settings = cluster
    status = the_cluster.status()
    assert status.running
    nodes = {service.name.split("(")[1].rstrip(")") for service in status.services if "RabbitMQ" in service.name}
    assert len(nodes) == NODES

    def replicated() -> ClusterStatus | None:
        current = the_cluster.status()
        queues = {q.name: q for q in current.queues}
        partitions = {f"hub.telemetry.{p}" for p in range(settings.partitions)}
        ok = partitions | {"hub.presence", "hub.commands", "iot.dead-letter"} <= set(queues) and all(
            set(q.members) == nodes and q.leader in nodes for q in queues.values()
        )
        return current if ok else None

    wait_until(replicated, 30, 1.0)
    shown = subprocess.run(
        [sys.executable, "-m", "hub", "stack", "status"],
        cwd=REPO,
        env=settings_environment(settings),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert all(node in text for node in nodes) and "hub.telemetry.0" in text
    assert f"export IOT_MQTT_ADDRESSES='{settings.mqtt_addresses}'" in text
    # The URLs to export name the hub, not its password: clients read that in the stack's secrets file.
    secrets = read_secrets(settings.secrets_path)
    assert secrets is not None and secrets.hub_password not in shown.stdout
    assert f"export IOT_AMQP_URL='amqp://hub@127.0.0.1:{settings.amqp.port}/iot," in text
    assert str(settings.secrets_path) in text


def test_the_clusters_device_credentials_are_its_own_not_the_single_nodes(cluster: tuple[Cluster, Settings]) -> None:
    """The cluster's broker knows the devices provisioned on it: their file lives with its data."""
    the_cluster, settings = cluster
    own = the_cluster.root / CLUSTER_DIR / CREDENTIALS_FILE_NAME
    assert settings.credentials_path == own
    assert set(read_credentials(own)) >= {spec.device_id for spec in plan_fleet(DEVICES)}
    assert not (the_cluster.root / CREDENTIALS_FILE_NAME).exists(), "the single node's file is left alone"


def test_the_cluster_is_reachable_beyond_loopback_only_on_its_tls_listeners(cluster: tuple[Cluster, Settings]) -> None:
    """The nodes meet over loopback: their distribution ports and shared epmd listen there, as influxd does."""
    the_cluster, _settings = cluster
    sockets = listening_sockets(the_cluster.server_pids())
    assert len({s.pid for s in sockets if s.process == "beam.smp"}) == NODES, [str(s) for s in sockets]
    assert {"epmd", "influxd"} <= {s.process for s in sockets}
    ports = [the_cluster.node(i).ports for i in range(NODES)]
    tls_ports = {port for p in ports for port in (p.amqps, p.mqtts, p.stomps)}
    assert {s.port for s in exposed(sockets)} == tls_ports, [str(s) for s in exposed(sockets)]


def test_tls_clients_use_the_cluster_as_plain_ones_do(cluster: tuple[Cluster, Settings], tmp_path: Path) -> None:
    """TLS on the cluster: a hub on AMQPS and devices on MQTTS and STOMP over TLS, each with its own
    credential, spread over the three nodes' TLS listeners; every reading stored once."""
    the_cluster, settings = cluster
    ports = [the_cluster.node(i).ports for i in range(NODES)]
    tls = over_tls(settings, [p.tls for p in ports]).model_copy(update={"tls_ca": the_cluster.base.tls.ca_cert})
    assert [(url.tls, url.port) for url in map(AmqpParts.parse, tls.amqp_urls)] == [(True, p.amqps) for p in ports]
    with (
        hub_process(tls, tmp_path),
        Fleet(tls, count=TLS_DEVICES, protocol="mixed", interval_s=INTERVAL_S, site=TLS_SITE, seed=7) as fleet,
    ):
        assert fleet.wait_online(timeout_s=60), "every device online over TLS"
        time.sleep(TLS_LOAD_S)
        fleet.close()
        made = {d.device_id: (d.kind, d.seq) for d in fleet.devices}
        assert {d.protocol for d in fleet.devices} == {"mqtt", "stomp"}

        def stored_once() -> bool:
            return all(
                sorted(stored_seqs(settings, device, kind, TLS_SITE)) == list(range(1, seq + 1))
                for device, (kind, seq) in made.items()
            )

        wait_until(stored_once, 60, 0.5)
    assert min(seq for _kind, seq in made.values()) > 0


def test_a_rolling_restart_under_load_loses_no_reading_and_no_command(
    cluster: tuple[Cluster, Settings], load: Load
) -> None:
    """Every node in turn stopped (SIGTERM) and started on its data and ports, the next one only
    once it is back in the cluster and in every quorum queue; devices fail over with their buffers."""
    the_cluster, _settings = cluster
    pids = the_cluster.node_pids()
    before = load.fleet.stats().by_protocol
    began = time.monotonic()

    said: list[str] = []

    def progress(what: str) -> None:
        said.append(what)
        print(f"  +{time.monotonic() - began:5.1f} s {what}")

    with DrillCommands(load.settings, load.fleet) as commands:
        back_s = [the_cluster.restart_node(i, progress) for i in range(NODES)]
    made = check_window(load)
    outcomes = commands.check()
    after = load.fleet.stats().by_protocol
    moved = {protocol: after[protocol].reconnects - before[protocol].reconnects for protocol in after}
    devices = {protocol: stats.devices for protocol, stats in after.items()}
    assert set(moved) == {"mqtt", "stomp"} and all(moved[p] >= devices[p] for p in moved), (moved, devices)
    restarted = the_cluster.node_pids()
    assert all(new != old for new, old in zip(restarted, pids, strict=True)), "every node was restarted"
    assert the_cluster.status().running
    # A node that does not stop within the grace is killed: a rolling restart that turned into
    # kills still loses nothing (the checks above), so it is reported, not failed.
    killed = [line for line in said if "killed" in line]
    print(
        f"rolling restart: nodes back in {', '.join(f'{s:.1f}' for s in back_s)} s; "
        f"{sum(made.values())} readings; reconnects {moved}; commands {dict(outcomes)}, "
        f"{commands.failed_rounds} rounds refused; stops past the grace: {killed or 'none'}"
    )


def test_the_standby_hub_takes_over_under_load_when_the_active_one_is_sigkilled(load: Load) -> None:
    """The hub the broker delivers hub.commands to is SIGKILLed and not restarted: the other one
    carries every service on, storing each reading once and settling every command."""
    active = wait_for_active(load)
    [standby] = [hub for hub in load.living_hubs() if hub is not active]
    with DrillCommands(load.settings, load.fleet) as commands:
        time.sleep(COMMAND_LEAD_S)
        active.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        active.wait(10)
        load.killed.append(active)
        assert wait_for_active(load) is standby
        takeover_s = time.monotonic() - killed
        time.sleep(LOAD_AFTER_S)
    made = check_window(load)
    outcomes = commands.check()
    assert not alive(active) and alive(standby)
    print(
        f"hub worker loss: the standby active on hub.commands {takeover_s:.1f} s after the SIGKILL; "
        f"{sum(made.values())} readings; commands {dict(outcomes)}"
    )


def test_a_node_killed_under_load_loses_no_reading_and_nothing_needs_a_restart(
    cluster: tuple[Cluster, Settings], load: Load
) -> None:
    the_cluster, _settings = cluster
    with DrillCommands(load.settings, load.fleet) as commands:
        time.sleep(COMMAND_LEAD_S)
        # The node that leads partition 0: its device and hub connections, and that queue's leader, go at once.
        leaders = {q.name: q.leader for q in the_cluster.status().queues}
        names = [the_cluster.node(i).node_name for i in range(NODES)]
        victim = names.index(leaders["hub.telemetry.0"])
        leave_a_survivor(load.settings)  # what the cluster must still hold once started again
        sigkill_node(the_cluster, victim)
        time.sleep(LOAD_AFTER_S)
    made = check_window(load)
    outcomes = commands.check()
    fleet = load.fleet
    load.close()  # the hubs stopped (SIGTERM), the fleet closed: it waited for every buffered reading's confirm
    for device in fleet.devices:
        assert device.outbox.seqs() == [], f"{device.device_id}: readings never confirmed"
        assert device.outbox.dropped == 0
    assert min(made.values()) > LOAD_AFTER_S / INTERVAL_S, "the devices kept producing through the drills"
    produced = sum(d.seq for d in fleet.devices)
    print(f"node loss: {sum(made.values())} readings checked (of {produced} made in all); commands {dict(outcomes)}")
    # `down` stops what is left of what `up` started, and nothing else.
    survivors = [f"RabbitMQ node {i}" for i in range(NODES) if i != victim]
    assert the_cluster.down() == [*survivors, "broker auth", "InfluxDB"]
    assert not the_cluster.status().services


def test_a_cluster_stopped_after_a_node_loss_starts_again_with_its_data(cluster: tuple[Cluster, Settings]) -> None:
    """`stack up --nodes 3` on the data the node-loss drill left: a node SIGKILLed under load, then `stack down`.

    Every node waits for the peers it last saw, so the nodes start together; the cluster has all
    of them again, the definitions' quorum queues a replica on each, and the message left before
    the loss is still there."""
    the_cluster, settings = cluster
    if the_cluster.status().services:  # run on its own: the drill's ending, without its load
        leave_a_survivor(settings)
        sigkill_node(the_cluster, 1)
        the_cluster.down()
    began = time.monotonic()
    status = the_cluster.up(lambda what: print(f"  +{time.monotonic() - began:5.1f} s {what}"))
    assert status.running
    names = {the_cluster.node(i).node_name for i in range(NODES)}

    def queues_listed() -> dict[str, Any] | None:
        # `up` waits for the definitions' quorum queues only: a CI run found the test's own not yet
        # listed when `up` returned, so it is waited for; its message is what must have survived.
        listed = {q.name: q for q in the_cluster.status().queues}
        return listed if SURVIVOR_QUEUE in listed else None

    queues = wait_until(queues_listed, 60, 1.0)
    assert {"hub.commands", "hub.presence", "hub.telemetry.0", "iot.dead-letter"} <= set(queues)
    assert all(set(q.members) == names for q in queues.values()), [(q.name, q.members) for q in queues.values()]
    connection = amqp_connection(settings)
    try:
        channel = connection.channel()
        method, _properties, body = channel.basic_get(SURVIVOR_QUEUE, auto_ack=True)
        assert method is not None and body == SURVIVOR_BODY
        channel.queue_delete(SURVIVOR_QUEUE)
    finally:
        connection.close()
    print(f"cluster restart after a node loss: ready in {status.ready_s:.1f} s")


def test_health_roles_and_depths_follow_the_cluster_when_its_first_node_is_sigkilled(
    cluster: tuple[Cluster, Settings], tmp_path: Path
) -> None:
    """Two hubs: the active one knows the first node alone and goes with it; the standby, which knows
    every node, is promoted. Within 15 s its /health/ready is 200 again, with every queue's depth
    and its new role, read from the nodes that remain."""
    the_cluster, settings = cluster
    assert the_cluster.status().running
    first_only = settings.model_copy(update={"amqp_url": settings.amqp_urls[0]})
    ports = free_port(), free_port()
    with (
        hub_process(first_only, tmp_path, IOT_METRICS_PORT=str(ports[0])),
        hub_process(settings, tmp_path, IOT_METRICS_PORT=str(ports[1])),
    ):

        def standby_ready() -> bool:
            status, report = ready_report(ports[1])
            return status == 200 and report["queues"].get("hub.commands", {}).get("role") == "standby"

        wait_until(standby_ready, 30, 0.5)
        sigkill_node(the_cluster, 0)
        killed = time.monotonic()

        def promoted_and_ready() -> dict[str, Any] | None:
            status, report = ready_report(ports[1])
            queues = report["queues"]
            depths = all(q["ready"] is not None for q in queues.values())
            return report if status == 200 and depths and queues["hub.commands"].get("role") == "active" else None

        report = wait_until(promoted_and_ready, HEALTH_BACK_WITHIN_S, 0.5)
        back_s = time.monotonic() - killed
    assert set(report["queues"]) >= {"hub.commands", "hub.presence", "hub.telemetry.0"}
    print(f"first node SIGKILLed: the promoted standby ready, with depths and its role, after {back_s:.1f} s")
