"""What InfluxDB holds of each device's readings and of each command: the evidence that nothing was lost or doubled.

A device numbers its readings 1, 2, 3, … (`seq`, see docs/contract.md). A redelivered reading
is the same point (measurement, tags, timestamp) and is stored once, so per device `count`
equal to `distinct` means no reading was stored twice under two timestamps, and `distinct`
equal to the number the device produced means none is missing. Fault drills and tests use it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hub.clients.influx import query
from hub.core.config import Settings
from hub.core.contract import require_identifier


@dataclass(frozen=True)
class SeqAudit:
    """One device's stored readings: how many points, how many distinct `seq`, the lowest and highest."""

    count: int
    distinct: int
    first: int
    last: int

    def missing(self, produced: int) -> int:
        """Readings 1..`produced` not stored (a device's `seq` starts at 1)."""
        return max(0, produced - self.distinct)

    @property
    def duplicated(self) -> int:
        """Points stored beyond one per `seq` (the same reading stored under two timestamps)."""
        return self.count - self.distinct


def audit_seqs(settings: Settings, site: str) -> dict[str, SeqAudit]:
    """Per device of `site`: its readings stored in every kind's measurement, audited by `seq`.

    The aggregates are cheap, but InfluxDB 1.6's `count()` was seen to exceed `count(distinct())`
    for a while after points were written again (a hub killed mid-batch redelivers them), and to
    agree again later: a device whose aggregates show a gap or a double is counted again from its
    raw points.
    """
    audits = _aggregate_audits(settings, site)
    for device, audit in audits.items():
        if audit.count != audit.distinct or audit.distinct != audit.last - audit.first + 1:
            audits[device] = _raw_audit(settings, site, device)
    return audits


def _raw_audit(settings: Settings, site: str, device: str) -> SeqAudit:
    [series] = query(
        settings,
        f'SELECT "seq" FROM /.*/ WHERE "site" = \'{site}\' AND "device" = \'{require_identifier(device, "device")}\'',
    )
    seqs = [int(row["seq"]) for one in series for row in one.rows if row.get("seq") is not None]
    return SeqAudit(len(seqs), len(set(seqs)), min(seqs, default=0), max(seqs, default=0))


def _aggregate_audits(settings: Settings, site: str) -> dict[str, SeqAudit]:
    where = f"\"site\" = '{require_identifier(site, 'site')}'"
    [series] = query(
        settings,
        'SELECT count("seq"), count(distinct("seq")), min("seq"), max("seq") '
        f'FROM /.*/ WHERE {where} GROUP BY "device"',
    )
    audits: dict[str, SeqAudit] = {}
    for one in series:
        device = one.tags.get("device", "")
        for row in one.rows:
            values = list(row.values())[1:]  # time, then the four aggregates in order
            if len(values) == 4 and values[0]:
                audits[device] = SeqAudit(*(int(v) for v in values))
    return audits


#: Outcomes that settle a command in `commands` (besides its one `sent`).
COMMAND_OUTCOMES = frozenset({"ok", "error", "unsupported", "expired", "timeout"})


def command_records(settings: Settings, since_ms: int) -> dict[str, list[str]]:
    """The statuses recorded in `commands` per command id since `since_ms`."""
    [series] = query(settings, f'SELECT "id", "status" FROM "commands" WHERE time >= {since_ms}ms')
    records: dict[str, list[str]] = defaultdict(list)
    for one in series:
        for row in one.rows:
            records[str(row["id"])].append(str(row["status"]))
    return records


def correctly_recorded(statuses: list[str]) -> bool:
    """Exactly one `sent` and exactly one outcome: a command neither lost, nor pending, nor doubled."""
    return len(statuses) == 2 and statuses.count("sent") == 1 and any(s in COMMAND_OUTCOMES for s in statuses)
