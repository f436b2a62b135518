"""`python -m hub send|devices|tail` as a user runs them: a subprocess against the real stack,
the real hub (`python -m hub run`) and real simulated devices over MQTT and STOMP; each test
checks what the command prints and the exit code it ends with."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.fleet import Fleet
from hub.clients.management import read_bindings
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, ack_key, command_key
from hub.core.exit_codes import ExitCode
from hub.stack.processes import free_port
from tests.support import (
    REPO,
    amqp_connection,
    collect,
    hub_cli,
    hub_process,
    influx_query,
    settings_environment,
    wait_until,
)

SITE = "cli-site"
#: Two devices of each kind; `mixed` gives each kind one MQTT and one STOMP device.
FLEET_SIZE = 8
#: A short --timeout keeps the timeout tests quick.
SHORT_TIMEOUT_S = 2.0


def listening_for_acks(settings: Settings, device: str) -> bool:
    """A sender has bound its ack queue to exactly `acks.<device>` (the hub binds `acks.#` only):
    `send` is running and about to send, or to wait for the device to subscribe."""
    return any(binding.get("routing_key") == ack_key(device) for binding in read_bindings(settings) or [])


def assert_one_clean_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


# --- the system under test: the hub and a small fleet -------------------------------------------


@pytest.fixture(scope="module")
def hub(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    with hub_process(stack, tmp_path_factory.mktemp("hub")) as process:
        yield process


@pytest.fixture(scope="module")
def fleet(stack: Settings, hub: subprocess.Popen[bytes]) -> Iterator[Fleet]:
    with Fleet(stack, count=FLEET_SIZE, protocol="mixed", interval_s=0.5, site=SITE, seed=6) as running:
        try:
            wait_until(lambda: len(online_devices(stack)) == FLEET_SIZE, 30, 0.5)
        except AssertionError:
            transitions = influx_query(stack, f"SELECT * FROM device_status WHERE site = '{SITE}'")
            raise AssertionError(f"fleet not online: {online_devices(stack)} / {transitions}") from None
        yield running


def online_devices(settings: Settings) -> list[dict[str, Any]]:
    result = hub_cli(settings, "devices", "--site", SITE, "--state", "online", "--json")
    assert result.returncode == 0, result.stderr
    devices: list[dict[str, Any]] = json.loads(result.stdout)
    return devices


def device_of(fleet: Fleet, kind: str, protocol: str) -> str:
    return next(d.device_id for d in fleet.devices if d.kind == kind and d.protocol == protocol)


PROTOCOLS = ["mqtt", "stomp"]


# --- send --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_prints_ok_the_new_state_and_the_round_trip(stack: Settings, fleet: Fleet, protocol: str) -> None:
    device = device_of(fleet, "environment", protocol)
    result = hub_cli(stack, "send", device, "set_interval", "ms=700")
    assert result.returncode == ExitCode.OK, result.stderr
    assert f"✓ {device} set_interval ms=700: ok in " in result.stdout
    assert "interval_ms=700" in result.stdout
    assert fleet.device(device).interval_ms == 700


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_json_gives_the_device_state_after_the_command(stack: Settings, fleet: Fleet, protocol: str) -> None:
    device = device_of(fleet, "thermostat", protocol)
    result = hub_cli(stack, "send", device, "set_setpoint", "value=23.5", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["device"] == device
    assert outcome["status"] == "ok"
    assert outcome["state"]["setpoint"] == 23.5
    assert outcome["rtt_ms"] > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_unsupported_command_exits_1_with_the_device_answer(stack: Settings, fleet: Fleet, protocol: str) -> None:
    device = device_of(fleet, "environment", protocol)
    result = hub_cli(stack, "send", device, "self_destruct")
    assert result.returncode == ExitCode.DEVICE_REFUSED
    assert f"{device} self_destruct: device answered unsupported" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_with_arguments_the_device_refuses_exits_1_with_the_device_error(
    stack: Settings, fleet: Fleet, protocol: str, tmp_path: Path
) -> None:
    """The CLI checks arguments against its models; a device whose models disagree still has the last word."""
    looser = tmp_path / "looser.yaml"
    looser.write_text("common_commands:\n  set_interval: {args: {ms: {type: integer, minimum: 1}}, required: [ms]}\n")
    device = device_of(fleet, "power_meter", protocol)
    result = hub_cli(stack, "send", device, "set_interval", "ms=5", IOT_MODELS_FILE=str(looser))
    assert result.returncode == ExitCode.DEVICE_REFUSED
    assert "device answered error" in result.stderr and "from 100 to 3600000" in result.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_to_a_stopped_device_times_out_with_exit_7(stack: Settings, fleet: Fleet, protocol: str) -> None:
    device = device_of(fleet, "air_quality", protocol)
    fleet.stop_device(device)
    try:
        wait_until(lambda: device not in {d["device"] for d in online_devices(stack)}, 20, 0.3)
        offline = hub_cli(stack, "devices", "--site", SITE, "--state", "offline", "--json")
        assert device in {d["device"] for d in json.loads(offline.stdout)}
        started = time.monotonic()
        result = hub_cli(stack, "send", device, "ping", "--timeout", str(SHORT_TIMEOUT_S))
        assert result.returncode == ExitCode.TIMEOUT
        assert time.monotonic() - started >= SHORT_TIMEOUT_S
        assert f"{device} ping: timeout: offline" in result.stderr
        assert_one_clean_line(result.stderr)
    finally:
        fleet.start_device(device)
        assert fleet.wait_online([device], 20)


def test_send_waits_for_a_rebooting_device_and_delivers_when_it_is_back(stack: Settings, fleet: Fleet) -> None:
    device = device_of(fleet, "environment", "mqtt")
    fleet.stop_device(device)
    wait_until(lambda: device not in {d["device"] for d in online_devices(stack)}, 20, 0.3)
    sender = subprocess.Popen(
        [sys.executable, "-m", "hub", "send", device, "ping", "--timeout", "15"],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: listening_for_acks(stack, device) or sender.poll() is not None, 30)
    fleet.start_device(device)
    out, err = sender.communicate(timeout=30)
    assert sender.returncode == ExitCode.OK, err
    assert f"✓ {device} ping: ok" in out


def test_send_to_a_silent_subscriber_times_out_with_exit_7(stack: Settings, fleet: Fleet) -> None:
    """Something listens on commands.<device> (a device whose session outlived it) but never answers."""
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, EXCHANGE, routing_key=command_key("ghost-0001"))
    sender = subprocess.Popen(
        [sys.executable, "-m", "hub", "send", "ghost-0001", "ping", "--timeout", str(SHORT_TIMEOUT_S)],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [(_key, body, properties)] = collect(connection, channel, queue, 1, timeout_s=10)
    finally:
        _, err = sender.communicate(timeout=30)
        connection.close()
    assert sender.returncode == ExitCode.TIMEOUT
    assert "ghost-0001 ping: timeout: no answer within 2 s" in err
    assert properties.app_id == "cli" and properties.delivery_mode == 2
    command = json.loads(body)
    assert command["command"] == "ping" and command["expires"] - command["ts"] <= SHORT_TIMEOUT_S * 1000


def test_send_to_an_unknown_device_exits_6_at_once(stack: Settings, fleet: Fleet) -> None:
    started = time.monotonic()
    result = hub_cli(stack, "send", "nosuch-0001", "ping")
    assert result.returncode == ExitCode.UNKNOWN_DEVICE
    assert time.monotonic() - started < 10  # not the --timeout: nothing listens, so nothing is waited for
    assert "nosuch-0001 ping: unknown device" in result.stderr
    assert_one_clean_line(result.stderr)


def test_send_with_the_broker_unreachable_exits_4(stack: Settings) -> None:
    closed = free_port()
    result = hub_cli(stack, "send", "env-0001", "ping", IOT_AMQP_URL=f"amqp://hub@127.0.0.1:{closed}/iot")
    assert result.returncode == ExitCode.BROKER_UNREACHABLE
    assert f"cannot reach RabbitMQ at amqp://127.0.0.1:{closed}/iot" in result.stderr
    assert_one_clean_line(result.stderr)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["Env-1", "ping"], "device 'Env-1' is not allowed"),
        (["env-0001", "ping", "ms"], "argument 'ms' is not key=value"),
        (["env-0001", "set_interval", "ms=null"], "value 'null' is not allowed"),
        (["th-0001", "set_setpoint", "value=99"], "argument 'value' must be a number from 5 to 35 (got 99)"),
        (["env-0001", "set_interval", "ms=5"], "an integer from 100 to 3600000"),
        (["env-0001"], "give DEVICE and COMMAND"),
    ],
)
def test_send_usage_errors_exit_2_before_anything_is_sent(stack: Settings, words: list[str], message: str) -> None:
    closed = free_port()  # nothing is contacted: a usage error is reported first
    result = hub_cli(stack, "send", *words, IOT_AMQP_URL=f"amqp://hub:x@127.0.0.1:{closed}/iot")
    assert result.returncode == ExitCode.USAGE
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_send_to_a_kind_waits_for_every_ack_and_prints_a_summary(stack: Settings, fleet: Fleet) -> None:
    meters = sorted(d.device_id for d in fleet.devices if d.kind == "power_meter")
    result = hub_cli(stack, "send", "--site", SITE, "--kind", "power_meter", "set_relay", "on=false")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "set_relay to 2 devices" in result.stdout
    for meter in meters:
        assert meter in result.stdout
        assert fleet.device(meter).state()["relay"] is False
    assert "2 ok · rtt median" in result.stdout


def test_send_to_a_site_as_json_answers_for_every_device_over_both_protocols(stack: Settings, fleet: Fleet) -> None:
    result = hub_cli(stack, "send", "--site", SITE, "ping", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    outcomes = json.loads(result.stdout)
    assert sorted(o["device"] for o in outcomes) == sorted(d.device_id for d in fleet.devices)
    assert {o["status"] for o in outcomes} == {"ok"}


def test_send_to_a_site_nobody_is_in_exits_6(stack: Settings, fleet: Fleet) -> None:
    result = hub_cli(stack, "send", "--site", "nowhere", "ping")
    assert result.returncode == ExitCode.UNKNOWN_DEVICE
    assert "no online device matches site=nowhere" in result.stderr


# --- devices -----------------------------------------------------------------------------------


def test_devices_json_lists_each_device_with_kind_site_protocol_and_presence(stack: Settings, fleet: Fleet) -> None:
    before = int(time.time() * 1000)
    wait_until(lambda: len(online_devices(stack)) == FLEET_SIZE, 20, 0.5)
    listed = {d["device"]: d for d in online_devices(stack)}
    assert set(listed) == {d.device_id for d in fleet.devices}
    for device in fleet.devices:
        view = listed[device.device_id]
        assert (view["kind"], view["site"], view["protocol"], view["online"]) == (
            device.kind,
            SITE,
            device.protocol,
            True,
        )
        assert isinstance(view["last_seen"], int) and view["last_seen"] > before - 60_000
        assert view["readings"], view
    assert {d["protocol"] for d in listed.values()} == {"mqtt", "stomp"}


def test_devices_table_filters_by_kind(stack: Settings, fleet: Fleet) -> None:
    result = hub_cli(stack, "devices", "--site", SITE, "--kind", "thermostat")
    assert result.returncode == ExitCode.OK, result.stderr
    thermostats = [d.device_id for d in fleet.devices if d.kind == "thermostat"]
    others = [d.device_id for d in fleet.devices if d.kind != "thermostat"]
    for name in thermostats:
        assert name in result.stdout
    for name in others:
        assert name not in result.stdout
    assert "temperature=" in result.stdout and "setpoint=" in result.stdout
    assert "2 of " in result.stdout and "2 online" in result.stdout


def test_devices_with_influxdb_unreachable_exits_5(stack: Settings) -> None:
    closed = free_port()
    result = hub_cli(stack, "devices", IOT_INFLUX_URL=f"http://127.0.0.1:{closed}")
    assert result.returncode == ExitCode.INFLUX_UNREACHABLE
    assert f"cannot reach InfluxDB at http://127.0.0.1:{closed}" in result.stderr
    assert_one_clean_line(result.stderr)


# --- tail --------------------------------------------------------------------------------------


def test_tail_shows_telemetry_from_mqtt_and_stomp_devices(stack: Settings, fleet: Fleet) -> None:
    result = hub_cli(stack, "tail", f"telemetry.{SITE}.environment.*", "--count", "12", "--for", "30")
    assert result.returncode == ExitCode.OK, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 12
    for protocol in PROTOCOLS:
        device = device_of(fleet, "environment", protocol)
        assert any(f"telemetry.{SITE}.environment.{device}" in line and "temperature=" in line for line in lines)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tail_shows_a_command_and_the_device_ack(stack: Settings, fleet: Fleet, protocol: str) -> None:
    device = device_of(fleet, "thermostat", protocol)
    tail = subprocess.Popen(
        [sys.executable, "-m", "hub", "tail", f"commands.{device}", f"acks.{device}", "--count", "2", "--for", "30"],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tail.stderr is not None
    assert "tailing" in tail.stderr.readline()  # bound: from here on nothing is missed
    sent = hub_cli(stack, "send", device, "set_setpoint", "value=19")
    assert sent.returncode == ExitCode.OK, sent.stderr
    out, _ = tail.communicate(timeout=30)
    command_line, ack_line = out.strip().splitlines()
    assert f"commands.{device}" in command_line and "set_setpoint value=19" in command_line
    assert "from cli" in command_line
    assert f"acks.{device}" in ack_line and " ok" in ack_line and "setpoint=19" in ack_line


def test_tail_json_prints_one_object_per_message(stack: Settings, fleet: Fleet) -> None:
    result = hub_cli(stack, "tail", f"telemetry.{SITE}.#", "--count", "3", "--json", "--for", "30")
    assert result.returncode == ExitCode.OK, result.stderr
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["routing_key"].startswith(f"telemetry.{SITE}.")
        assert record["body"]["site"] == SITE


def ignore_sigint() -> None:
    """What a shell does for each background job of a script: the program starts with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: How a CLI program may start: as from a terminal, or as a background job of a script (`make test &`).
