"""Device twins on the real stack: desired state reaches a device that is offline now, once per
change whatever the hub goes through, and a property the device refuses ends failed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devices.fleet import Fleet
from hub.clients.management import read_subscribed_devices
from hub.control.fleet_view import read_fleet
from hub.control.twin import read_twins
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.twin import Twin
from tests.support import REPO, fleet_credentials, hub_cli, hub_process, influx_query, settings_environment, wait_until

SITE = "plant-twins"
INTERVAL_S = 0.5
#: The issue's wait between the change and the device's start.
OFFLINE_S = 30.0


def twin_of(settings: Settings, device: str) -> Twin | None:
    return next((t for t in read_twins(settings) if t.device == device), None)


def twin_commands(settings: Settings, device: str, since_ms: int, status: str = "sent") -> list[str]:
    """Ids of the twin's commands to `device` the commands service recorded with `status` since then."""
    series = influx_query(
        settings,
        f"SELECT id FROM commands WHERE device = '{device}' AND origin = 'twin' AND status = '{status}'"
        f" AND time >= {since_ms}ms",
    )
    return [str(row[1]) for one in series for row in one["values"]]


def in_sync_with(settings: Settings, device: str, prop: str, value: float) -> bool:
    twin = twin_of(settings, device)
    return twin is not None and twin.in_sync and twin.desired.get(prop) == value and twin.reported.get(prop) == value


def seen_once(fleet: Fleet, settings: Settings, device: str) -> None:
    """The device runs until its twin exists (the fleet knows it), then stops cleanly: it is offline."""
    wait_until(lambda: twin_of(settings, device) is not None and twin_of(settings, device).online, 30)  # type: ignore[union-attr]
    fleet.stop_device(device, clean=True)
    wait_until(lambda: not twin_of(settings, device).online, 30)  # type: ignore[union-attr]


def test_desired_set_while_offline_is_reached_when_the_device_starts(stack: Settings, tmp_path: Path) -> None:
    start = now_ms()
    with (
        hub_process(stack, tmp_path),
        Fleet(stack, count=1, kinds=["thermostat"], site=SITE, interval_s=INTERVAL_S) as fleet,
    ):
        device = fleet.devices[0].device_id
        seen_once(fleet, stack, device)
        target = 23.0 if fleet.device(device).model.state()["setpoint"] != 23.0 else 22.0
        done = hub_cli(stack, "twin", "set", device, f"setpoint={target}")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: twin_of(stack, device).desired.get("setpoint") == target, 20)  # type: ignore[union-attr]
        shown = json.loads(hub_cli(stack, "twin", "show", device, "--json").stdout)
        assert shown["in_sync"] is False and shown["delta"] == {"setpoint": target}
        assert {"device", "desired", "reported", "delta", "in_sync", "version"} <= set(shown)
        time.sleep(OFFLINE_S)
        assert twin_commands(stack, device, start) == [], "nothing is sent to a device that is offline"
        fleet.start_device(device)
        wait_until(lambda: in_sync_with(stack, device, "setpoint", target), 60)
        assert fleet.device(device).model.state()["setpoint"] == target
        assert len(twin_commands(stack, device, start)) == 1
    diff = json.loads(hub_cli(stack, "twin", "diff", "--site", SITE, "--json").stdout)
    assert device not in [one["device"] for one in diff]
    fleet_rows = json.loads(hub_cli(stack, "devices", "--site", SITE, "--json").stdout)
    [row] = [one for one in fleet_rows if one["device"] == device]
    assert row["twin"]["in_sync"] is True and row["twin"]["pending"] == 0


def test_a_value_outside_the_range_is_refused_with_exit_2_naming_it(stack: Settings) -> None:
    done = hub_cli(stack, "twin", "set", "th-0001", "setpoint=40")
    assert done.returncode == 2
    assert "setpoint of a thermostat must be a number from 5 to 35 (got 40)" in done.stderr


def test_a_hub_sigkilled_with_a_delta_pending_converges_with_one_command_per_change(
    stack: Settings, tmp_path: Path
) -> None:
    start = now_ms()
    with Fleet(stack, count=2, kinds=["thermostat"], site=SITE, interval_s=INTERVAL_S) as fleet:
        device = fleet.devices[1].device_id
        with hub_process(stack, tmp_path):
            seen_once(fleet, stack, device)
            current = fleet.device(device).model.state()["setpoint"]
            first, second = (24.0, 25.0) if current not in (24.0, 25.0) else (19.0, 20.0)
            assert hub_cli(stack, "twin", "set", device, f"setpoint={first}").returncode == 0
            wait_until(lambda: twin_of(stack, device).desired.get("setpoint") == first, 20)  # type: ignore[union-attr]
            hub_cli(stack, "twin", "set", device, f"setpoint={second}")  # two changes while it is away
            wait_until(lambda: twin_of(stack, device).desired.get("setpoint") == second, 20)  # type: ignore[union-attr]
        with hub_process(stack, tmp_path) as hub:
            hub.kill()  # SIGKILL, the delta pending
            hub.wait()
        with hub_process(stack, tmp_path) as hub:
            fleet.start_device(device)
            wait_until(lambda: in_sync_with(stack, device, "setpoint", second), 60)
            time.sleep(2.0)  # what the twin stored after the ack is written
            hub.kill()
            hub.wait()
        with hub_process(stack, tmp_path):
            fleet.cut(device, for_s=1.0)  # and the device comes back once more: nothing left to send
            time.sleep(10.0)
            assert in_sync_with(stack, device, "setpoint", second)
        sent = twin_commands(stack, device, start)
        assert len(sent) == 1, sent
        assert fleet.device(device).model.state()["setpoint"] == second


