"""The command history: one row per command from what the hub recorded in `commands`.

Every command has a `sent` point and, once it is settled, one outcome point (ok, error,
unsupported, expired, timeout), joined here by the command's `id`, read back through the outputs'
reader. `build_history` is the plain core; `read_history` only fetches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hub.core.config import Settings
from hub.core.contract import require_identifier
from hub.outputs.registry import open_reader

#: How many commands the history shows unless told otherwise.
DEFAULT_LIMIT = 20
#: Points read at most per query (two per command).
MAX_POINTS = 10_000


@dataclass(frozen=True)
class CommandRecord:
    id: str
    device: str
    command: str
    origin: str
    #: Epoch ms the command was sent (its own `ts`), or None when only its outcome is known.
    sent_at: int | None
    #: `queued` (waiting for its device, `send --ttl`) or `sent` until an outcome is recorded.
    status: str
    rtt_ms: float | None = None
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "command": self.command,
            "origin": self.origin,
            "sent_at": self.sent_at,
            "status": self.status,
            "rtt_ms": self.rtt_ms,
            "detail": self.detail,
        }


def build_history(rows: Iterable[dict[str, Any]], limit: int = DEFAULT_LIMIT) -> list[CommandRecord]:
    """The newest `limit` commands, newest first, from `commands` rows (time, id, device, status, ...)."""
    sent: dict[str, dict[str, Any]] = {}
    queued: dict[str, dict[str, Any]] = {}
    outcome: dict[str, dict[str, Any]] = {}
    for row in rows:
        status = row.get("status")
        target = sent if status == "sent" else queued if status == "queued" else outcome
        target.setdefault(str(row.get("id")), row)
    records = []
    for command_id in dict.fromkeys([*sent, *queued, *outcome]):
        first, last = sent.get(command_id) or queued.get(command_id), outcome.get(command_id)
        any_row = first or last or {}
        records.append(
            CommandRecord(
                id=command_id,
                device=str(any_row.get("device", "")),
                command=str((first or any_row).get("command", "")),
                origin=str(any_row.get("origin", "")),
                sent_at=int(first["time"]) if first else None,
                status=str(last["status"]) if last else "sent" if command_id in sent else "queued",
                rtt_ms=float(last["rtt_ms"]) if last and last.get("rtt_ms") is not None else None,
                detail=str(last.get("detail") or "") if last else "",
            )
        )
    records.sort(key=lambda r: r.sent_at if r.sent_at is not None else 0, reverse=True)
    return records[:limit]


def read_history(
    settings: Settings, limit: int = DEFAULT_LIMIT, device: str | None = None, since_s: int = 86_400
) -> list[CommandRecord]:
    """The newest `limit` commands of the last `since_s`, read back through the outputs' reader."""
    if device is not None:
        require_identifier(device, "device")
    reader = open_reader(settings)
    try:
        return build_history(reader.commands(since_s, device=device, limit=MAX_POINTS), limit)
    finally:
        reader.close()