SIGINT_AT_START = pytest.mark.parametrize("preexec", [None, ignore_sigint], ids=["sigint-default", "sigint-ignored"])


@SIGINT_AT_START
def test_tail_stops_with_exit_0_on_ctrl_c(stack: Settings, preexec: Callable[[], None] | None) -> None:
    tail = subprocess.Popen(
        [sys.executable, "-m", "hub", "tail", "alerts.#"],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )
    assert tail.stderr is not None
    assert "tailing alerts.#" in tail.stderr.readline()
    tail.send_signal(signal.SIGINT)
    _, err = tail.communicate(timeout=15)
    assert tail.returncode == 0
    assert "Traceback" not in err


@SIGINT_AT_START
def test_send_waiting_for_an_ack_stops_with_exit_130_on_ctrl_c(
    stack: Settings, preexec: Callable[[], None] | None
) -> None:
    """Ctrl-C while `send` waits for a silent subscriber's ack ends it at once, not at its --timeout."""
    connection = amqp_connection(stack)
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, EXCHANGE, routing_key=command_key("ghost-0002"))
    sender = subprocess.Popen(
        [sys.executable, "-m", "hub", "send", "ghost-0002", "ping", "--timeout", "600"],
        cwd=REPO,
        env=settings_environment(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )
    try:
        assert len(collect(connection, channel, queue, 1, timeout_s=30)) == 1, "the command went out"
        sender.send_signal(signal.SIGINT)
        _, err = sender.communicate(timeout=15)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.communicate()
        connection.close()
    assert sender.returncode == ExitCode.INTERRUPTED
    assert "Traceback" not in err


def test_tail_with_the_broker_unreachable_exits_4(stack: Settings) -> None:
    closed = free_port()
    result = hub_cli(stack, "tail", "--count", "1", IOT_AMQP_URL=f"amqp://hub@127.0.0.1:{closed}/iot")
    assert result.returncode == ExitCode.BROKER_UNREACHABLE
    assert "cannot reach RabbitMQ" in result.stderr
    assert_one_clean_line(result.stderr)


def test_tail_refuses_a_bad_pattern_with_exit_2(stack: Settings) -> None:
    result = hub_cli(stack, "tail", "telemetry/plant-a/#")
    assert result.returncode == ExitCode.USAGE
    assert "routing pattern 'telemetry/plant-a/#' is not allowed" in result.stderr
    assert_one_clean_line(result.stderr)


def test_every_command_has_help_with_examples(stack: Settings) -> None:
    for command in ("send", "devices", "tail", "demo"):
        result = hub_cli(stack, command, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout and f"python -m hub {command}" in result.stdout.replace("make demo", "")
    assert "7  timeout" in hub_cli(stack, "send", "--help").stdout