MODELS_WITH_A_HEATER = """
kinds:
  environment:
    prefix: env
    sensors:
      temperature: {unit: °C, type: number, range: [-40, 85]}
      humidity: {unit: "%RH", type: number, range: [0, 100]}
      pressure: {unit: hPa, type: number, range: [300, 1100]}
    commands:
      set_heater:
        args:
          "on": {type: boolean}
        required: ["on"]
    properties:
      heater: {command: set_heater, arg: "on"}
"""


def test_a_property_the_device_does_not_support_ends_failed_and_is_not_retried(stack: Settings, tmp_path: Path) -> None:
    # The hub's models give environment devices a heater; the simulated ones know of no such command.
    models = tmp_path / "models.yaml"
    models.write_text(MODELS_WITH_A_HEATER)
    start = now_ms()
    with (
        hub_process(stack, tmp_path, IOT_MODELS_FILE=str(models)),
        Fleet(stack, count=1, kinds=["environment"], site=SITE, interval_s=INTERVAL_S) as fleet,
    ):
        device = fleet.devices[0].device_id
        wait_until(lambda: twin_of(stack, device) is not None and twin_of(stack, device).online, 30)  # type: ignore[union-attr]
        done = hub_cli(stack, "twin", "set", device, "heater=true", IOT_MODELS_FILE=str(models))
        assert done.returncode == 0, done.stderr
        wait_until(lambda: "heater" in twin_of(stack, device).failed, 30)  # type: ignore[union-attr]
        assert twin_of(stack, device).failed["heater"].startswith("unsupported")  # type: ignore[union-attr]
        fleet.cut(device, for_s=1.0)  # a return is no reason to try a refused property again
        time.sleep(10.0)
        assert len(twin_commands(stack, device, start)) == 1
        assert twin_commands(stack, device, start, "unsupported")
        diff = json.loads(hub_cli(stack, "twin", "diff", "--site", SITE, "--json").stdout)
        [mine] = [one for one in diff if one["device"] == device]
        assert mine["pending"]["heater"]["state"] == "failed"


def history(settings: Settings, device: str) -> dict[str, str]:
    """Command id -> state, as `hub commands --json` shows it."""
    done = hub_cli(settings, "commands", "--device", device, "--json", "--since", "600")
    assert done.returncode == 0, done.stderr
    return {row["id"]: row["status"] for row in json.loads(done.stdout)}


def test_a_command_with_a_ttl_waits_for_its_device_and_another_expires(stack: Settings, tmp_path: Path) -> None:
    with (
        hub_process(stack, tmp_path),
        Fleet(stack, count=2, kinds=["environment"], site=SITE, interval_s=INTERVAL_S) as fleet,
    ):
        device = fleet.devices[1].device_id
        seen_once(fleet, stack, device)
        wait_until(lambda: device not in read_subscribed_devices(stack), 20)  # type: ignore[operator]
        short = hub_cli(stack, "send", device, "set_interval", "ms=700", "--ttl", "3s", "--json")
        assert short.returncode == 0, short.stderr
        expiring = json.loads(short.stdout)
        assert expiring["status"] == "queued"
        waiting = subprocess.Popen(
            [sys.executable, "-m", "hub", "send", device, "ping", "--ttl", "1h", "--wait", "--json"],
            cwd=REPO,
            env=settings_environment(stack),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: history(stack, device).get(expiring["id"]) == "expired", 30, 1.0)
            wait_until(lambda: "queued" in history(stack, device).values(), 30, 1.0)
            assert waiting.poll() is None, "--wait waits for a device that is offline"
            fleet.start_device(device)
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, err
        answered = json.loads(out)
        assert answered["status"] == "ok" and answered["detail"] == "pong"
        wait_until(lambda: history(stack, device).get(answered["id"]) == "ok", 30, 1.0)
        assert fleet.device(device).interval_ms != 700, "the expired command was never carried out"


