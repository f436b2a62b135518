"""What the store does with a reading its kind's model does not expect (the models file decides).

- a sensor of the wrong type (a boolean where a number is declared, or the reverse): dead-lettered
  as `sensor_type`, since InfluxDB would refuse the field's type anyway;
- an undeclared kind or sensor: stored by default, counted, and logged once per (kind, sensor);
  with IOT_UNKNOWN_SENSORS=dead_letter, dead-lettered as `unknown_kind` / `unknown_sensor`;
- a value outside its plausible range: stored and flagged (devices do read out of range, and
  that is data), and counted.
"""

from __future__ import annotations

import logging
from typing import Literal

from hub.core.contract import Reading
from hub.core.errors import InvalidMessage
from hub.core.models import DeviceModels
from hub.runtime.metrics import READINGS_FLAGGED

log = logging.getLogger(__name__)

UnknownSensors = Literal["store", "dead_letter"]


class ReadingJudge:
    def __init__(self, models: DeviceModels, unknown_sensors: UnknownSensors = "store") -> None:
        self.models = models
        self.unknown_sensors = unknown_sensors
        #: (kind, sensor) pairs already logged as undeclared ("*" for a whole undeclared kind).
        self.logged: set[tuple[str, str]] = set()

    def out_of_range(self, reading: Reading) -> tuple[str, ...]:
        """The sensors to flag as out of range; raises `InvalidMessage` for a reading to refuse."""
        check = self.models.check(reading)
        if check.clean:
            return ()
        if check.wrong_type:
            raise InvalidMessage(
                "sensor_type",
                f"{reading.kind} declares {', '.join(check.wrong_type)} with the other type (number vs boolean)",
            )
        if check.unknown_kind:
            self._undeclared(reading.kind, ("*",), "unknown_kind", f"kind {reading.kind!r} is not in the models")
        elif check.unknown_sensors:
            self._undeclared(
                reading.kind,
                check.unknown_sensors,
                "unknown_sensor",
                f"{reading.kind} declares no {', '.join(check.unknown_sensors)}",
            )
        if check.out_of_range:
            READINGS_FLAGGED.labels("out_of_range").inc()
        return check.out_of_range

    def _undeclared(self, kind: str, sensors: tuple[str, ...], reason: str, detail: str) -> None:
        if self.unknown_sensors == "dead_letter":
            raise InvalidMessage(reason, detail)
        READINGS_FLAGGED.labels(reason).inc()
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
