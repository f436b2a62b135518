"""What the fault drills check in InfluxDB and the broker after each drill: the evidence, counted."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from hub.clients.amqp import connect
from hub.clients.influx import query
from hub.control.audit import SeqAudit, audit_seqs, command_records, correctly_recorded
from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_QUEUE

SETTLE_POLL_S = 0.5


@dataclass(frozen=True)
class ReadingTally:
    produced: int
    stored: int
    missing: int
    duplicated: int


def tally(audits: dict[str, SeqAudit], produced: dict[str, int]) -> ReadingTally:
    """Readings 1..produced[d] of every device: stored, missing (gaps and an unstored tail), stored twice."""
    stored = missing = duplicated = 0
    for device, n in produced.items():
        audit = audits.get(device)
        if audit is None:
            missing += n
            continue
        stored += audit.distinct - max(0, audit.last - n)  # readings taken after the count began are not counted
        # A device's seq runs 1, 2, 3 …: what lies below the highest stored and is absent is lost.
        missing += max(audit.last, n) - audit.distinct
        duplicated += audit.duplicated
    return ReadingTally(sum(produced.values()), stored, missing, duplicated)


def missing_seqs(
    settings: Settings, site: str, produced: dict[str, int], audits: dict[str, SeqAudit]
) -> dict[str, list[int]]:
    """For the devices with a gap: which of their readings 1..produced[d] are not stored."""
    found = {}
    for device, n in produced.items():
        audit = audits.get(device)
        if audit is not None and max(audit.last, n) == audit.distinct:
            continue
        [series] = query(settings, f'SELECT "seq" FROM /.*/ WHERE "site" = \'{site}\' AND "device" = \'{device}\'')
        stored = {int(row["seq"]) for one in series for row in one.rows}
        found[device] = [seq for seq in range(1, n + 1) if seq not in stored]
    return found


def settle_readings(settings: Settings, site: str, produced: dict[str, int], timeout_s: float) -> ReadingTally:
    """Wait (bounded) until readings 1..produced[d] of every device are stored, then count.

    Not merely until the newest is: after a restart readings are stored out of order (a device
    re-sends its unconfirmed ones while the broker hands back what the hub held), so a gap can
    still be on its way.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        audits = audit_seqs(settings, site)
        counted = tally(audits, produced)
        complete = all(d in audits and audits[d].last >= n for d, n in produced.items() if n)
        if (complete and not counted.missing) or time.monotonic() > deadline:
            return counted
        time.sleep(SETTLE_POLL_S)


def settle_commands(settings: Settings, ids: Iterable[str], since_ms: int, timeout_s: float) -> int:
    """Wait (bounded) until every command in `ids` is correctly recorded; how many are."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        records = command_records(settings, since_ms)
        good = sum(correctly_recorded(records.get(i, [])) for i in wanted)
        if good == len(wanted) or time.monotonic() > deadline:
            return good
        time.sleep(SETTLE_POLL_S)


def offline_rows(settings: Settings, site: str, since_ms: int) -> dict[str, list[str]]:
    """Offline transitions in `device_status` since `since_ms`, per device: "<reason> at +<s since>"."""
    [series] = query(
        settings,
        f'SELECT "device", "reason" FROM "device_status" WHERE "site" = \'{site}\' '
        f"AND \"state\" = 'offline' AND time >= {since_ms}ms",
    )
    rows: dict[str, list[str]] = defaultdict(list)
    for one in series:
        for row in one.rows:
            rows[str(row["device"])].append(f"{row['reason']} at +{(int(row['time']) - since_ms) / 1000:.1f} s")
    return rows


def dead_lettered(settings: Settings) -> int:
    """Messages waiting in the dead-letter queue now."""
    connection = connect(settings, "chaos-audit")
    try:
        return int(connection.channel().queue_declare(DEAD_LETTER_QUEUE, passive=True).method.message_count)
    finally:
        connection.close()


def fresh_reading_stored(settings: Settings, site: str, since_ms: int) -> bool:
    """A reading the devices took at or after `since_ms` is queryable."""
    [series] = query(settings, f'SELECT count("seq") FROM /.*/ WHERE "site" = \'{site}\' AND time >= {since_ms}ms')
    return any(value for one in series for row in one.rows for key, value in row.items() if key != "time")
