"""Partitioned telemetry: `iot.telemetry` spreads readings over `hub.telemetry.<p>` by device, and
each reading is stored once and judged by the rules once, however the partitions are shared out."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import pika

from hub.clients.management import read_hub_consumers
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, encode, now_ms
from hub.runtime import topology
from hub.stack.processes import free_port
from tests.integration.test_hub_e2e import RULES, count_stored, reading
from tests.support import amqp_connection, hub_cli, hub_process, influx_query, wait_until

#: Enough devices that the hash puts some in every one of the 4 default partitions.
DEVICES = 40
PER_DEVICE = 25


def publish(
    settings: Settings,
    devices: Iterable[str],
    per_device: int,
    base_ts: int,
    kind: str = "environment",
    **values: float,
) -> int:
    """`per_device` readings of each device into `iot` over AMQP, confirmed; how many."""
    connection = amqp_connection(settings)
    channel = connection.channel()
    channel.confirm_delivery()
    published = 0
    try:
        for seq in range(per_device):
            for device in devices:
                r = reading(device, seq, kind, base_ts, **values)
                channel.basic_publish(EXCHANGE, r.routing_key, encode(r), pika.BasicProperties(delivery_mode=2))
                published += 1
    finally:
        connection.close()
    return published


def partition_depths(settings: Settings, count: int) -> list[int]:
    connection = amqp_connection(settings)
    try:
        channel = connection.channel()
        return [
            int(channel.queue_declare(q.name, passive=True).method.message_count) for q in topology.partitions(count)
        ]
    finally:
        connection.close()


def stored_total(metrics_port: int) -> float:
    """The hub's `hub_readings_stored_total` over every protocol: each reading it stored, counted once."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("hub_readings_stored_total{"))


def has_stored(settings: Settings, device: str, count: int) -> bool:
    return count_stored(settings, "environment", device) == count


def alerts_of(settings: Settings, device: str) -> int:
    series = influx_query(settings, f"SELECT value FROM alerts WHERE device = '{device}'")
    return len(series[0]["values"]) if series else 0


def roles(settings: Settings, pid: int) -> dict[str, str]:
    """Queue -> activity status of the consumers of hub process `pid`, as the management API lists them."""
    consumers = read_hub_consumers(settings) or []
    return {queue: status for queue, connection, status in consumers if connection.endswith(f"-{pid}")}


def test_readings_of_many_devices_spread_over_every_partition_are_stored_once_and_rules_fire_per_device(
    stack: Settings, tmp_path: Path
) -> None:
    devices = [f"pt-env-{i}" for i in range(DEVICES)]
    hot = [f"pt-hot-{i}" for i in range(DEVICES)]
    before = partition_depths(stack, stack.partitions)
    base_ts = now_ms() - 50_000_000
    total = publish(stack, devices, PER_DEVICE, base_ts)
    # Two hot readings per thermostat: its rule's cooldown (60 s) lets one alert through, if one
    # process holds the device's rule state.
    total += publish(stack, hot, 2, base_ts, "thermostat", temperature=29.5, setpoint=22.0)
    after = partition_depths(stack, stack.partitions)
    assert sum(after) - sum(before) == total, "each reading routed to one partition, once"
    assert all(a > b for a, b in zip(after, before, strict=True)), f"every partition gets devices: {before} -> {after}"

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    with hub_process(stack, tmp_path, "--only", "telemetry", IOT_RULES_FILE=str(rules), IOT_METRICS_PORT=str(port)):
        for device in devices:
            wait_until(partial(has_stored, stack, device, PER_DEVICE), 60)
        for device in hot:
            wait_until(partial(alerts_of, stack, device), 30)
        wait_until(lambda: stored_total(port) >= total, 15)
        # What earlier tests left in the partitions (`before`) is handled too: stored, or dead-lettered.
        assert total <= stored_total(port) <= total + sum(before), "stored once each: no reading delivered twice"
    assert all(alerts_of(stack, device) == 1 for device in hot), "one alert per device: its cooldown held"


