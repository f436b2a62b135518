"""Batched telemetry over MQTT into a real hub: stored once per entry, a replay stores nothing twice, a
batch with one bad entry is dead-lettered whole with that entry named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_REASON_HEADER, now_ms
from hub.runtime.deadletter import DEAD_LETTER_DETAIL_HEADER
from tests.support import amqp_connection, collect, hub_process, influx_query, mqtt_device, wait_until

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
