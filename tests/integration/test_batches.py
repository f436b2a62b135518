"""Batched telemetry over MQTT into a real hub: stored once per entry, a replay stores nothing twice, a
batch with one bad entry is dead-lettered whole with that entry named."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from devices.fleet import Fleet
from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_REASON_HEADER, now_ms
from hub.runtime.deadletter import DEAD_LETTER_DETAIL_HEADER
from tests.support import (
    amqp_connection,
    collect,
    fleet_credentials,
    hub_process,
    influx_query,
    mqtt_device,
    wait_until,
)

DEVICE, SITE = "env-9501", "batched"
TOPIC = f"telemetry/{SITE}/environment/{DEVICE}"


def batch(*seqs: int, base_ts: int, **bad: Any) -> bytes:
    entries: list[dict[str, Any]] = [
        {"seq": seq, "ts": base_ts + seq * 1000, "readings": {"temperature": 20.0 + seq, "humidity": 40.0}}
        for seq in seqs
    ]
    for index, readings in bad.items():
        entries[int(index.removeprefix("entry"))]["readings"] = readings
    return json.dumps({"v": 1, "device": DEVICE, "site": SITE, "kind": "environment", "batch": entries}).encode()


def stored(settings: Settings) -> list[tuple[int, int]]:
    """(time, seq) of the device's stored readings, oldest first."""
    series = influx_query(settings, f"SELECT seq FROM environment WHERE device = '{DEVICE}' AND site = '{SITE}'")
    return [(int(t), int(seq)) for s in series for t, seq in s["values"]]


def test_a_batch_over_mqtt_is_stored_once_per_entry_replays_add_nothing_and_a_bad_entry_refuses_it(
    stack: Settings, tmp_path: Path
) -> None:
    base_ts = now_ms() - 3_600_000  # an offline buffer of an hour ago
    connection = amqp_connection(stack)
    channel = connection.channel()
    dead = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(dead, DEAD_LETTER_EXCHANGE, routing_key=f"telemetry.{SITE}.#")
    device = mqtt_device(stack, DEVICE)
    try:
        with hub_process(stack, tmp_path, "--only", "telemetry"):
            device.publish(TOPIC, batch(3, 1, 2, base_ts=base_ts), qos=1).wait_for_publish(10)
            wait_until(lambda: len(stored(stack)) == 3, 30)
            device.publish(TOPIC, batch(1, 2, 3, base_ts=base_ts), qos=1).wait_for_publish(10)  # the same, again
            device.publish(
                TOPIC, batch(4, 5, 6, base_ts=base_ts, entry1={"temperature": True}), qos=1
            ).wait_for_publish(10)
            device.publish(TOPIC, batch(7, base_ts=base_ts), qos=1).wait_for_publish(10)  # behind both in the queue
            wait_until(lambda: 7 in [seq for _t, seq in stored(stack)], 30)
            [letter] = collect(connection, channel, dead, 1, timeout_s=15)
    finally:
        device.loop_stop()
        device.disconnect()
        connection.close()
    assert stored(stack) == [(base_ts + seq * 1000, seq) for seq in (1, 2, 3, 7)]
    _key, body, properties = letter
    headers = properties.headers or {}
    assert headers[DEAD_LETTER_REASON_HEADER] == "sensor_type"
    assert "batch entry seq 5" in str(headers[DEAD_LETTER_DETAIL_HEADER])
    assert json.loads(body)["batch"][1]["seq"] == 5, "the dead letter is the whole message as sent"


def _batches_seen(connection: Any, channel: Any, queue: str) -> list[int]:
    """How many readings each message on `queue` carried, in order (1 for a single reading)."""
    sizes = []
    for _key, body, _properties in collect(connection, channel, queue, 100_000, timeout_s=2):
        message = json.loads(body)
        sizes.append(len(message["batch"]) if "batch" in message else 1)
    return sizes


def _seqs(settings: Settings, site: str) -> list[int]:
    series = influx_query(settings, f"SELECT seq FROM environment WHERE site = '{site}'")
    return [int(seq) for s in series for _t, seq in s["values"]]


def _gapless(settings: Settings, site: str) -> bool:
    seqs = sorted(_seqs(settings, site))
    return bool(seqs) and seqs == list(range(1, seqs[-1] + 1))


def test_the_simulator_sends_batches_of_n_and_its_offline_buffer_as_batches(stack: Settings, tmp_path: Path) -> None:
    fleet_credentials(stack, 1, kinds=["environment"])
    connection = amqp_connection(stack)
    channel = connection.channel()
    watched = {}
    for site in ("sim-batch-5", "sim-backlog"):
        watched[site] = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(watched[site], "iot", routing_key=f"telemetry.{site}.#")
    try:
        with hub_process(stack, tmp_path, "--only", "telemetry"):
            with Fleet(stack, count=1, kinds=["environment"], site="sim-batch-5", interval_s=0.05, batch=5):
                wait_until(lambda: len(_seqs(stack, "sim-batch-5")) >= 20, 30)
            with Fleet(stack, count=1, kinds=["environment"], site="sim-backlog", interval_s=0.05) as fleet:
                [device] = [d.device_id for d in fleet.devices]
                wait_until(lambda: len(_seqs(stack, "sim-backlog")) >= 5, 30)
                fleet.cut(device, for_s=2.0)
                wait_until(lambda: not fleet.is_online(device), 10)
                wait_until(lambda: fleet.is_online(device), 30)
                wait_until(lambda: len(_seqs(stack, "sim-backlog")) >= 60, 30)
            five = _batches_seen(connection, channel, watched["sim-batch-5"])
            backlog = _batches_seen(connection, channel, watched["sim-backlog"])
            for site in watched:  # every reading the fleet made is stored, once
                wait_until(partial(_gapless, stack, site), 30)
    finally:
        connection.close()
    assert five[:-1] and set(five[:-1]) == {5}, five  # the last one may be partial: it left at shutdown
    assert max(backlog) > 1 and backlog[0] == 1, backlog
