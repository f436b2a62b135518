"""`python -m devices.sim` as a user runs it: flags, the summary table, a clean stop on --duration and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

from hub.core.config import Settings
from tests.support import REPO, Watcher, settings_environment, wait_until

ROOT = str(REPO)


def _sim(stack: Settings, *args: str) -> subprocess.Popen[str]:
    # The stack's settings: its listeners, its credentials file, its admin account for devices the file lacks.
    env = settings_environment(stack, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "devices.sim", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_timed_run_reports_both_protocols_and_leaves_every_device_offline(stack: Settings) -> None:
    watcher = Watcher(stack, "telemetry.plant-cli.#", "status.#")
    run = _sim(stack, "--count", "4", "--interval", "0.2", "--duration", "2", "--site", "plant-cli", "--seed", "5")
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 0, output
    for device in ("env-0001", "aq-0001", "pm-0001", "th-0001"):  # its readings are queued ahead of its offline
        watcher.wait_states(device, ["online", "offline"])
    watcher.close()
    assert "all 4 devices online" in output
    rows = {
        line.split()[0]: line.split()[1:] for line in output.splitlines() if line.split()[:1] in (["mqtt"], ["stomp"])
    }
    assert set(rows) == {"mqtt", "stomp"}
    for device in ("env-0001", "aq-0001", "pm-0001", "th-0001"):
        assert len(watcher.readings[device]) >= 5
    produced = sum(int(row[1].replace(",", "")) for row in rows.values())
    assert produced == sum(len(readings) for readings in watcher.readings.values())


def test_a_kind_declared_only_in_the_models_runs_with_generic_readings(stack: Settings) -> None:
    watcher = Watcher(stack, "telemetry.plant-vib.#")
    args = ("--kind", "vibration", "--count", "2", "--interval", "0.2", "--duration", "2", "--site", "plant-vib")
    run = _sim(stack, *args)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 0, output
    watcher.wait_readings_from(["vib-0001", "vib-0002"])
    watcher.close()
    for readings in watcher.readings.values():
        assert readings and all(set(r.readings) == {"rms", "peak"} and r.kind == "vibration" for r in readings)
    rows = [line.split()[0] for line in output.splitlines() if line.split()[:1] in (["mqtt"], ["stomp"])]
    assert sorted(rows) == ["mqtt", "stomp"], "mixed gives a lone kind both protocols"


def test_sigterm_stops_cleanly_with_devices_offline_and_exit_130(stack: Settings) -> None:
    watcher = Watcher(stack, "status.#")
    run = _sim(stack, "--count", "2", "--interval", "0.2", "--protocol", "stomp", "--site", "plant-term")
    assert run.stdout is not None
    wait_until(lambda: "online" in run.stdout.readline(), timeout_s=20)  # type: ignore[union-attr]
    for device in ("env-0001", "aq-0001"):
        watcher.wait_states(device, ["online"])
    run.send_signal(signal.SIGTERM)
    output, _ = run.communicate(timeout=30)
    assert run.returncode == 130, output
    assert "stopping" in output and "total" in output
    for device in ("env-0001", "aq-0001"):
        watcher.wait_states(device, ["online", "offline"])
    watcher.close()


def test_an_unknown_kind_is_refused_with_a_clear_message(stack: Settings) -> None:
    run = _sim(stack, "--kinds", "environment,toaster")
    output, _ = run.communicate(timeout=30)
    assert run.returncode == 2
    assert "toaster" in output and "thermostat" in output
