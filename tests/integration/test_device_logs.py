"""Device logs on the real stack: lines over MQTT and STOMP stored and listed by `hub logs`, a
device confined to its own log topics, a flood rate-limited with its summary while telemetry
keeps flowing, and `hub logs -f` showing a new line live."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.clients.influx import InfluxHttp
from hub.clients.management import ManagementAdmin
from hub.control.identity import device_accounts, provision, revoke
from hub.core.config import LOG_RETENTION_POLICY, Settings
from hub.core.contract import EXCHANGE, VHOST, LogLine, Presence, Reading, encode, log_key, now_ms
from hub.core.permissions import earlier_topic_permissions, topic_permissions
from hub.stack import Stack
from hub.stack.influx import account_plan, ensure_log_retention
from tests.device_clients import connect_device, gone, publish
from tests.support import (
    REPO,
    amqp_connection,
    bind_temporary_queue,
    collect,
    hub_cli,
    hub_process,
    influx_query,
    settings_environment,
    wait_until,
)

PROTOCOLS = ["mqtt", "stomp"]
#: A routing key no hub queue is bound to, published after a refused message: it arrives, the refused one does not.
MARKER_KEY = "test.logs-marker"
#: The flood: lines one device sends at once, and the limiter's settings for it.
FLOOD_LINES = 500
FLOOD_RATE, FLOOD_BURST, FLOOD_SUMMARY_S = "5", "10", "2"
#: The other device sends a reading every this many lines of the flood.
READING_EVERY = 10
READINGS_BESIDE_THE_FLOOD = FLOOD_LINES // READING_EVERY


@pytest.fixture
def devices(stack: Settings) -> Iterator[dict[str, str]]:
    """Three fresh devices with their own secrets; revoked afterwards."""
    nonce = uuid.uuid4().hex[:8]
    names = [f"lg-{nonce}-{letter}" for letter in "abc"]
    issued = provision(stack, names).issued
    yield {device: credential.password for device, credential in issued.items()}
    revoke(stack, names)


def line(device: str, level: str, message: str, ts: int, **fields: Any) -> bytes:
    return encode(LogLine(device=device, ts=ts, level=level, message=message, fields=fields))  # type: ignore[arg-type]


def logged_over_mqtt(settings: Settings, device: str, secret: str, message: str) -> list[str]:
    """The routing keys that reached the exchange of one `info` line `device` logs over MQTT."""
    client = connect_device(settings, "mqtt", device, secret)
    connection = amqp_connection(settings)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, log_key(device, "info"))
    publish(client, log_key(device, "info"), line(device, "info", message, now_ms()))
    received = collect(connection, channel, queue, 1, timeout_s=10)
    connection.close()
    client.close()
    return [key for key, _body, _props in received]


def listed(settings: Settings, *args: str, **env: str) -> list[dict[str, Any]]:
    result = hub_cli(settings, "logs", *args, "--json", timeout_s=60, **env)
    assert result.returncode == 0, result.stderr
    return [json.loads(text) for text in result.stdout.splitlines()]


def test_log_lines_over_mqtt_and_stomp_are_stored_and_listed(
    stack: Settings, devices: dict[str, str], tmp_path: Path
) -> None:
    (mqtt_id, mqtt_secret), (stomp_id, stomp_secret), _ = devices.items()
    site = f"site-{mqtt_id}"
    at = now_ms()
    with hub_process(stack, tmp_path, "--only", "logs", "--only", "presence"):
        for protocol, device, secret in (("mqtt", mqtt_id, mqtt_secret), ("stomp", stomp_id, stomp_secret)):
            client = connect_device(stack, protocol, device, secret)
            if protocol == "mqtt":  # the fleet view places it at `site`: `--site` finds its lines
                status = Presence(
                    device=device,
                    state="online",
                    protocol="mqtt",
                    kind="environment",
                    site=site,
                    interval_ms=1000,
                    ts=at,
                )
                publish(client, status.routing_key, encode(status))
            publish(client, log_key(device, "info"), line(device, "info", f"booted over {protocol}", at))
            publish(client, log_key(device, "error"), line(device, "error", "sensor timeout", at + 1, attempt=3))
            # A body breaking the contract (a level the key does not say) is dead-lettered, not stored.
            publish(client, log_key(device, "critical"), line(device, "debug", "mislabelled", at + 2))
            wait_until(lambda: len(listed(stack, "--device", device)) == 2, 30)  # noqa: B023
            client.close()
        for device, protocol in ((mqtt_id, "mqtt"), (stomp_id, "stomp")):
            shown = listed(stack, "--device", device)
            assert [(e["level"], e["message"], e["time"]) for e in shown] == [
                ("info", f"booted over {protocol}", at),
                ("error", "sensor timeout", at + 1),
            ]
            assert shown[1]["fields"] == {"attempt": 3} and shown[1]["source"] == "device"
            assert [e["message"] for e in listed(stack, "--device", device, "--level", "warning")] == ["sensor timeout"]
        wait_until(lambda: [e["device"] for e in listed(stack, "--site", site)] == [mqtt_id] * 2, 30)
        text = hub_cli(stack, "logs", "--device", mqtt_id)
        assert text.returncode == 0 and "sensor timeout attempt=3" in text.stdout, text.stdout + text.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_device_cannot_publish_another_device_s_logs(stack: Settings, devices: dict[str, str], protocol: str) -> None:
    (a, a_secret), (b, _), _ = devices.items()
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = bind_temporary_queue(channel, "logs.#", MARKER_KEY)
    client = connect_device(stack, protocol, a, a_secret)
    publish(client, log_key(a, "warning"), line(a, "warning", "mine", now_ms()))
    publish(client, log_key(b, "warning"), line(b, "warning", "forged", now_ms()))
    wait_until(lambda: gone(client), 10)
    client.close()
    channel.basic_publish(EXCHANGE, MARKER_KEY, b"after the forgery")
    received = [key for key, _body, _props in collect(connection, channel, queue, 3, timeout_s=3)]
    connection.close()
    assert received == [log_key(a, "warning"), MARKER_KEY]


def test_provisioning_a_device_again_gives_it_its_log_topics_and_keeps_its_secret(
    stack: Settings, devices: dict[str, str]
) -> None:
    (device, secret), _, _ = devices.items()
    admin = ManagementAdmin(stack)
    before_logs = {"exchange": EXCHANGE, "write": rf"^(status\.{device})$", "read": rf"^commands\.{device}$"}
    admin.import_definitions({"topic_permissions": [{"user": device, "vhost": VHOST, **before_logs}]})
    assert provision(stack, [device]).existing == [device]
    assert logged_over_mqtt(stack, device, secret, "allowed now") == [log_key(device, "info")]  # same secret


def test_stack_up_gives_accounts_of_the_version_before_logs_their_log_topics_and_nothing_else(
    stack: Settings, devices: dict[str, str]
) -> None:
    """A stack made before devices had log lines: its device accounts lack them, and `stack up`
    (here on the running stack) upgrades exactly those, no account another way confined."""
    (device, secret), (other, _), _ = devices.items()
    admin = ManagementAdmin(stack)
    earlier = earlier_topic_permissions(device)
    foreign = {"exchange": EXCHANGE, "write": rf"^(status\.{other})$", "read": rf"^commands\.{other}$"}
    admin.import_definitions(
        {
            "topic_permissions": [
                {"user": device, "vhost": VHOST, **earlier},
                {"user": other, "vhost": VHOST, **foreign},
            ]
        }
    )
    assert device_accounts(admin.topic_permissions()) >= {device}  # still recognised as a device
    Stack(stack).up()
    granted = {p["user"]: p for p in admin.topic_permissions() if p.get("vhost") == VHOST}
    assert granted[device]["write"] == topic_permissions(device)["write"]
    assert granted[other]["write"] == foreign["write"]  # not an account of an earlier version: left alone
    assert logged_over_mqtt(stack, device, secret, "allowed after stack up") == [log_key(device, "info")]


def test_a_flood_is_rate_limited_with_a_summary_while_telemetry_keeps_flowing(
    stack: Settings, devices: dict[str, str], tmp_path: Path
) -> None:
    (flooder, flooder_secret), (sensor, sensor_secret), _ = devices.items()
    site = f"plant-{flooder[-10:-2]}"
    start = now_ms()
    with hub_process(
        stack, tmp_path, IOT_LOG_RATE=FLOOD_RATE, IOT_LOG_BURST=FLOOD_BURST, IOT_LOG_SUMMARY_S=FLOOD_SUMMARY_S
    ):
        noisy = connect_device(stack, "mqtt", flooder, flooder_secret)
        steady = connect_device(stack, "mqtt", sensor, sensor_secret)
        for index in range(FLOOD_LINES):
            publish(noisy, log_key(flooder, "debug"), line(flooder, "debug", f"chatter {index}", start + index))
            if index % READING_EVERY == 0:
                seq = index // READING_EVERY + 1
                reading = Reading(
                    device=sensor,
                    site=site,
                    kind="environment",
                    seq=seq,
                    ts=start + index,
                    readings={"temperature": 20.0},
                )
                publish(steady, reading.routing_key, encode(reading))

        def stored_readings() -> int:
            series = influx_query(stack, f"SELECT count(temperature) FROM environment WHERE device = '{sensor}'")
            return int(series[0]["values"][0][1]) if series else 0

        # Every reading of the other device is stored while the flood is being dropped.
        wait_until(lambda: stored_readings() == READINGS_BESIDE_THE_FLOOD, 60)

        def accounted() -> tuple[int, int]:
            rows = influx_query(stack, f"SELECT message, dropped, source FROM device_logs WHERE device = '{flooder}'")
            values = rows[0]["values"] if rows else []
            kept = sum(1 for _time, _message, _dropped, source in values if source is None)
            dropped = sum(int(dropped) for _time, _message, dropped, source in values if source == "hub")
            return kept, dropped

        # Each line is stored or counted in a summary, once the last window's summary is due.
        wait_until(lambda: sum(accounted()) == FLOOD_LINES, 60, 0.5)
        kept, dropped = accounted()
        noisy.close()
        steady.close()
    assert dropped > 0 and kept >= int(FLOOD_BURST)
    summaries = [e for e in listed(stack, "--device", flooder, "--level", "warning") if e["source"] == "hub"]
    assert summaries and all("log lines dropped" in e["message"] for e in summaries)
    assert sum(e["fields"]["dropped"] for e in summaries) == dropped


def test_hub_logs_follow_shows_a_new_line_live_at_its_level_and_above(stack: Settings, devices: dict[str, str]) -> None:
    (device, secret), _, _ = devices.items()
    follower = subprocess.Popen(
        [sys.executable, "-m", "hub", "logs", "-f", "--level", "warning", "--device", device, "--for", "120"],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(iter(follower.stdout.readline, "")), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err.extend(iter(follower.stderr.readline, "")), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: any("following" in text for text in err) or follower.poll() is not None, 30)
        assert follower.poll() is None, "".join(err)
        client = connect_device(stack, "stomp", device, secret)
        at = now_ms()
        publish(client, log_key(device, "info"), line(device, "info", "too quiet to show", at))
        publish(client, log_key(device, "error"), line(device, "error", "disk \x1b[2J full", at + 1, free=0))
        wait_until(lambda: any("full" in text for text in out), 30)
        client.close()
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(30)
    for reader in readers:
        reader.join(10)
    assert follower.returncode == 0, "".join(err)
    assert len(out) == 1, out
    assert device in out[0] and "error" in out[0] and "disk \\x1b[2J full" in out[0] and "free=0" in out[0]


def test_with_a_retention_of_their_own_logs_are_kept_in_their_policy_and_listed_from_it(
    stack: Settings, devices: dict[str, str], tmp_path: Path
) -> None:
    (device, secret), _, _ = devices.items()
    plan = account_plan(stack)
    admin = InfluxHttp(stack.influx_url, stack.influx_db, user=plan.admin.user, password=plan.admin.password)
    try:
        for duration, hours in (("14d", "336h0m0s"), ("7d", "168h0m0s")):  # made, then altered
            ensure_log_retention(admin, stack.model_copy(update={"log_retention": duration}))
            [series] = admin.administer(f'SHOW RETENTION POLICIES ON "{stack.influx_db}"')
            policies = {row["name"]: row for one in series for row in one.rows}
            assert policies[LOG_RETENTION_POLICY]["duration"] == hours
            assert not policies[LOG_RETENTION_POLICY]["default"]
    finally:
        admin.close()
    with hub_process(stack, tmp_path, "--only", "logs", IOT_LOG_RETENTION="7d"):
        client = connect_device(stack, "mqtt", device, secret)
        publish(client, log_key(device, "error"), line(device, "error", "kept a week", now_ms()))
        wait_until(lambda: listed(stack, "--device", device, IOT_LOG_RETENTION="7d"), 30)
        client.close()
    in_policy = influx_query(
        stack, f"SELECT message FROM \"{LOG_RETENTION_POLICY}\".device_logs WHERE device = '{device}'"
    )
    in_default = influx_query(stack, f"SELECT message FROM device_logs WHERE device = '{device}'")
    assert [row[1] for row in in_policy[0]["values"]] == ["kept a week"] and in_default == []
