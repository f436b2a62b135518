"""Exactly-once alarms on a real broker and InfluxDB: one scripted fault sequence, run through a
hub without a stop, through one SIGKILLed mid-way and restarted, through one SIGKILLed mid-way
beside a standby that takes over, and with a device re-sending its in-flight window, leaves the
same alarm rows and the same alert points; an ack from the CLI reaches the
alarm's owner and is one `acked` transition."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pika

from hub.core.config import Settings
from hub.core.contract import EXCHANGE, AlarmTransition, Reading, decode, encode, now_ms
from hub.dashboard.server import Dashboard
from hub.services.rules.engine import alert_id
from tests.support import amqp_connection, bind_temporary_queue, hub_cli, hub_process, influx_query, wait_until

RULES = """
rules:
  - {name: warm, alarm: temp-high, type: threshold, sensor: temperature, above: 26.0, cooldown_s: 5, clear_after: 2}
  - {name: hot, alarm: temp-high, type: threshold, sensor: temperature, above: 30.0, severity: critical,
     cooldown_s: 5, clear_after: 2}
  - {name: odd, type: zscore, sensor: temperature, window: 30, min_samples: 10, threshold: 4.0, cooldown_s: 0}
"""
READINGS = 300


def _script(device: str, base_ts: int) -> list[Reading]:
    """Faults: 10 readings above `warm` in every hundred, one of them above `hot`; a second apart."""
    readings = []
    for i in range(READINGS):
        step = i % 100
        value = 21.0 + (i % 3) * 0.1
        if 40 <= step < 50:
            value = 31.0 if step == 45 else 27.0 + (step - 40) * 0.1
        readings.append(
            Reading(
                device=device, site="plant-a", kind="environment", seq=i, ts=base_ts + i * 1000,
                readings={"temperature": value, "humidity": 40.0, "pressure": 1000.0},
            )
        )  # fmt: skip
    return readings


def _publish(settings: Settings, readings: list[Reading]) -> None:
    connection = amqp_connection(settings)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        for reading in readings:
            channel.basic_publish(EXCHANGE, reading.routing_key, encode(reading), properties)
    finally:
        connection.close()


def _stored(settings: Settings, device: str) -> int:
    series = influx_query(settings, f"SELECT count(seq) FROM environment WHERE device = '{device}'")
    return int(series[0]["values"][0][1]) if series else 0


def _rows(settings: Settings, measurement: str, device: str) -> list[dict[str, Any]]:
    series = influx_query(settings, f"SELECT * FROM {measurement} WHERE device = '{device}'")
    rows = []
    for one in series:
        for values in one["values"]:
            row = dict(zip(one["columns"], values, strict=True))
            # an alert's id hashes its device: checked on its own below
            rows.append({k: str(v).replace(device, "DEVICE") for k, v in row.items() if k not in ("device", "id")})
    return sorted(rows, key=lambda row: (int(row["time"]), row.get("transition", ""), row.get("rule", "")))


def _rules_file(tmp_path: Path) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return str(path)


def _logged(log_dir: Path, text: str) -> bool:
    return any(text in log.read_text() for log in log_dir.glob("hub-*.log"))


def test_the_same_fault_sequence_gives_the_same_alarms_and_alerts_after_a_sigkill_a_handover_and_a_replay(
    stack: Settings, tmp_path: Path
) -> None:
    rules = _rules_file(tmp_path)
    tag = uuid.uuid4().hex[:6]
    plain, killed, handed, replayed = (f"alarm-{name}-{tag}" for name in ("plain", "killed", "handed", "replayed"))
    base_ts = now_ms() - 3_600_000
    first_logs, standby_logs = tmp_path / "first", tmp_path / "standby"
    first_logs.mkdir()
    standby_logs.mkdir()
    with hub_process(stack, first_logs, "--only", "telemetry", IOT_RULES_FILE=rules) as first:
        _publish(stack, _script(plain, base_ts))
        # a device reconnecting re-sends its in-flight window: every 25 readings, the last 10 again
        script = _script(replayed, base_ts)
        resent = [r for i in range(READINGS) for r in [script[i], *(script[i - 9 : i + 1] if i % 25 == 24 else [])]]
        _publish(stack, resent)
        wait_until(lambda: _stored(stack, plain) == READINGS and _stored(stack, replayed) == READINGS, 60)
        script = _script(killed, base_ts)
        _publish(stack, script[:200])
        wait_until(lambda: _stored(stack, killed) > 20, 60)
        first.send_signal(signal.SIGKILL)  # mid-flow: readings unacked, alarms in flight
        first.wait()
    _publish(stack, script[200:])
    with hub_process(stack, first_logs, "--only", "telemetry", IOT_RULES_FILE=rules) as active:
        wait_until(lambda: _stored(stack, killed) == READINGS, 60)
        # a standby beside it takes the partitions over when it is SIGKILLed
        with hub_process(stack, standby_logs, "--only", "telemetry", IOT_RULES_FILE=rules):
            wait_until(lambda: _logged(standby_logs, "service=telemetry event=standby"), 30)
            script = _script(handed, base_ts)
            _publish(stack, script[:150])
            wait_until(lambda: _stored(stack, handed) > 20, 60)
            active.send_signal(signal.SIGKILL)
            active.wait()
            _publish(stack, script[150:])
            wait_until(lambda: _stored(stack, handed) == READINGS, 60)
            rebuilt = sum(log.read_text().count("event=rebuilt") for log in standby_logs.glob("hub-*.log"))
            assert rebuilt >= 2, "at its start, and at the takeover from what the active hub stored"
    expected_alarms = _rows(stack, "alarms", plain)
    transitions = [(row["transition"], row["type"], row["severity"]) for row in expected_alarms]
    assert transitions.count(("raised", "temp-high", "warning")) == 3
    assert transitions.count(("escalated", "temp-high", "critical")) == 3
    assert transitions.count(("cleared", "temp-high", "critical")) == 3
    expected_alerts = _rows(stack, "alerts", plain)
    assert len({row["time"] for row in expected_alerts}) >= 6, "several trips in each fault"
    for device in (killed, handed, replayed):
        assert _rows(stack, "alarms", device) == expected_alarms, device
        assert _rows(stack, "alerts", device) == expected_alerts, device
    [series] = influx_query(stack, f"SELECT id, rule FROM alerts WHERE device = '{killed}'")
    assert all(id_ == alert_id(rule, killed, at) for at, id_, rule in series["values"]), "(rule, device, reading ts)"


def test_an_ack_from_the_cli_reaches_the_alarm_owner_once(stack: Settings, tmp_path: Path) -> None:
    rules = _rules_file(tmp_path)
    device = f"alarm-ack-{uuid.uuid4().hex[:6]}"
    base_ts = now_ms() - 60_000
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, f"alarms.*.plant-a.environment.{device}")
    try:
        with hub_process(stack, tmp_path, "--only", "telemetry", IOT_RULES_FILE=rules):
            _publish(stack, _script(device, base_ts)[:42])  # raised at reading 40, still active
            alarm_id = f"temp-high:{device}:{base_ts + 40_000}"
            wait_until(lambda: any(r["transition"] == "raised" for r in _rows(stack, "alarms", device)), 30)
            listed = hub_cli(stack, "alarms", "--device", device, "--json")
            assert listed.returncode == 0, listed.stderr
            [alarm] = [a for a in json.loads(listed.stdout) if a["type"] == "temp-high"]  # beside `odd`
            assert (alarm["id"], alarm["state"], alarm["acked"], alarm["count"]) == (alarm_id, "active", False, 1)
            assert alarm in Dashboard(stack).alarms(), "the dashboard page shows the active alarms"
            for _ in range(2):
                acked = hub_cli(stack, "alarms", "ack", alarm_id, "--note", "on it", "--by", "ann")
                assert acked.returncode == 0, acked.stderr
            wait_until(lambda: any(r["transition"] == "acked" for r in _rows(stack, "alarms", device)), 30)
            unknown = hub_cli(stack, "alarms", "ack", f"temp-high:{device}:1")
            assert unknown.returncode == 2 and "unknown alarm" in unknown.stderr, unknown.stderr
            _publish(stack, _script(device, base_ts)[42:60])  # escalated at 45, back to normal: cleared at 51
            wait_until(lambda: any(r["transition"] == "cleared" for r in _rows(stack, "alarms", device)), 30)
        messages: list[AlarmTransition] = []

        def arrived() -> bool:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is not None and (message := decode(body, AlarmTransition)).type == "temp-high":
                messages.append(message)
            return [m.transition for m in messages] == ["raised", "acked", "escalated", "cleared"]

        wait_until(arrived, 30)
        ack_message = messages[1]
        assert (ack_message.key, ack_message.acked_by, ack_message.note, ack_message.acked) == (
            f"{alarm_id}/acked",
            "ann",
            "on it",
            True,
        )
        listed = hub_cli(stack, "alarms", "--device", device, "--state", "cleared", "--json")
        [alarm] = [a for a in json.loads(listed.stdout) if a["type"] == "temp-high"]
        assert (alarm["state"], alarm["acked"], alarm["cleared_at"]) == ("cleared", True, base_ts + 51_000)
    finally:
        connection.close()
