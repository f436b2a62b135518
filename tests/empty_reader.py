"""A reader of the outputs that has recorded nothing (the read side's protocol, in memory): unit
tests subclass it and override what their case has stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.clients.influx import Series


class EmptyReader:
    name = "memory"

    def device_states(self) -> list[Series]:
        return []

    def twins(self) -> list[Series]:
        return []

    def rollouts(self) -> list[Series]:
        return []

    def newest_readings(self) -> list[Series]:
        return []

    def commands(self, since_s: int, **_filters: Any) -> list[dict[str, Any]]:
        return []

    def device_logs(
        self,
        since_s: int,
        *,
        devices: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        return []

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        return []

    def recent_readings(self, since_s: int, per_device: int) -> list[Series]:
        return []

    def last_alerts(self, since_s: int) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass
