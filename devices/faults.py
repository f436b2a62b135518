"""Sensor faults for analytics to find: spikes, stuck sensors and dropouts.

`FaultInjector.apply` takes one sample and returns it altered, or None for a dropout (the
device stays online but sends nothing, so `seq` does not move). With `rate` 0 it changes
nothing and draws no random numbers, so a fault-free run is the same with or without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from devices.models import SampleValues

#: How far a spike throws a reading, as a multiple of the value (or this absolute amount near zero).
SPIKE_FACTOR = 2.5
SPIKE_MIN_JUMP = 25.0
#: A stuck sensor repeats its last value for this many readings (inclusive range).
STUCK_READINGS = (10, 40)
#: A dropout silences the device for this many readings (inclusive range).
DROPOUT_READINGS = (5, 20)
FAULT_KINDS = ("spike", "stuck", "dropout")
#: Settings, not measurements: a fault on them would be invisible.
NOT_SENSED = frozenset({"setpoint"})
#: Counters never spike: a reading that jumped up and came back would make them run backwards.
NO_SPIKE_SENSORS = frozenset({"energy"})


@dataclass
class FaultCounts:
    spike: int = 0
    stuck: int = 0
    dropout: int = 0


@dataclass
class FaultInjector:
    """Per-device faults: each reading starts a new fault with probability `rate`."""

    rng: random.Random
    rate: float = 0.0
    counts: FaultCounts = field(default_factory=FaultCounts)
    _stuck: dict[str, tuple[float, int]] = field(default_factory=dict)
    _silent_for: int = 0
    #: The fault the last `apply` started, if any: (its kind, the sensor or how many readings it silences).
    started: tuple[str, str] | None = None

    def apply(self, values: SampleValues) -> SampleValues | None:
        self.started = None
        if self._silent_for > 0:
            self._silent_for -= 1
            return None
        if self.rate > 0.0 and self.rng.random() < self.rate:
            fault = self.rng.choice(FAULT_KINDS)
            numeric = [n for n, value in values.items() if not isinstance(value, bool) and n not in NOT_SENSED]
            if fault == "dropout":
                self.counts.dropout += 1
                self._silent_for = self.rng.randint(*DROPOUT_READINGS) - 1
                self.started = ("dropout", str(self._silent_for + 1))
                return None
            if numeric and fault == "stuck":
                self.counts.stuck += 1
                name = self.rng.choice(numeric)
                self._stuck[name] = (float(values[name]), self.rng.randint(*STUCK_READINGS))
                self.started = ("stuck", name)
            elif spikeable := [name for name in numeric if name not in NO_SPIKE_SENSORS]:
                self.counts.spike += 1
                name = self.rng.choice(spikeable)
                value = float(values[name])
                jump = max(abs(value) * (SPIKE_FACTOR - 1.0), SPIKE_MIN_JUMP)
                values = {**values, name: round(value + self.rng.choice((-1.0, 1.0)) * jump, 2)}
                self.started = ("spike", name)
        if self._stuck:
            values = dict(values)
            for name, (value, left) in list(self._stuck.items()):
                values[name] = value
                if left <= 1:
                    del self._stuck[name]
                else:
                    self._stuck[name] = (value, left - 1)
        return values
