"""The commands `commands` recorded as settled: what a restarted commands service remembers.

A command still open lives on in queue `hub.commands` (its delivery unacked) and reaches the
restarted hub again; a settled one does not. Without this, a repeated or late ack of a command
answered (or timed out) before the restart would look like an ack of no command and be refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hub.clients.influx import Series, query
from hub.core.config import Settings
from hub.core.contract import is_identifier
from hub.core.errors import StorageUnavailable
from hub.services.commands.ledger import MAX_SETTLED, Key

log = logging.getLogger(__name__)

#: How far back settled commands are remembered at start. A device gets a command at most 10
#: minutes after it was sent (the `device-sessions` policy) and answers it then, so an ack
#: comes within minutes; an hour leaves room for devices that buffer their acks offline.
SETTLED_MEMORY_S = 3_600

SETTLED_QUERY = (
    f'SELECT "id", "device" FROM "commands" WHERE "status" != \'sent\' AND time > now() - {SETTLED_MEMORY_S}s '
    f"ORDER BY time DESC LIMIT {MAX_SETTLED}"
)


def settled_from_series(series: Iterable[Series]) -> list[Key]:
    """(command id, device) of each outcome row, oldest first (the ledger keeps the newest)."""
    keys = [
        (str(row.get("id") or ""), str(row.get("device") or one.tags.get("device") or ""))
        for one in series
        for row in one.rows
    ]
    return [(command_id, device) for command_id, device in reversed(keys) if command_id and is_identifier(device)]


def settled_commands(settings: Settings) -> list[Key]:
    """Commands settled in the last `SETTLED_MEMORY_S`, or none when InfluxDB is not an output or does not answer."""
    if not any(name.strip().startswith("influxdb") for name in settings.outputs.split(",")):
        return []
    try:
        [series] = query(settings, SETTLED_QUERY)
    except (StorageUnavailable, OSError) as exc:
        log.warning("service=commands event=no_settled_commands error=%r", exc)
        return []
    return settled_from_series(series)
