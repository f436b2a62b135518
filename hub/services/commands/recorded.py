"""The commands `commands` recorded as settled: what a restarted commands service remembers.

A command still open lives on in queue `hub.commands` (its delivery unacked) and reaches the
restarted hub again; a settled one does not. Without this, a repeated or late ack of a command
answered (or timed out) before the restart would look like an ack of no command and be refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from hub.core.contract import is_identifier
from hub.core.errors import StorageUnavailable, Unreadable
from hub.outputs.base import Reader
from hub.services.commands.ledger import MAX_SETTLED, Key

log = logging.getLogger(__name__)

#: How far back settled commands are remembered at start. A device gets a command at most 10
#: minutes after it was sent (the `device-sessions` policy) and answers it then, so an ack
#: comes within minutes; an hour leaves room for devices that buffer their acks offline.
SETTLED_MEMORY_S = 3_600


def settled_from_rows(rows: Iterable[dict[str, Any]]) -> list[Key]:
    """(command id, device) of each outcome row given newest first, returned oldest first (the
    ledger keeps the newest)."""
    keys = [(str(row.get("id") or ""), str(row.get("device") or "")) for row in rows]
    return [(command_id, device) for command_id, device in reversed(keys) if command_id and is_identifier(device)]


def settled_commands(reader: Reader) -> list[Key]:
    """Commands settled in the last `SETTLED_MEMORY_S`; none, said in one log line, when the outputs
    cannot be read back (jsonl) or do not answer now."""
    try:
        rows = reader.commands(SETTLED_MEMORY_S, outcomes_only=True, limit=MAX_SETTLED)
    except Unreadable as exc:
        log.warning("service=commands event=no_settled_commands reason=unreadable detail=%r", str(exc))
        return []
    except (StorageUnavailable, OSError) as exc:
        log.warning("service=commands event=no_settled_commands error=%r", exc)
        return []
    return settled_from_rows(rows)
