"""`python -m hub send` checks arguments against the device models before it contacts anything,
and its help lists the models' commands: run as a user runs it, with no broker listening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hub.core.exit_codes import ExitCode
from hub.stack.processes import free_port
from tests.support import REPO


def hub_send(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    nowhere = f"amqp://hub:x@127.0.0.1:{free_port()}/iot"
    return subprocess.run(
        [sys.executable, "-m", "hub", "send", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "IOT_AMQP_URL": nowhere, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_argument_out_of_its_declared_range_is_a_usage_error_naming_the_range() -> None:
    result = hub_send("th-0001", "set_setpoint", "value=99")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr == "error: set_setpoint: argument 'value' must be a number from 5 to 35 (got 99)\n"
    assert result.stdout == ""


def test_good_arguments_get_as_far_as_the_broker() -> None:
    result = hub_send("th-0001", "set_setpoint", "value=21.5")
    assert result.returncode == ExitCode.BROKER_UNREACHABLE, result.stderr


def test_the_help_lists_the_commands_of_the_models_and_of_the_extension_file(tmp_path: Path) -> None:
    extra = tmp_path / "tank.yaml"
    extra.write_text(
        "kinds:\n  tank:\n    prefix: tank\n    sensors: {level: {unit: '%', type: number, range: [0, 100]}}\n"
        "    commands:\n      set_pump: {args: {speed: {type: integer, minimum: 0, maximum: 3}}, required: [speed]}\n"
    )
    shipped = hub_send("--help").stdout
    assert "set_setpoint value=NUMBER" in shipped and "thermostat — value: a number from 5 to 35" in shipped
    assert "set_interval ms=INTEGER" in shipped and "set_pump" not in shipped
    extended = hub_send("--help", IOT_MODELS_FILE=str(extra)).stdout
    assert "set_pump speed=INTEGER" in extended and "tank — speed: an integer from 0 to 3" in extended
    refused = hub_send("tank-0001", "set_pump", "speed=9", IOT_MODELS_FILE=str(extra))
    assert refused.returncode == ExitCode.USAGE and "from 0 to 3 (got 9)" in refused.stderr
