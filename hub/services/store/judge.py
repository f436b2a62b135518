"""What the store does with a reading its kind's model does not expect (the models file decides).

- a sensor of the wrong type (a boolean where a number is declared, or the reverse): dead-lettered
  as `sensor_type`, since InfluxDB would refuse the field's type anyway;
- an undeclared kind or sensor: stored by default, flagged (counted), and logged once per (kind,
  sensor); with IOT_UNKNOWN_SENSORS=dead_letter, dead-lettered as `unknown_kind` / `unknown_sensor`;
- a value outside its plausible range: stored and flagged (devices do read out of range, and
  that is data).

The judge counts nothing itself: a `Verdict` names its flags, and the service that applies it
hands them on as events for the metrics (`hub_readings_flagged{reason}`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from hub.core.contract import Reading
from hub.core.errors import InvalidMessage
from hub.core.models import DeviceModels

log = logging.getLogger(__name__)

UnknownSensors = Literal["store", "dead_letter"]


@dataclass(frozen=True)
class Verdict:
    """A reading to store: the sensors to flag as out of range, and why it is flagged, if it is
    (`out_of_range`, `unknown_kind`, `unknown_sensor`)."""

    out_of_range: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


#: A reading its model expects in every way (nearly all of them).
CLEAN = Verdict()


class ReadingJudge:
    def __init__(self, models: DeviceModels, unknown_sensors: UnknownSensors = "store") -> None:
        self.models = models
        self.unknown_sensors = unknown_sensors
        #: (kind, sensor) pairs already logged as undeclared ("*" for a whole undeclared kind).
        self.logged: set[tuple[str, str]] = set()

    def verdict(self, reading: Reading) -> Verdict:
        """How to store `reading`; raises `InvalidMessage` for a reading to refuse."""
        check = self.models.check(reading)
        if check.clean:
            return CLEAN
        if check.wrong_type:
            raise InvalidMessage(
                "sensor_type",
                f"{reading.kind} declares {', '.join(check.wrong_type)} with the other type (number vs boolean)",
            )
        flags: tuple[str, ...] = ()
        if check.unknown_kind:
            flags = self._undeclared(
                reading.kind, ("*",), "unknown_kind", f"kind {reading.kind!r} is not in the models"
            )
        elif check.unknown_sensors:
            flags = self._undeclared(
                reading.kind,
                check.unknown_sensors,
                "unknown_sensor",
                f"{reading.kind} declares no {', '.join(check.unknown_sensors)}",
            )
        if check.out_of_range:
            flags += ("out_of_range",)
        return Verdict(check.out_of_range, flags)

    def out_of_range(self, reading: Reading) -> tuple[str, ...]:
        """The sensors to flag as out of range; raises `InvalidMessage` for a reading to refuse."""
        return self.verdict(reading).out_of_range

    def _undeclared(self, kind: str, sensors: tuple[str, ...], reason: str, detail: str) -> tuple[str, ...]:
        if self.unknown_sensors == "dead_letter":
            raise InvalidMessage(reason, detail)
        for sensor in sensors:
            if (kind, sensor) not in self.logged:
                self.logged.add((kind, sensor))
                log.warning(
                    "service=store event=undeclared reason=%s kind=%s sensor=%s action=stored "
                    "(declare it in IOT_MODELS_FILE, or IOT_UNKNOWN_SENSORS=dead_letter to refuse it)",
                    reason,
                    kind,
                    sensor,
                )
        return (reason,)