def test_two_hubs_splitting_the_partitions_both_store_and_together_store_each_reading_once(
    stack: Settings, tmp_path: Path
) -> None:
    first, second = free_port(), free_port()
    with (
        hub_process(stack, tmp_path, "--only", "telemetry", "--partitions", "0-1", IOT_METRICS_PORT=str(first)) as a,
        hub_process(stack, tmp_path, "--only", "telemetry", "--partitions", "2,3", IOT_METRICS_PORT=str(second)) as b,
    ):
        wait_until(
            lambda: roles(stack, a.pid) == {"hub.telemetry.0": "single_active", "hub.telemetry.1": "single_active"}, 15
        )
        wait_until(
            lambda: roles(stack, b.pid) == {"hub.telemetry.2": "single_active", "hub.telemetry.3": "single_active"}, 15
        )
        wait_until(lambda: sum(partition_depths(stack, stack.partitions)) == 0, 30)  # what earlier tests left
        baseline = stored_total(first) + stored_total(second)
        devices = [f"pt-split-{i}" for i in range(DEVICES)]
        total = publish(stack, devices, PER_DEVICE, now_ms() - 51_000_000)
        for device in devices:
            wait_until(partial(has_stored, stack, device, PER_DEVICE), 60)
        wait_until(lambda: stored_total(first) + stored_total(second) - baseline >= total, 15)
        assert stored_total(first) + stored_total(second) - baseline == total
        assert stored_total(first) > 0 and stored_total(second) > 0, "both hubs store their share"


