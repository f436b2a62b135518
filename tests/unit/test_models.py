"""The device models file: what ships, how an extension file merges, what a broken file says,
and the checks the store, the CLI and the devices make with it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from devices.models import PHYSICS
from hub.core.config import load_settings
from hub.core.contract import Reading
from hub.core.errors import ConfigError
from hub.core.models import CLEAN, SHIPPED_MODELS_FILE, DeviceModels, default_models, load_models

#: 2026-11-23 00:00 UTC: a fixed day so the daily cycle is the same in every run.
MIDNIGHT_S = 1_795_392_000.0
DAY_S = 86_400.0
STEP_S = 60.0

PHYSICS_KINDS = {
    "environment": ("env", {"temperature": "°C", "humidity": "%RH", "pressure": "hPa"}),
    "air_quality": ("aq", {"co2": "ppm", "pm25": "µg/m³", "voc": "ppb", "ventilation": "on/off"}),
    "power_meter": ("pm", {"voltage": "V", "current": "A", "power": "W", "energy": "kWh", "relay": "on/off"}),
    "thermostat": ("th", {"temperature": "°C", "setpoint": "°C", "heating": "on/off"}),
}


def reading(kind: str, **values: float | bool) -> Reading:
    return Reading(device="dev-1", site="plant-a", kind=kind, seq=1, ts=1, readings=values)


def write(tmp_path: Path, text: str, name: str = "extra.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- what ships ------------------------------------------------------------------------------------


def test_the_shipped_file_declares_the_four_physics_kinds_as_the_code_has_them_and_vibration() -> None:
    models = load_models()
    assert list(models.kinds) == [*PHYSICS_KINDS, "vibration"]
    for kind, (prefix, units) in PHYSICS_KINDS.items():
        spec = models.kinds[kind]
        assert spec.prefix == prefix and spec.description
        assert {name: sensor.unit for name, sensor in spec.sensors.items()} == units
        assert all(sensor.is_boolean == (sensor.unit == "on/off") for sensor in spec.sensors.values())
    vibration = models.kinds["vibration"]
    assert vibration.prefix == "vib" and "vibration" not in PHYSICS
    assert {name: (s.unit, s.type) for name, s in vibration.sensors.items()} == {
        "rms": ("mm/s", "number"),
        "peak": ("mm/s", "number"),
    }
    assert list(models.common_commands) == ["ping", "set_interval", "reboot"]
    assert models.kinds["thermostat"].actuators == ("setpoint", "heating")
    assert SHIPPED_MODELS_FILE.name == "models.yaml" and default_models() is default_models()


@pytest.mark.parametrize("kind", sorted(PHYSICS))
def test_every_physics_model_emits_exactly_its_declared_sensors_in_range_over_a_day(kind: str) -> None:
    spec = default_models().kinds[kind]
    for seed in range(5):
        model = PHYSICS[kind](random.Random(seed), MIDNIGHT_S)
        t = MIDNIGHT_S
        while t < MIDNIGHT_S + DAY_S:
            t += STEP_S
            values = model.sample(t)
            assert list(values) == list(spec.sensors), f"{kind} at {t}"
            for name, value in values.items():
                sensor = spec.sensors[name]
                assert isinstance(value, bool) == sensor.is_boolean, f"{kind}.{name}={value!r}"
                if sensor.range is not None:
                    low, high = sensor.range
                    assert low <= value <= high, f"{kind}.{name}={value} outside {sensor.range} at {t}"
            assert default_models().check(reading(kind, **values)) is CLEAN


# --- an extension file -----------------------------------------------------------------------------


def test_an_extension_file_adds_a_kind_and_replaces_another(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        """
kinds:
  tank:
    prefix: tank
    description: a water tank
    sensors:
      level: {unit: "%", type: number, range: [0, 100]}
      pump: {unit: on/off, type: boolean}
    actuators: [pump]
    commands:
      set_pump:
        args: {"on": {type: boolean}}
        required: ["on"]
  thermostat:
    prefix: thermo
    description: a thermostat for a cold store
    sensors:
      temperature: {unit: °C, type: number, range: [-30, 10]}
      setpoint: {unit: °C, type: number, range: [-25, 5]}
      heating: {unit: on/off, type: boolean}
    actuators: [setpoint, heating]
    commands:
      set_setpoint:
        args: {value: {type: number, minimum: -25, maximum: 5}}
        required: [value]