ROLLOUT_SITE = "plant-rollout"
#: The hub's models give environment devices a setpoint; the simulated ones answer `unsupported`.
MODELS_WITH_AN_ENVIRONMENT_SETPOINT = """
kinds:
  environment:
    prefix: env
    sensors:
      temperature: {unit: °C, type: number, range: [-40, 85]}
      humidity: {unit: "%RH", type: number, range: [0, 100]}
      pressure: {unit: hPa, type: number, range: [300, 1100]}
    commands:
      set_setpoint:
        args:
          value: {type: number, minimum: 5, maximum: 35}
        required: [value]
    properties:
      setpoint: {command: set_setpoint, arg: value}
"""


def rollout_view(settings: Settings, rollout: str, models: Path | None = None) -> dict[str, Any] | None:
    if models is None:
        done = hub_cli(settings, "rollouts", "--json")
    else:
        done = hub_cli(settings, "rollouts", "--json", IOT_MODELS_FILE=str(models))
    assert done.returncode == 0, done.stderr
    return next((one for one in json.loads(done.stdout) if one["id"] == rollout), None)


def rollout_ended(settings: Settings, rollout: str, models: Path) -> dict[str, Any] | None:
    view = rollout_view(settings, rollout, models)
    return view if view is not None and view["state"] != "running" else None


def test_a_rollout_stops_at_its_first_stage_when_those_devices_fail_and_one_without_failures_completes(
    stack: Settings, tmp_path: Path
) -> None:
    fleet_credentials(stack, 18, kinds=["thermostat"])
    models = tmp_path / "models.yaml"
    models.write_text(MODELS_WITH_AN_ENVIRONMENT_SETPOINT)
    env = {"IOT_MODELS_FILE": str(models)}
    with (
        hub_process(stack, tmp_path, **env),
        Fleet(stack, count=2, kinds=["environment"], site=ROLLOUT_SITE) as failing,
        Fleet(stack, count=18, kinds=["thermostat"], site=ROLLOUT_SITE) as thermostats,
    ):
        devices = [d.device_id for d in [*failing.devices, *thermostats.devices]]

        def all_here() -> bool:
            at_site = {view.device for view in read_fleet(stack) if view.site == ROLLOUT_SITE and view.online}
            online = {t.device for t in read_twins(stack) if t.online and t.site == ROLLOUT_SITE}
            return set(devices) <= at_site & online

        wait_until(all_here, 60, 1.0)
        value = 26.5
        rollout_args = ("--rollout", "10%,50%,100%", "--pause", "60s", "--abort-failures", "5%", "--json")
        first = hub_cli(
            stack,
            "twin",
            "set",
            "--site",
            ROLLOUT_SITE,
            f"setpoint={value}",
            *rollout_args,
            IOT_MODELS_FILE=str(models),
        )
        assert first.returncode == 0, first.stderr
        started = json.loads(first.stdout)
        assert started["devices"] == 20
        aborted = wait_until(lambda: rollout_ended(stack, started["rollout"], models), 90, 1.0)
        assert (aborted["state"], aborted["stage"], aborted["changed"], aborted["failed"]) == ("aborted", 1, 2, 2)
        assert all(d.model.state()["setpoint"] != value for d in thermostats.devices), "no later stage was changed"

        second = hub_cli(
            stack,
            "twin",
            "set",
            "--site",
            ROLLOUT_SITE,
            "--kind",
            "thermostat",
            f"setpoint={value}",
            *rollout_args,
            IOT_MODELS_FILE=str(models),
        )
        assert second.returncode == 0, second.stderr
        completed = wait_until(lambda: rollout_ended(stack, json.loads(second.stdout)["rollout"], models), 180, 1.0)
        assert (completed["state"], completed["changed"], completed["in_sync"], completed["failed"]) == (
            "completed",
            18,
            18,
            0,
        )
        assert all(d.model.state()["setpoint"] == value for d in thermostats.devices)


def test_a_change_of_a_site_s_kind_reaches_each_of_its_devices_as_one_bulk_rollout(
    stack: Settings, tmp_path: Path
) -> None:
    site = "plant-bulk"
    with (
        hub_process(stack, tmp_path),
        Fleet(stack, count=3, kinds=["power_meter"], site=site, interval_s=INTERVAL_S) as fleet,
    ):
        devices = [d.device_id for d in fleet.devices]
        wait_until(lambda: set(devices) <= {v.device for v in read_fleet(stack) if v.site == site and v.online}, 30)
        done = hub_cli(stack, "twin", "set", "--site", site, "--kind", "power_meter", "relay=false", "--json")
        assert done.returncode == 0, done.stderr
        [bulk] = json.loads(done.stdout)
        assert bulk["devices"] == 3

        def relays_off() -> bool:
            twins = {t.device: t for t in read_twins(stack)}
            return all(d in twins and twins[d].in_sync and twins[d].reported.get("relay") is False for d in devices)

        wait_until(relays_off, 60, 1.0)
        assert all(d.model.state()["relay"] is False for d in fleet.devices)
        wait_until(lambda: (rollout_view(stack, bulk["rollout"]) or {}).get("state") == "completed", 30, 1.0)
