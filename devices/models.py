"""The physics of each device kind: believable readings from a daily cycle, slow drift and noise.

A model is a plain object with no I/O. It is driven by wall-clock time passed in (`now_s`,
Unix seconds), draws all randomness from the `random.Random` it was given (so a seed
reproduces a run), and integrates its state over the time elapsed since the previous sample,
so changing the reading rate does not change the physics. Actuator commands (`set_setpoint`,
`set_relay`, `set_ventilation`) change the state the next sample starts from.

What a kind is (its sensors, id prefix, commands and their argument ranges) is data in the
device models (`hub.core.models`); the device checks a command's arguments against them before
`actuate` applies its effect. Four kinds have physics here; any other kind of the models gets a
`GenericModel` (`make_model` picks).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from hub.core.contract import Scalar
from hub.core.models import KindSpec

SECONDS_PER_DAY = 86_400.0
#: Longest step integrated in one go; a longer gap (a reboot, a dropout) is integrated in pieces.
MAX_STEP_S = 60.0

SampleValues = dict[str, float | bool]


class CommandRefused(ValueError):
    """A command's arguments are wrong; the message becomes the ack's `detail`."""


def daily_wave(now_s: float, peak_hour: float) -> float:
    """-1..1 over a UTC day, 1 at `peak_hour`."""
    day_fraction = (now_s % SECONDS_PER_DAY) / SECONDS_PER_DAY
    return math.cos(2.0 * math.pi * (day_fraction - peak_hour / 24.0))


class Drift:
    """A slow random walk pulled back to zero (Ornstein-Uhlenbeck): sensors wander, but stay believable."""

    def __init__(self, rng: random.Random, sigma: float, time_constant_s: float) -> None:
        self._rng, self._sigma, self._tau = rng, sigma, time_constant_s
        self.value = 0.0

    def step(self, dt_s: float) -> float:
        decay = math.exp(-dt_s / self._tau)
        spread = self._sigma * math.sqrt(1.0 - decay * decay)
        self.value = self.value * decay + self._rng.gauss(0.0, spread)
        return self.value


def _bool_arg(command: str, args: Mapping[str, Scalar], name: str) -> bool:
    """The argument the physics needs (its range is the models' business, checked before `actuate`)."""
    value = args.get(name)
    if not isinstance(value, bool):
        raise CommandRefused(f"{command} needs argument {name!r}: true or false (got {value!r})")
    return value


def _number_arg(command: str, args: Mapping[str, Scalar], name: str) -> float:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandRefused(f"{command} needs argument {name!r}: a number (got {value!r})")
    return float(value)


class SensorModel(ABC):
    """One device kind's behaviour: its readings over time, its actuator state and command effects."""

    kind: str

    def __init__(self, rng: random.Random, start_s: float) -> None:
        self.rng = rng
        self._last_s = start_s

    def sample(self, now_s: float) -> SampleValues:
        """The readings at `now_s`, after integrating the state since the previous sample."""
        remaining = max(0.0, now_s - self._last_s)
        t = self._last_s
        while remaining > 0.0:
            dt = min(remaining, MAX_STEP_S)
            t += dt
            remaining -= dt
            self._advance(t, dt)
        self._last_s = max(self._last_s, now_s)
        return self._readings(now_s)

    def state(self) -> dict[str, Any]:
        """Actuator state (what an ack reports): empty unless the kind has actuators."""
        return {}

    def actuate(self, command: str, args: Mapping[str, Scalar]) -> None:
        raise CommandRefused(f"{self.kind} does not support {command}")

    @abstractmethod
    def _advance(self, now_s: float, dt_s: float) -> None: ...

    @abstractmethod
    def _readings(self, now_s: float) -> SampleValues: ...

    def _noise(self, sigma: float) -> float:
        return self.rng.gauss(0.0, sigma)


class Environment(SensorModel):
    """Indoor climate: temperature peaks mid-afternoon, humidity moves against it, pressure wanders."""

    kind = "environment"
    TEMPERATURE_BASE_C = 21.0
    TEMPERATURE_DAILY_AMPLITUDE_C = 2.5
    TEMPERATURE_PEAK_HOUR = 15.0
    HUMIDITY_BASE_RH = 45.0
    #: %RH lost per °C above the base (warmer air holds more water, relative humidity falls).
    HUMIDITY_PER_C = 2.0
    PRESSURE_BASE_HPA = 1013.25

    def __init__(self, rng: random.Random, start_s: float) -> None:
        super().__init__(rng, start_s)
        self._offset_c = rng.uniform(-1.5, 1.5)
        self._temperature_drift = Drift(rng, sigma=0.4, time_constant_s=3_600.0)
        self._humidity_drift = Drift(rng, sigma=4.0, time_constant_s=7_200.0)
        self._pressure_drift = Drift(rng, sigma=6.0, time_constant_s=6 * 3_600.0)

    def _advance(self, now_s: float, dt_s: float) -> None:
        self._temperature_drift.step(dt_s)
        self._humidity_drift.step(dt_s)
        self._pressure_drift.step(dt_s)

    def _readings(self, now_s: float) -> SampleValues:
        warmth = self.TEMPERATURE_DAILY_AMPLITUDE_C * daily_wave(now_s, self.TEMPERATURE_PEAK_HOUR)
        temperature = self.TEMPERATURE_BASE_C + self._offset_c + warmth + self._temperature_drift.value
        humidity = self.HUMIDITY_BASE_RH - self.HUMIDITY_PER_C * warmth + self._humidity_drift.value
        pressure = self.PRESSURE_BASE_HPA + self._pressure_drift.value
        return {
            "temperature": round(temperature + self._noise(0.05), 2),
            "humidity": round(min(100.0, max(0.0, humidity + self._noise(0.3))), 1),
            "pressure": round(pressure + self._noise(0.05), 2),
        }


class AirQuality(SensorModel):
    """A room with people in it during the working day: CO2 and VOC build up, ventilation clears them."""

    kind = "air_quality"
    OUTDOOR_CO2_PPM = 420.0
    BASE_VOC_PPB = 80.0
    #: CO2 and VOC added per second by a full room (ppm/s, ppb/s).
    CO2_SOURCE_PPM_S = 0.35
    VOC_SOURCE_PPB_S = 0.06
    #: Air change rate (per second) with the ventilation off (leaks) and on (~4 air changes an hour).
    AIR_CHANGE_OFF_PER_S = 1.0 / 3_600.0
    AIR_CHANGE_ON_PER_S = 4.0 / 3_600.0
    WORKDAY_START_HOUR, WORKDAY_END_HOUR = 7.0, 19.0

    def __init__(self, rng: random.Random, start_s: float) -> None:
        super().__init__(rng, start_s)
        self.ventilation = False
        self._co2 = self.OUTDOOR_CO2_PPM + rng.uniform(100.0, 500.0)
        self._voc = self.BASE_VOC_PPB + rng.uniform(20.0, 120.0)
        self._pm_drift = Drift(rng, sigma=4.0, time_constant_s=1_800.0)
        self._occupancy_scale = rng.uniform(0.6, 1.4)

    def occupancy(self, now_s: float) -> float:
        """0..1: how full the room is (a smooth working-day bump)."""
        hour = (now_s % SECONDS_PER_DAY) / 3_600.0
        if not self.WORKDAY_START_HOUR <= hour <= self.WORKDAY_END_HOUR:
            return 0.0
        span = self.WORKDAY_END_HOUR - self.WORKDAY_START_HOUR
        return math.sin(math.pi * (hour - self.WORKDAY_START_HOUR) / span) ** 2

    def _advance(self, now_s: float, dt_s: float) -> None:
        people = self.occupancy(now_s) * self._occupancy_scale
        exchange = self.AIR_CHANGE_ON_PER_S if self.ventilation else self.AIR_CHANGE_OFF_PER_S
        self._co2 += (self.CO2_SOURCE_PPM_S * people - exchange * (self._co2 - self.OUTDOOR_CO2_PPM)) * dt_s
        self._voc += (self.VOC_SOURCE_PPB_S * people - exchange * (self._voc - self.BASE_VOC_PPB)) * dt_s
        self._pm_drift.step(dt_s)

    def _readings(self, now_s: float) -> SampleValues:
        pm25 = 8.0 + 4.0 * daily_wave(now_s, 8.0) + self._pm_drift.value
        return {
            "co2": round(max(self.OUTDOOR_CO2_PPM - 30.0, self._co2 + self._noise(5.0)), 1),
            "pm25": round(max(0.5, pm25 + self._noise(0.4)), 1),
            "voc": round(max(0.0, self._voc + self._noise(2.0)), 1),
            "ventilation": self.ventilation,
        }

    def state(self) -> dict[str, Any]:
        return {"ventilation": self.ventilation}

    def actuate(self, command: str, args: Mapping[str, Scalar]) -> None:
        if command != "set_ventilation":
            super().actuate(command, args)
        self.ventilation = _bool_arg(command, args, "on")


class PowerMeter(SensorModel):
    """A metered load on a relay: office-hours profile, mains voltage, an energy counter that only rises."""

    kind = "power_meter"
    MAINS_VOLTAGE_V = 230.0
    POWER_FACTOR = 0.95
    NIGHT_LOAD_W = 250.0
    DAY_EXTRA_LOAD_W = 1_400.0
    #: What the meter itself still sees with the relay open (a few watts of standby, then zero).
    RELAY_OFF_LOAD_W = 0.0
    JOULES_PER_KWH = 3.6e6

    def __init__(self, rng: random.Random, start_s: float) -> None:
        super().__init__(rng, start_s)
        self.relay = True
        self._load_scale = rng.uniform(0.5, 1.5)
        self._energy_kwh = round(rng.uniform(100.0, 5_000.0), 3)
        self._voltage_drift = Drift(rng, sigma=2.0, time_constant_s=900.0)
        self._load_drift = Drift(rng, sigma=0.1, time_constant_s=600.0)

    def load_w(self, now_s: float) -> float:
        if not self.relay:
            return self.RELAY_OFF_LOAD_W
        day = max(0.0, daily_wave(now_s, 13.0))
        load = (self.NIGHT_LOAD_W + self.DAY_EXTRA_LOAD_W * day) * self._load_scale
        return max(0.0, load * (1.0 + self._load_drift.value))

    def _advance(self, now_s: float, dt_s: float) -> None:
        self._voltage_drift.step(dt_s)
        self._load_drift.step(dt_s)
        self._energy_kwh += self.load_w(now_s) * dt_s / self.JOULES_PER_KWH

    def _readings(self, now_s: float) -> SampleValues:
        voltage = self.MAINS_VOLTAGE_V + self._voltage_drift.value + self._noise(0.3)
        power = self.load_w(now_s)
        if power > 0.0:
            power = max(0.0, power + self._noise(power * 0.01))
        return {
            "voltage": round(voltage, 1),
            "current": round(power / (voltage * self.POWER_FACTOR), 3),
            "power": round(power, 1),
            "energy": round(self._energy_kwh, 4),
            "relay": self.relay,
        }

    def state(self) -> dict[str, Any]:
        return {"relay": self.relay}

    def actuate(self, command: str, args: Mapping[str, Scalar]) -> None:
        if command != "set_relay":
            super().actuate(command, args)
        self.relay = _bool_arg(command, args, "on")


class Thermostat(SensorModel):
    """A heated room: it loses heat to the outside, the heater (hysteresis control) drives it to the setpoint."""

    kind = "thermostat"
    DEFAULT_SETPOINT_C = 21.0
    #: Heating switches on below setpoint - band and off above setpoint + band.
    HYSTERESIS_C = 0.3
    #: How fast the heater warms the room (°C/s, ~1 °C a minute) and how fast the room cools (1/s).
    HEATING_RATE_C_S = 1.0 / 60.0
    LOSS_RATE_PER_S = 1.0 / 3_600.0
    OUTDOOR_MEAN_C, OUTDOOR_DAILY_AMPLITUDE_C = 8.0, 5.0

    def __init__(self, rng: random.Random, start_s: float) -> None:
        super().__init__(rng, start_s)
        self.setpoint = self.DEFAULT_SETPOINT_C
        self.heating = False
        self.temperature = self.setpoint + rng.uniform(-1.0, 1.0)

    def outdoor_c(self, now_s: float) -> float:
        return self.OUTDOOR_MEAN_C + self.OUTDOOR_DAILY_AMPLITUDE_C * daily_wave(now_s, 15.0)

    def _advance(self, now_s: float, dt_s: float) -> None:
        if self.temperature < self.setpoint - self.HYSTERESIS_C:
            self.heating = True
        elif self.temperature > self.setpoint + self.HYSTERESIS_C:
            self.heating = False
        loss = self.LOSS_RATE_PER_S * (self.temperature - self.outdoor_c(now_s))
        gain = self.HEATING_RATE_C_S if self.heating else 0.0
        self.temperature += (gain - loss) * dt_s

    def _readings(self, now_s: float) -> SampleValues:
        return {
            "temperature": round(self.temperature + self._noise(0.03), 2),
            "setpoint": self.setpoint,
            "heating": self.heating,
        }

    def state(self) -> dict[str, Any]:
        return {"setpoint": self.setpoint, "heating": self.heating}

    def actuate(self, command: str, args: Mapping[str, Scalar]) -> None:
        if command != "set_setpoint":
            super().actuate(command, args)
        self.setpoint = _number_arg(command, args, "value")


class GenericModel(SensorModel):
    """A kind declared only in the device models: every declared sensor, believable but without physics.

    A number wanders slowly (a random walk pulled back to the middle of its typical band) with a
    little noise, and never leaves its plausible range; a boolean holds for about an hour on
    average, then toggles. It reports its actuators' sensor values as state and has no command
    effects of its own.
    """

    #: How long a wander takes to be pulled back halfway to the middle of the band (roughly).
    WANDER_TIME_CONSTANT_S = 1_800.0
    #: Spread of the wander, as a fraction of the typical band's half width.
    WANDER_SPREAD = 0.35
    #: Reading noise, as a fraction of the typical band's half width.
    NOISE_SPREAD = 0.02
    #: A boolean holds its value this long on average before it toggles.
    MEAN_HOLD_S = 3_600.0
    DECIMALS = 3

    def __init__(self, spec: KindSpec, rng: random.Random, start_s: float) -> None:
        super().__init__(rng, start_s)
        self.kind = spec.name
        self._spec = spec
        self._wanders: dict[str, Drift] = {}
        self._switches: dict[str, bool] = {}
        for sensor in spec.sensors.values():
            if sensor.typical is None:
                self._switches[sensor.name] = rng.random() < 0.5
                continue
            half_width = (sensor.typical[1] - sensor.typical[0]) / 2.0
            drift = Drift(rng, sigma=half_width * self.WANDER_SPREAD, time_constant_s=self.WANDER_TIME_CONSTANT_S)
            drift.value = rng.gauss(0.0, half_width * self.WANDER_SPREAD)
            self._wanders[sensor.name] = drift

    def _advance(self, now_s: float, dt_s: float) -> None:
        toggle = 1.0 - math.exp(-dt_s / self.MEAN_HOLD_S)
        for drift in self._wanders.values():
            drift.step(dt_s)
        for name, on in self._switches.items():
            if self.rng.random() < toggle:
                self._switches[name] = not on

    def _readings(self, now_s: float) -> SampleValues:
        values: SampleValues = {}
        for sensor in self._spec.sensors.values():
            if sensor.typical is None or sensor.range is None:
                values[sensor.name] = self._switches[sensor.name]
                continue
            low, high = sensor.typical
            middle, half_width = (low + high) / 2.0, (high - low) / 2.0
            wandered = min(high, max(low, middle + self._wanders[sensor.name].value))
            value = wandered + self._noise(half_width * self.NOISE_SPREAD)
            values[sensor.name] = round(min(sensor.range[1], max(sensor.range[0], value)), self.DECIMALS)
        return values

    def state(self) -> dict[str, Any]:
        return {name: self._switches[name] for name in self._spec.actuators if name in self._switches}

    def actuate(self, command: str, args: Mapping[str, Scalar]) -> None:
        raise CommandRefused(f"the simulator has no effect for {command} on {self.kind} devices")


#: The kinds with physics of their own; every other kind of the device models is a `GenericModel`.
PHYSICS: dict[str, type[SensorModel]] = {m.kind: m for m in (Environment, AirQuality, PowerMeter, Thermostat)}
#: What the simulator runs unless told otherwise.
DEFAULT_KINDS: tuple[str, ...] = tuple(PHYSICS)


def make_model(spec: KindSpec, rng: random.Random, start_s: float) -> SensorModel:
    """The kind's physics when it has some, else a generic model of its declared sensors."""
    physics = PHYSICS.get(spec.name)
    return physics(rng, start_s) if physics is not None else GenericModel(spec, rng, start_s)
