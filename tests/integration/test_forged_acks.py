"""Only the truth is recorded: a device's ack for a command the hub never sent to it is
dead-lettered (`unknown_command`) and never shows in `hub commands`; a genuine ack is recorded,
even when the hub restarted between the command and its ack. Real devices over MQTT, the real
hub (`python -m hub run --only commands`), the real CLI."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from hub.core.config import Settings
from hub.core.contract import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_REASON_HEADER,
    EXCHANGE,
    Ack,
    Command,
    ack_key,
    command_key,
    encode,
    now_ms,
)
from hub.runtime.deadletter import DEAD_LETTER_DETAIL_HEADER, DEAD_LETTER_QUEUE_HEADER
from hub.runtime.topology import COMMANDS
from tests.support import (
    amqp_connection,
    bind_temporary_queue,
    hub_cli,
    hub_process,
    influx_query,
    mqtt_device,
    wait_until,
)

#: Long enough that no command of these tests times out while they run.
EXPIRES_IN_MS = 120_000

Letter = tuple[str, bytes, pika.BasicProperties]


@pytest.fixture
def channel(stack: Settings) -> Iterator[BlockingChannel]:
    connection = amqp_connection(stack)
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    connection.close()


def logged(log_dir: Path, line: str) -> bool:
    return any(line in log.read_text() for log in log_dir.glob("hub-*.log"))


def dead_letters_from_now(channel: BlockingChannel) -> str:
    """A temporary queue that gets a copy of everything dead-lettered from now on."""
    queue = bind_temporary_queue(channel)
    channel.queue_bind(queue, DEAD_LETTER_EXCHANGE)
    return queue


def letters_until(channel: BlockingChannel, queue: str, last_id: str, timeout_s: float = 20) -> list[Letter]:
    """Every dead letter up to the one of the ack `last_id` (the hub refuses in the order it reads)."""
    letters: list[Letter] = []

    def arrived() -> bool:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            channel.connection.sleep(0.05)
            return False
        letters.append((method.routing_key, body, properties))
        return method.routing_key.startswith("acks.") and f'"id":"{last_id}"'.encode() in body

    wait_until(arrived, timeout_s, interval_s=0)
    return letters


def send_command(channel: BlockingChannel, device: str) -> Command:
    """A command to `device` as `hub send` publishes it (persistent, app_id cli), confirmed by the broker."""
    sent = now_ms()
    command = Command(id=uuid.uuid4().hex, command="ping", ts=sent, expires=sent + EXPIRES_IN_MS)
    properties = pika.BasicProperties(delivery_mode=2, app_id="cli", content_type="application/json")
    channel.basic_publish(EXCHANGE, command_key(device), encode(command), properties)
    return command


def answer(device: mqtt.Client, device_id: str, command_id: str, detail: str = "") -> None:
    """The device publishes an `ok` ack on its own topic, QoS 1, and waits for the broker's PUBACK."""
    ack = Ack(id=command_id, device=device_id, status="ok", detail=detail, ts=now_ms())
    device.publish(ack_key(device_id).replace(".", "/"), encode(ack), qos=1).wait_for_publish(10)


def lifecycle(settings: Settings, command_id: str) -> list[tuple[str, str]]:
    """(device, status) of every `commands` point of this command id, sorted."""
    series = influx_query(settings, f"SELECT id, device, status FROM commands WHERE id = '{command_id}'")
    return sorted((row[2], row[3]) for row in series[0]["values"]) if series else []


