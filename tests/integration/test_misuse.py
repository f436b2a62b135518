"""Misuses of `python -m hub` as a user makes them: each ends with exit code 2 and one line that
names the variable, file or flag, never a traceback, and nothing is done before it (no device
account created, no hub started). A subprocess against the real stack, its output captured."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.clients.management import ManagementAdmin
from hub.core.config import Settings
from hub.core.exit_codes import ExitCode
from tests.support import hub_cli, hub_process, wait_until


def assert_usage_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Exit 2, and stderr is one line, no traceback, naming each of `named`; returns that line."""
    returncode, stderr = result.returncode, result.stderr
    assert returncode == ExitCode.USAGE, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for name in named:
        assert name in lines[0], lines[0]
    return str(lines[0])


def test_a_taken_metrics_port_names_the_port_and_a_standby_on_the_same_machine_runs_with_port_zero(
    stack: Settings, tmp_path: Path
) -> None:
    with socket.socket() as holder:  # another hub's /metrics
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        refused = hub_cli(stack, "run", "--only", "commands", "--metrics-port", str(taken), timeout_s=120)
        assert_usage_error(refused, f"port {taken}", "--metrics-port", "IOT_METRICS_PORT")
        with hub_process(stack, tmp_path, "--only", "commands", "--metrics-port", "0"):
            [log] = tmp_path.glob("hub-*.log")
            found = wait_until(lambda: "event=http_listening port=" in log.read_text())
            port = int(log.read_text().split("event=http_listening port=")[1].split()[0])
            assert found and port not in (0, taken)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=10) as response:
                assert response.status == 200


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--metrics-port", "70000"], {}, ["IOT_METRICS_PORT", "65535"]),
        ([], {"IOT_AMQP_URL": "amqp://hub:s3cret@127.0.0.1:56x72/iot"}, ["IOT_AMQP_URL", "port"]),
        ([], {"IOT_MQTT_PORT": "99999"}, ["IOT_MQTT_PORT", "65535"]),
    ],
)
def test_a_setting_that_cannot_work_stops_the_hub_before_it_starts(
    stack: Settings, args: list[str], env: dict[str, Any], named: list[str]
) -> None:
    line = assert_usage_error(hub_cli(stack, "run", *args, **env), *named)
    assert "s3cret" not in line


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"rules:\n  - {name: hot, type: threshold, sensor: t, above: .nan}\n", ["'hot'", "$.above", "nan"]),
        ("rules:\n  - {name: hot, type: threshold, sensor: t, above: 1, message: à}\n".encode("latin-1"), ["UTF-8"]),
    ],
)
def test_a_rules_file_with_nan_or_not_utf8_stops_the_hub_naming_the_file(
    stack: Settings, tmp_path: Path, content: bytes, named: list[str]
) -> None:
    rules = tmp_path / "bad-rules.yaml"
    rules.write_bytes(content)
    assert_usage_error(hub_cli(stack, "run", "--rules-file", str(rules)), str(rules), *named)


@pytest.mark.parametrize("out", ["malformed.json", "a-file/fleet.json"])
def test_provision_out_to_a_file_it_cannot_keep_refuses_before_creating_the_account(
    stack: Settings, tmp_path: Path, out: str
) -> None:
    (tmp_path / "malformed.json").write_text('{"not": "credentials"}')
    (tmp_path / "a-file").write_text("")
    device = f"misuse-{out.split('.')[0].replace('/', '-')}"
    result = hub_cli(stack, "provision", device, "--out", str(tmp_path / out))
    assert_usage_error(result, str(tmp_path / out))
    assert device not in ManagementAdmin(stack).user_names(), "no account whose secret nobody could keep"
    assert result.stdout == "", "no secret printed either: none was made"


def test_an_iot_variable_that_is_no_setting_is_a_warning_naming_the_nearest_and_the_command_runs(
    stack: Settings,
) -> None:
    result = hub_cli(stack, "commands", "--json", IOT_INFLUX_ULR="http://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    assert "IOT_INFLUX_ULR is not a setting and is ignored; did you mean IOT_INFLUX_URL?" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_cli_command_refuses_a_device_port_out_of_range(stack: Settings) -> None:
    assert_usage_error(hub_cli(stack, "devices", IOT_STOMP_PORT="0"), "IOT_STOMP_PORT", "65535")
