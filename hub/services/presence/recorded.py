"""What `device_status` last recorded for each device: where a restarted presence service starts from.

Without it a hub that was away would forget every device until it heard from it again: a
device that went silent meanwhile (a STOMP device has no last will) would stay online in
`device_status` for ever, and every streaming device would be recorded online a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from hub.clients.influx import Series
from hub.core.contract import is_identifier
from hub.core.errors import StorageUnavailable, Unreadable
from hub.outputs.base import Reader
from hub.services.presence.tracker import DevicePresence

log = logging.getLogger(__name__)


def states_from_series(series: Iterable[Series]) -> list[DevicePresence]:
    """One state per device from the newest `device_status` row of each (its time: the hub clock then)."""
    states = []
    for one in series:
        device = one.tags.get("device", "")
        for row in one.rows[:1]:
            if not all(is_identifier(str(row.get(name) or "")) for name in ("site", "kind")):
                continue
            protocol: Any = row.get("protocol") if row.get("protocol") in ("mqtt", "stomp", "amqp") else "mqtt"
            at = int(row["time"])
            states.append(
                DevicePresence(
                    device=device,
                    site=str(row["site"]),
                    kind=str(row["kind"]),
                    protocol=protocol,
                    interval_ms=int(row.get("interval_ms") or 0) or None,
                    fw=str(row.get("fw") or ""),
                    online=row.get("state") == "online",
                    last_seen_ms=at,
                    # What the device said before this row is older: a last will registered at its
                    # connect, or a reading queued before it went offline, is recognised as such.
                    last_device_ts=at,
                )
            )
    return [s for s in states if is_identifier(s.device)]


def recorded_states(reader: Reader) -> list[DevicePresence]:
    """The last recorded state of every device; none, said in one log line, when the outputs cannot
    be read back (jsonl) or do not answer now."""
    try:
        return states_from_series(reader.device_states())
    except Unreadable as exc:
        log.warning("service=presence event=no_recorded_states reason=unreadable detail=%r", str(exc))
    except (StorageUnavailable, OSError) as exc:
        log.warning("service=presence event=no_recorded_states error=%r", exc)
    return []