def shown_by_cli(settings: Settings, device: str) -> dict[str, dict[str, Any]]:
    """What `hub commands --device DEVICE --json` shows, by command id."""
    result = hub_cli(settings, "commands", "--device", device, "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    return {record["id"]: record for record in json.loads(result.stdout)}


def test_an_ack_for_a_command_never_sent_or_sent_to_another_device_is_dead_lettered_and_never_recorded(
    stack: Settings, tmp_path: Path, channel: BlockingChannel
) -> None:
    owner_id, forger_id = "forge-owner", "forge-forger"
    owner, forger = mqtt_device(stack, owner_id), mqtt_device(stack, forger_id)
    dead = dead_letters_from_now(channel)
    never_sent = f"never-{uuid.uuid4().hex}"
    try:
        with hub_process(stack, tmp_path, "--only", "commands"):
            command = send_command(channel, owner_id)
            wait_until(lambda: lifecycle(stack, command.id) == [(owner_id, "sent")])
            answer(forger, forger_id, command.id, detail="I am the owner")  # another device's command
            answer(owner, owner_id, command.id)  # the genuine answer
            answer(owner, owner_id, never_sent)  # a command nobody sent
            letters = letters_until(channel, dead, never_sent)
            wait_until(lambda: lifecycle(stack, command.id) == [(owner_id, "ok"), (owner_id, "sent")])
    finally:
        for device in (owner, forger):
            device.loop_stop()
            device.disconnect()
    ours = (ack_key(forger_id), ack_key(owner_id))
    refused = {(key, json.loads(body)["id"]): props.headers for key, body, props in letters if key in ours}
    assert set(refused) == {(ack_key(forger_id), command.id), (ack_key(owner_id), never_sent)}, refused
    for headers in refused.values():
        assert headers[DEAD_LETTER_REASON_HEADER] == "unknown_command"
        assert headers[DEAD_LETTER_QUEUE_HEADER] == COMMANDS.name
    assert (
        f"no command {command.id} was sent to {forger_id}"
        in refused[(ack_key(forger_id), command.id)][DEAD_LETTER_DETAIL_HEADER]
    )
    assert lifecycle(stack, never_sent) == [], "nothing recorded for the forged id"
    assert lifecycle(stack, command.id) == [(owner_id, "ok"), (owner_id, "sent")], "the forger's ack changed nothing"
    assert shown_by_cli(stack, forger_id) == {}, "`hub commands` shows no command of the forger"
    owners = shown_by_cli(stack, owner_id)
    assert set(owners) == {command.id} and owners[command.id]["status"] == "ok"


def test_a_genuine_ack_after_a_hub_restart_is_recorded_and_repeating_it_after_another_adds_nothing(
    stack: Settings, tmp_path: Path, channel: BlockingChannel
) -> None:
    device_id = "restart-acker"
    device = mqtt_device(stack, device_id)
    try:
        with hub_process(stack, tmp_path, "--only", "commands"):
            command = send_command(channel, device_id)
            wait_until(lambda: lifecycle(stack, command.id) == [(device_id, "sent")])
        # The hub stopped with the command open: its delivery went back to hub.commands.
        with hub_process(stack, tmp_path, "--only", "commands"):
            answer(device, device_id, command.id, detail="after the restart")
            wait_until(lambda: lifecycle(stack, command.id) == [(device_id, "ok"), (device_id, "sent")])
        dead = dead_letters_from_now(channel)
        marker = f"marker-{uuid.uuid4().hex}"
        with hub_process(stack, tmp_path, "--only", "commands"):
            answer(device, device_id, command.id, detail="said again")  # e.g. an MQTT redelivery
            answer(device, device_id, marker)  # refused, and read after the repeat
            letters = letters_until(channel, dead, marker)
    finally:
        device.loop_stop()
        device.disconnect()
    refused_ids = [json.loads(body)["id"] for key, body, _props in letters if key == ack_key(device_id)]
    assert refused_ids == [marker], "the repeated ack of a command settled before the restart is not refused"
    assert lifecycle(stack, command.id) == [(device_id, "ok"), (device_id, "sent")], "one outcome"
    record = shown_by_cli(stack, device_id)[command.id]
    assert record["status"] == "ok" and record["detail"] == "after the restart"


def test_a_standby_that_takes_over_does_not_refuse_a_repeated_ack_of_what_the_active_hub_recorded(
    stack: Settings, tmp_path: Path, channel: BlockingChannel
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    device_id = "takeover-acker"
    device = mqtt_device(stack, device_id)
    marker = f"marker-{uuid.uuid4().hex}"
    try:
        with hub_process(stack, first, "--only", "commands") as active:
            wait_until(lambda: logged(first, "service=commands event=active"))
            with hub_process(stack, second, "--only", "commands"):
                wait_until(lambda: logged(second, "service=commands event=standby"))
                command = send_command(channel, device_id)
                answer(device, device_id, command.id, detail="to the first hub")
                wait_until(lambda: lifecycle(stack, command.id) == [(device_id, "ok"), (device_id, "sent")])
                active.send_signal(signal.SIGTERM)
                active.wait(30)
                wait_until(lambda: logged(second, "service=commands event=active"), 30)
                dead = dead_letters_from_now(channel)
                answer(device, device_id, command.id, detail="said again")
                answer(device, device_id, marker)
                letters = letters_until(channel, dead, marker)
    finally:
        device.loop_stop()
        device.disconnect()
    refused_ids = [json.loads(body)["id"] for key, body, _props in letters if key == ack_key(device_id)]
    assert refused_ids == [marker], "the new active hub learnt what the old one settled"
    assert lifecycle(stack, command.id) == [(device_id, "ok"), (device_id, "sent")]
