"""The measurements the hub writes beside the devices' kinds (each kind is a measurement of its own)."""

from __future__ import annotations

from hub.core.contract import is_identifier

#: Presence's transitions (one writer: the presence service).
STATUS_MEASUREMENT = "device_status"
#: The rules' alerts.
ALERTS_MEASUREMENT = "alerts"
#: Alarms' transitions (one row per transition, and per trip while active: `updated`).
ALARMS_MEASUREMENT = "alarms"
#: Every command's lifecycle (`sent`, then one outcome).
COMMANDS_MEASUREMENT = "commands"
#: The devices' log lines (one writer: the logs service).
LOGS_MEASUREMENT = "device_logs"
#: Each device's twin, one row per change (one writer: the twin service).
TWINS_MEASUREMENT = "twins"
#: Each rollout's progress, one row per change (one writer: the twin service).
ROLLOUTS_MEASUREMENT = "rollouts"
#: The monitor's statistics of each service.
STATS_MEASUREMENT = "hub_stats"
HUB_MEASUREMENTS = frozenset(
    {
        STATUS_MEASUREMENT,
        ALERTS_MEASUREMENT,
        ALARMS_MEASUREMENT,
        COMMANDS_MEASUREMENT,
        STATS_MEASUREMENT,
        LOGS_MEASUREMENT,
        TWINS_MEASUREMENT,
        ROLLOUTS_MEASUREMENT,
    }
)


def is_kind_measurement(name: str) -> bool:
    """A measurement that holds a device kind's readings."""
    return name not in HUB_MEASUREMENTS and is_identifier(name)