""",
    )
    models = load_models(extra)
    assert list(models.kinds) == ["environment", "air_quality", "power_meter", "thermostat", "vibration", "tank"]
    assert models.kinds["tank"].sensors["level"].unit == "%"
    assert models.kinds_with_command("set_pump") == ("tank",)
    assert models.kinds["thermostat"].prefix == "thermo"
    models.validate_command("set_setpoint", {"value": -20})
    with pytest.raises(ConfigError, match="from -25 to 5"):
        models.validate_command("set_setpoint", {"value": 21})
    assert not models.check(reading("thermostat", temperature=21.0)).clean
    assert load_models().kinds["thermostat"].prefix == "th", "the shipped models are untouched"


def test_the_extension_file_comes_from_iot_models_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = write(
        tmp_path,
        "kinds:\n  tank:\n    prefix: tank\n    sensors: {level: {unit: '%', type: number, range: [0, 100]}}\n",
    )
    monkeypatch.setenv("IOT_MODELS_FILE", str(extra))
    monkeypatch.setenv("IOT_UNKNOWN_SENSORS", "dead_letter")
    settings = load_settings()
    assert settings.models_file == extra and settings.unknown_sensors == "dead_letter"
    assert "tank" in load_models(settings.models_file).kinds
    monkeypatch.setenv("IOT_UNKNOWN_SENSORS", "drop")
    with pytest.raises(ConfigError, match="IOT_UNKNOWN_SENSORS"):
        load_settings()


# --- a broken file ---------------------------------------------------------------------------------

_SENSORS = "    sensors: {a: {unit: u, type: number, range: [0, 1]}}\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kinds: [unclosed\n", "not valid YAML at line 2"),
        ("- a list\n", "Expected `object`, got `array`"),
        ("kinds:\n  Vib:\n    prefix: v\n" + _SENSORS, "kind name 'Vib' is not allowed"),
        ("kinds:\n  x:\n    prefix: 'a b'\n" + _SENSORS, "kind 'x': prefix 'a b' is not allowed"),
        ("kinds:\n  x:\n    prefix: env\n" + _SENSORS, "kinds 'environment' and 'x' share the prefix 'env'"),
        ("kinds:\n  x:\n    prefix: x\n    sensor: {}\n", "kind 'x': Object contains unknown field `sensor`"),
        ("kinds:\n  x:\n    prefix: x\n    sensors: {}\n", "kind 'x': declares no sensors"),
        (
            "kinds:\n  x:\n    prefix: x\n    sensors: {Temp: {unit: u, type: number, range: [0, 1]}}\n",
            "kind 'x': sensor 'Temp': the name is not allowed",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n    sensors: {seq: {unit: u, type: number, range: [0, 1]}}\n",
            "sensor 'seq': the name is reserved",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n    sensors: {a: {unit: u, type: number, range: [5, 1]}}\n",
            "kind 'x': sensor 'a': range must be [low, high] with finite low < high (got [5, 1])",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n    sensors: {a: {unit: u, type: number}}\n",
            "sensor 'a': a number needs its plausible range",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n    sensors: {a: {unit: u, type: integer, range: [0, 1]}}\n",
            "sensor 'a': Invalid enum value 'integer'",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n    sensors: {a: {unit: u, type: number, range: [0, 1], typical: [0, 2]}}\n",
            "typical [0, 2] must lie inside range [0, 1]",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n" + _SENSORS + "    commands: {go: {args: {speed: {type: fast}}}}\n",
            "kind 'x': command 'go': not a valid JSON Schema at speed.type",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n" + _SENSORS + "    commands: {go: {args: {on: {type: boolean}}}}\n",
            "quote YAML words like on, off",
        ),
        ("common_commands:\n  beep: {required: [volume]}\n", "command 'beep': required argument 'volume' is not"),
        (
            "kinds:\n  x:\n    prefix: x\n" + _SENSORS + "    commands: {ping: {}}\n",
            "kind 'x': command 'ping' is common to every kind already",
        ),
        (
            "kinds:\n  x:\n    prefix: x\n" + _SENSORS + "    commands: {set_setpoint: {args: {v: {type: number}}}}\n",
            "command 'set_setpoint' takes different arguments in kinds 'thermostat' and 'x'",
        ),
    ],
)
def test_a_broken_file_is_one_line_naming_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_models(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_a_missing_extension_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the device models: No such file"):
        load_models(tmp_path / "nope.yaml")


def test_an_empty_extension_file_changes_nothing(tmp_path: Path) -> None:
    assert load_models(write(tmp_path, "# nothing yet\n")) == load_models()


# --- checking a reading ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> DeviceModels:
    return default_models()


def test_a_normal_reading_is_clean_and_costs_no_allocation(models: DeviceModels) -> None:
    check = models.check(reading("power_meter", voltage=231.0, current=2.1, power=460.0, energy=812.5, relay=True))
    assert check is CLEAN and check.clean
    assert models.check(reading("vibration", rms=2.0)) is CLEAN, "a sensor left out is not a problem"


def test_check_names_an_unknown_kind(models: DeviceModels) -> None:
    check = models.check(reading("toaster", crispness=3.0))
    assert check.unknown_kind and check.unknown_sensors == ("crispness",) and not check.clean


def test_check_names_unknown_sensors_wrong_types_and_values_out_of_range(models: DeviceModels) -> None:
    check = models.check(
        reading("environment", temperature=True, humidity=140.0, pressure=1013.0, co2=400.0, flux_capacitor=1.21)
    )
    assert not check.unknown_kind
    assert check.unknown_sensors == ("co2", "flux_capacitor"), "co2 belongs to air_quality, not environment"
    assert check.wrong_type == ("temperature",)
    assert check.out_of_range == ("humidity",)
    assert models.check(reading("thermostat", heating=1.0)).wrong_type == ("heating",)
    assert models.check(reading("environment", temperature=-40.0, humidity=100.0)) is CLEAN, "bounds are inclusive"


def test_units_come_from_the_kind_then_from_the_fleet(models: DeviceModels) -> None:
    assert models.unit("pm25", "air_quality") == "µg/m³"
    assert models.unit("temperature") == "°C"
    assert models.unit("relay", "conflicts") == "on/off", "an unknown kind falls back to the fleet's unit"
    assert models.unit("flux_capacitor") == ""
    assert models.sensor_names("boolean") == ("heating", "relay", "ventilation")


# --- commands --------------------------------------------------------------------------------------


def test_commands_and_the_kinds_that_understand_them(models: DeviceModels) -> None:
    assert models.kinds_with_command("ping") == tuple(models.kinds)
    assert models.kinds_with_command("set_relay") == ("power_meter",)
    assert models.kinds_with_command("self_destruct") == ()
    setpoint = models.command("set_setpoint")
    assert setpoint is not None and setpoint.required == ("value",)
    assert setpoint.usage() == "set_setpoint value=NUMBER"
    assert models.command("self_destruct") is None


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("ping", {}),
        ("set_interval", {"ms": 100}),
        ("set_interval", {"ms": 3_600_000}),
        ("set_setpoint", {"value": 21.5}),
        ("set_setpoint", {"value": 5}),
        ("set_relay", {"on": False}),
        ("self_destruct", {"now": True}),
    ],
)
def test_validate_command_accepts_good_arguments_and_unknown_commands(
    models: DeviceModels, command: str, args: dict[str, bool | int | float | str]
) -> None:
    models.validate_command(command, args)


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("set_setpoint", {"value": 99}, "set_setpoint: argument 'value' must be a number from 5 to 35 (got 99)"),
        ("set_setpoint", {"value": "warm"}, "argument 'value' must be a number from 5 to 35 (got \"warm\")"),
        ("set_setpoint", {}, "set_setpoint needs argument 'value' (a number from 5 to 35)"),
        ("set_interval", {"ms": 50}, "argument 'ms' must be an integer from 100 to 3600000 (got 50)"),
        ("set_interval", {"ms": 150.5}, "an integer from 100 to 3600000"),
        ("set_relay", {"on": "yes"}, "argument 'on' must be true or false (got \"yes\")"),
        ("set_relay", {"on": True, "of": False}, "set_relay takes no argument 'of' (it takes on)"),
        ("ping", {"loud": True}, "ping takes no argument 'loud' (it takes no arguments)"),
    ],
)
def test_validate_command_refuses_arguments_that_break_the_schema_with_a_clear_message(
    models: DeviceModels, command: str, args: dict[str, bool | int | float | str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        models.validate_command(command, args)
    assert message in str(caught.value)
