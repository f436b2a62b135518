"""A real three-node RabbitMQ cluster (`stack up --nodes 3`) loses a node under load and loses nothing.

The cluster is this module's own (its start costs about a minute on two busy cores), on free
ports in a temporary folder, and always stopped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.fleet import Fleet
from hub.core.config import Settings
from hub.stack.cluster import Cluster, ClusterStatus, started_on_free_ports
from hub.stack.processes import is_ours
from tests.integration.test_standby import takeover_drill
from tests.support import REPO, fleet_credentials, hub_process, influx_query, settings_environment, wait_until

NODES = 3
#: Both protocols, spread over the nodes (device i starts on node i modulo 3).
DEVICES = 12
#: Seconds between readings of one device: 12 devices make 60 readings a second.
INTERVAL_S = 0.2
#: Seconds of load before the kill, and after it before the fleet stops.
LOAD_BEFORE_S = 4.0
LOAD_AFTER_S = 10.0
#: Seconds every device gets to be online again after the kill.
RECONNECT_WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Settings]]:
    """A running 3-node cluster and influxd; settings whose clients know every node."""
    settings, the_cluster, _ready_s = started_on_free_ports(lambda: tmp_path_factory.mktemp("cluster"), NODES)
    try:
        fleet_credentials(settings, DEVICES)
        yield the_cluster, settings
    finally:
        the_cluster.down()


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


def test_the_standby_hub_takes_over_on_the_cluster_when_the_active_one_is_sigkilled(
    cluster: tuple[Cluster, Settings], tmp_path: Path
) -> None:
    """Before the node loss below: the two hubs' connections spread over the three nodes."""
    _the_cluster, settings = cluster
    takeover_drill(settings, tmp_path, "th-cluster-standby")


def test_a_node_killed_under_load_loses_no_reading_and_nothing_needs_a_restart(
    cluster: tuple[Cluster, Settings], tmp_path: Path
) -> None:
    the_cluster, settings = cluster

    def stored(device_id: str, kind: str) -> list[int]:
        series = influx_query(settings, f"SELECT seq FROM \"{kind}\" WHERE device = '{device_id}'")
        return [row[1] for row in series[0]["values"]] if series else []

    with hub_process(settings, tmp_path) as hub:
        with Fleet(settings, count=DEVICES, protocol="mixed", interval_s=INTERVAL_S, seed=15) as fleet:
            time.sleep(LOAD_BEFORE_S)
            # The node that leads partition 0: its device and hub connections, and that queue's leader, go at once.
            leaders = {q.name: q.leader for q in the_cluster.status().queues}
            names = [the_cluster.node(i).node_name for i in range(NODES)]
            victim = names.index(leaders["hub.telemetry.0"])
            pid, home = the_cluster.node_pids()[victim], str(the_cluster.node(victim).home)
            os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not is_ours(pid, home), 15)
            time.sleep(LOAD_AFTER_S)
            if not fleet.wait_online(timeout_s=RECONNECT_WAIT_S):
                away = [f"{d.device_id}: {fleet.describe(d.device_id)}" for d in fleet.devices]
                raise AssertionError("devices not online again:\n" + "\n".join(away))
        # Closing the fleet waited for every buffered reading to be confirmed by the broker.
        for device in fleet.devices:
            assert device.outbox.seqs() == [], f"{device.device_id}: readings never confirmed"
            assert device.outbox.dropped == 0
        made = {device.device_id: device.seq for device in fleet.devices}
        assert min(made.values()) > (LOAD_BEFORE_S + LOAD_AFTER_S) / INTERVAL_S / 2
        wait_until(lambda: all(len(stored(d.device_id, d.kind)) >= made[d.device_id] for d in fleet.devices), 60, 0.5)
        assert hub.poll() is None, "the hub ran through the node loss without a restart"
    for device in fleet.devices:
        seqs = stored(device.device_id, device.kind)
        assert sorted(seqs) == list(range(1, made[device.device_id] + 1)), f"{device.device_id}: each seq once"
    # `down` stops what is left of what `up` started, and nothing else.
    survivors = [f"RabbitMQ node {i}" for i in range(NODES) if i != victim]
    assert the_cluster.down() == [*survivors, "InfluxDB"]
    assert not the_cluster.status().services
