"""Device data cannot drive the terminal: an escape sequence a device sends (`ESC ] 0 ; … BEL`
retitles a terminal) reaches `hub tail`, `hub send`, `hub commands` and `hub devices` escaped,
and rich markup in it is shown, not obeyed. A real device over MQTT, the real hub, the CLI as
a user runs it (a subprocess, its output captured)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from hub.clients.management import read_bindings, read_subscribed_devices
from hub.core.config import Settings
from hub.core.contract import Ack, Command, Presence, decode, encode, now_ms
from tests.support import REPO, hub_cli, hub_process, influx_request, mqtt_device, settings_environment, wait_until

#: What a hostile device writes: retitle the terminal, then rich markup.
TITLE = "\x1b]0;pwned\x07"
SHOWN = "\\x1b]0;pwned\\x07"
DETAIL = f"{TITLE}[bold]x[/bold]"
DEVICE = "esc-0001"
SITE = "esc-site"


@contextmanager
def hostile_device(settings: Settings) -> Iterator[mqtt.Client]:
    """A device that answers every command `error` with DETAIL, subscribed before it is handed over."""
    client = mqtt_device(settings, DEVICE)

    def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        command = decode(bytes(message.payload), Command)
        ack = Ack(id=command.id, device=DEVICE, status="error", detail=DETAIL, ts=now_ms())
        client.publish(f"acks/{DEVICE}", encode(ack), qos=1)

    client.on_message = on_message
    client.subscribe(f"commands/{DEVICE}", qos=1)
    try:
        wait_until(lambda: DEVICE in (read_subscribed_devices(settings) or set()))
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


def bound(settings: Settings, routing_key: str) -> bool:
    return any(binding.get("routing_key") == routing_key for binding in read_bindings(settings) or [])


def assert_escaped(output: str, *shown: str) -> None:
    assert "\x1b" not in output and "\x07" not in output, f"a raw control character reached the terminal: {output!r}"
    for text in shown:
        assert text in output, output


def test_an_escape_sequence_from_a_device_reaches_every_cli_output_escaped(stack: Settings, tmp_path: Path) -> None:
    patterns = [f"status.{DEVICE}", f"telemetry.*.*.{DEVICE}", f"acks.{DEVICE}"]
    tail = subprocess.Popen(
        [sys.executable, "-m", "hub", "tail", *patterns, "--count", "3"],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: all(bound(stack, pattern) for pattern in patterns) or tail.poll() is not None, 30)
        with hub_process(stack, tmp_path, "--only", "commands", "--only", "presence"), hostile_device(stack) as device:
            status = Presence(
                device=DEVICE, state="online", protocol="mqtt", kind="environment", site=SITE,
                interval_ms=60_000, fw=TITLE, ts=now_ms(),
            )  # fmt: skip
            device.publish(f"status/{DEVICE}", encode(status), qos=1).wait_for_publish(10)
            not_json = b"\x1b]0;pwned\x07 not json"
            device.publish(f"telemetry/{SITE}/environment/{DEVICE}", not_json, qos=1).wait_for_publish(10)
            sent = hub_cli(stack, "send", DEVICE, "ping", "--timeout", "10")
            shown_tail, tail_err = tail.communicate(timeout=30)
            wait_until(lambda: "error" in hub_cli(stack, "commands", "--device", DEVICE, "--json").stdout)
            history = hub_cli(stack, "commands", "--device", DEVICE)
            history_json = hub_cli(stack, "commands", "--device", DEVICE, "--json")
            wait_until(lambda: DEVICE in hub_cli(stack, "devices", "--site", SITE, "--json").stdout)
            fleet = hub_cli(stack, "devices", "--site", SITE, "--json")
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, tail_err
    lines = shown_tail.splitlines()
    assert len(lines) == 3, shown_tail
    assert_escaped(shown_tail, f"fw {SHOWN}", f"invalid (bad_json): {SHOWN} not json", f"{SHOWN}[bold]x[/bold]")
    assert sent.returncode == 1, sent.stderr
    assert_escaped(sent.stderr, "device answered error", f": {SHOWN}[bold]x[/bold]")
    assert history.returncode == 0, history.stderr
    assert_escaped(history.stdout, f"{SHOWN}[bold]x[/bold]")
    assert_escaped(history_json.stdout)
    [record] = json.loads(history_json.stdout)
    assert record["detail"] == DETAIL, "JSON keeps the value itself, escaped as JSON"
    assert_escaped(fleet.stdout)
    [view] = json.loads(fleet.stdout)
    assert view["fw"] == TITLE


def test_the_fleet_table_shows_whatever_influxdb_holds_escaped(stack: Settings) -> None:
    """Defence in depth: the hub stores only identifiers as tags, but whoever holds a write login may write
    anything to InfluxDB."""
    tags = f"device=esc-influx,site=evil{TITLE},kind=esc_kind,protocol=mqtt"
    line = f'device_status,{tags} state="online",online=true'
    params = {"db": stack.influx_db, "precision": "ms"}
    status, body = influx_request(stack, "POST", "/write", params, f"{line} {now_ms()}".encode(), stack.influx_writer)
    assert status == 204, body
    table = hub_cli(stack, "devices", "--kind", "esc_kind")
    assert table.returncode == 0, table.stderr
    assert_escaped(table.stdout, "esc-influx", f"evil{SHOWN}")
