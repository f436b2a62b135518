"""Hot standbys: the telemetry partitions, presence and commands are single-active-consumer
queues, so a second `hub run` waits and takes over when the active one dies, losing and doubling
nothing (tests/integration/test_partitions.py: a standby per partition)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pika

from hub.core.config import Settings
from hub.core.contract import EXCHANGE, encode
from hub.runtime import topology
from tests.integration.test_hub_e2e import RULES, reading
from tests.support import (
    Watcher,
    amqp_connection,
    bind_temporary_queue,
    collect,
    hub_cli,
    hub_process,
    influx_query,
    wait_until,
)

#: Every service that keeps state, so presence's takeover runs too.
ONLY = ("--only", "telemetry", "--only", "presence", "--only", "commands")


def logged(log_dir: Path, line: str) -> bool:
    return any(line in log.read_text() for log in log_dir.glob("hub-*.log"))


def alerts_stored(settings: Settings, device: str) -> int:
    series = influx_query(settings, f"SELECT value FROM alerts WHERE device = '{device}'")
    return len(series[0]["values"]) if series else 0


def command_recorded(settings: Settings, command_id: str) -> bool:
    series = influx_query(settings, f"SELECT id FROM commands WHERE id = '{command_id}' AND status = 'sent'")
    return bool(series)


def both_hubs_listed(settings: Settings, active_pid: int, standby_pid: int) -> bool:
    """`stack status` shows each hub by its instance, one delivered to and one waiting."""
    status = hub_cli(settings, "stack", "status").stdout
    named = f"-{active_pid} " in status and f"-{standby_pid} " in status
    return named and "waiting" in status and "single_active" in status


def test_the_standby_takes_over_telemetry_presence_and_commands_when_the_active_hub_is_sigkilled(
    stack: Settings, tmp_path: Path
) -> None:
    takeover_drill(stack, tmp_path, "th-standby")


def takeover_drill(stack: Settings, tmp_path: Path, device: str) -> float:
    """Two hubs; the active one SIGKILLed; the standby does what comes after, once. Returns the
    seconds from the kill to the alert of a reading published after it stored (a figure, not judged)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    connection = amqp_connection(stack)
    channel = connection.channel()
    channel.confirm_delivery()
    alerts = bind_temporary_queue(channel, "alerts.#")
    watcher = Watcher(stack, "acks.#")

    def publish_hot(device: str) -> None:
        hot = reading(device, 1, kind="thermostat", temperature=29.5, setpoint=22.0)
        channel.basic_publish(EXCHANGE, hot.routing_key, encode(hot), pika.BasicProperties(delivery_mode=2))

    try:
        with hub_process(stack, first, *ONLY, IOT_RULES_FILE=str(rules)) as active:
            wait_until(partial(logged, first, "service=telemetry event=active"), 15)
            with hub_process(stack, second, *ONLY, IOT_RULES_FILE=str(rules)) as standby:
                wait_until(partial(logged, second, "service=telemetry event=standby"), 15)
                wait_until(partial(logged, second, "service=commands event=standby"), 15)
                # The management API lists a consumer before it names its connection (both
                # catch up on its statistics interval): poll until each hub shows by instance.
                wait_until(partial(both_hubs_listed, stack, active.pid, standby.pid), 15)
                publish_hot(f"{device}-1")
                wait_until(partial(alerts_stored, stack, f"{device}-1"), 15)

                active.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                active.wait(10)
                publish_hot(f"{device}-2")  # published while nobody is active: waits in its partition
                command_id = watcher.send(f"{device}-3", "reboot")
                wait_until(partial(logged, second, "service=telemetry event=active"), 15)
                wait_until(partial(logged, second, "service=commands event=active"), 15)
                wait_until(partial(alerts_stored, stack, f"{device}-2"), 15, 0.05)
                takeover_s = time.monotonic() - killed
                wait_until(partial(command_recorded, stack, command_id), 15)
                wait_until(partial(logged, second, "service=presence event=took_over"), 15)
                published = collect(connection, channel, alerts, 3, timeout_s=3)
                assert standby.poll() is None
    finally:
        watcher.close()
        connection.close()
    per_device = Counter(key.rsplit(".", 1)[1] for key, _body, _props in published)
    assert per_device == {f"{device}-1": 1, f"{device}-2": 1}
    assert alerts_stored(stack, f"{device}-1") == alerts_stored(stack, f"{device}-2") == 1
    print(f"takeover: the alert of a reading published after the SIGKILL stored {takeover_s:.1f} s after it")
    return takeover_s


def test_a_queue_an_older_hub_declared_stops_the_hub_with_the_command_to_run_which_keeps_every_message(
    stack: Settings, tmp_path: Path
) -> None:
    old_arguments = {
        k: v for k, v in topology.queue_arguments(topology.PRESENCE).items() if k != "x-single-active-consumer"
    }
    connection = amqp_connection(stack)
    channel = connection.channel()
    channel.queue_delete(topology.PRESENCE.name)
    channel.queue_declare(topology.PRESENCE.name, durable=True, arguments=old_arguments)
    channel.queue_bind(topology.PRESENCE.name, EXCHANGE, routing_key="status.#")
    channel.confirm_delivery()
    bodies = [f'{{"old": {i}}}'.encode() for i in range(5)]
    for body in bodies:
        channel.basic_publish(EXCHANGE, "status.plant-t.thermostat.th-old", body, pika.BasicProperties(delivery_mode=2))
    connection.close()

    refused = hub_cli(stack, "run", "--only", "presence", timeout_s=30)
    assert refused.returncode == 3
    assert "queue hub.presence exists with other arguments" in refused.stderr
    assert f"run `{topology.MIGRATE_COMMAND}`" in refused.stderr

    migrated = hub_cli(stack, "stack", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "hub.presence: replaced" in migrated.stdout and "hub.telemetry.0: up to date" in migrated.stdout
    connection = amqp_connection(stack)
    channel = connection.channel()
    try:
        declared = channel.queue_declare(
            topology.PRESENCE.name, durable=True, arguments=topology.queue_arguments(topology.PRESENCE)
        )  # the broker refuses this unless the arguments are the new ones
        assert declared.method.message_count == len(bodies)
        moved = []
        for method, _properties, body in channel.consume(topology.PRESENCE.name, inactivity_timeout=2):
            if method is None:
                break
            moved.append(body)
        assert moved == bodies
    finally:
        connection.close()