def test_the_standby_of_each_partition_takes_over_when_its_active_hub_is_sigkilled(
    stack: Settings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    devices = [f"pt-kill-{i}" for i in range(DEVICES)]
    hot = [f"pt-kill-hot-{i}" for i in range(DEVICES)]
    base_ts = now_ms() - 52_000_000
    env = {"IOT_RULES_FILE": str(rules)}
    with hub_process(stack, first, "--only", "telemetry", "--partitions", "0-1", **env) as active:
        wait_until(lambda: set(roles(stack, active.pid).values()) == {"single_active"}, 15)
        # The second hub takes every partition: active on 2-3 (nobody else has them), standby on 0-1.
        with hub_process(stack, second, "--only", "telemetry", **env) as standby:
            expected = {
                "hub.telemetry.0": "waiting",
                "hub.telemetry.1": "waiting",
                "hub.telemetry.2": "single_active",
                "hub.telemetry.3": "single_active",
            }
            wait_until(lambda: roles(stack, standby.pid) == expected, 15)
            publish(stack, devices, PER_DEVICE, base_ts)
            wait_until(lambda: count_stored(stack, "environment", devices[0]) > 0, 30)
            active.send_signal(signal.SIGKILL)  # mid-flow, or nearly: whatever it held comes back
            active.wait(10)
            publish(stack, devices, PER_DEVICE, base_ts + 1000)  # seq again, later ts: new points
            publish(stack, hot, 1, base_ts, "thermostat", temperature=29.5, setpoint=22.0)
            wait_until(lambda: set(roles(stack, standby.pid).values()) == {"single_active"}, 15)
            for device in devices:
                wait_until(partial(has_stored, stack, device, 2 * PER_DEVICE), 60)
            for device in hot:
                wait_until(partial(alerts_of, stack, device), 30)
            assert standby.poll() is None
    log = next(second.glob("hub-*.log")).read_text()
    assert "service=telemetry event=active" in log
    assert all(alerts_of(stack, device) == 1 for device in hot)


def queues_exist(settings: Settings, *names: str) -> list[bool]:
    connection = amqp_connection(settings)
    try:
        return [topology.queue_exists(connection, name) for name in names]
    finally:
        connection.close()


def delete_queues(settings: Settings, *names: str) -> None:
    connection = amqp_connection(settings)
    try:
        for name in names:
            connection.channel().queue_delete(name)
    finally:
        connection.close()


def test_hub_store_and_hub_rules_of_a_hub_before_partitions_stop_the_hub_until_stack_migrate_moves_every_reading(
    stack: Settings, tmp_path: Path
) -> None:
    store, rules = topology.LEGACY_QUEUES
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": 20, "x-dead-letter-exchange": "iot.dlx"}
    connection = amqp_connection(stack)
    channel = connection.channel()
    # The broker as a hub before partitions left it: telemetry goes to hub.store and hub.rules only.
    channel.exchange_unbind(topology.TELEMETRY_EXCHANGE, EXCHANGE, routing_key=topology.TELEMETRY_PATTERN)
    channel.queue_declare(store, durable=True, arguments=arguments)
    channel.queue_declare(rules, durable=True, arguments=arguments | {"x-single-active-consumer": True})
    for name in (store, rules):
        channel.queue_bind(name, EXCHANGE, routing_key=topology.TELEMETRY_PATTERN)
    connection.close()
    devices = [f"pt-legacy-{i}" for i in range(DEVICES)]
    try:
        total = publish(stack, devices, 10, now_ms() - 53_000_000)

        refused = hub_cli(stack, "run", "--only", "telemetry", timeout_s=30)
        assert refused.returncode == 3, refused.stderr
        assert "queues hub.store, hub.rules of a hub before telemetry partitions" in refused.stderr
        assert f"run `{topology.MIGRATE_COMMAND}`" in refused.stderr

        migrated = hub_cli(stack, "stack", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        out = " ".join(migrated.stdout.split())
        assert "hub.store: retired (readings republished to iot" in out
        assert f"hub.rules: retired ({total} messages dropped: copies of the readings hub.store held" in out
        assert queues_exist(stack, store, rules) == [False, False]
        with hub_process(stack, tmp_path, "--only", "telemetry"):
            for device in devices:
                wait_until(partial(has_stored, stack, device, 10), 60)
    finally:
        delete_queues(stack, store, rules)
        connection = amqp_connection(stack)
        connection.channel().exchange_bind(
            topology.TELEMETRY_EXCHANGE, EXCHANGE, routing_key=topology.TELEMETRY_PATTERN
        )
        connection.close()


def test_partitions_above_iot_partitions_stop_the_hub_until_stack_migrate_rehashes_their_readings(
    stack: Settings, tmp_path: Path
) -> None:
    surplus = [topology.partition(p) for p in (stack.partitions, stack.partitions + 1)]
    connection = amqp_connection(stack)
    channel = connection.channel()
    for queue in surplus:  # as a hub with IOT_PARTITIONS two higher left them
        topology.declare(channel, queue)
    connection.close()
    devices = [f"pt-surplus-{i}" for i in range(DEVICES)]
    try:
        publish(stack, devices, 10, now_ms() - 54_000_000)
        held = partition_depths(stack, stack.partitions + 2)[stack.partitions :]
        assert sum(held) > 0, "the hash put some devices in the surplus partitions"

        refused = hub_cli(stack, "run", "--only", "telemetry", timeout_s=30)
        assert refused.returncode == 3, refused.stderr
        assert f"{surplus[0].name}, {surplus[1].name} exist but IOT_PARTITIONS is {stack.partitions}" in refused.stderr

        migrated = hub_cli(stack, "stack", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        for queue, count in zip(surplus, held, strict=True):
            assert f"{queue.name}: retired (above IOT_PARTITIONS={stack.partitions}" in migrated.stdout
            rows = [[cell.strip() for cell in line.split("│")[1:4]] for line in migrated.stdout.splitlines()]
            assert [queue.name, "retired", str(count)] in rows, migrated.stdout
        assert queues_exist(stack, *(q.name for q in surplus)) == [False, False]
        with hub_process(stack, tmp_path, "--only", "telemetry"):
            for device in devices:
                wait_until(partial(has_stored, stack, device, 10), 60)
    finally:
        delete_queues(stack, *(q.name for q in surplus))
