"""How long InfluxDB keeps the hub's points, the roll-ups, and which resolution answers a time range.

Raw points live in the database's raw retention policy (IOT_INFLUX_RP, else InfluxDB's
`autogen`), kept IOT_RETENTION_RAW. Two continuous queries roll every measurement of it up into
1-minute and 1-hour buckets (`mean_<field>`, `min_<field>`, `max_<field>` of each numeric
field, the tags kept) in the policies `rollup_1m` and `rollup_1h`, kept IOT_RETENTION_1M and
IOT_RETENTION_1H. Everything here is plain values: `RetentionPlan.statements()` is the InfluxQL
that sets it up (the native stack and docker compose run the same), `pick_resolution` the choice
a reader makes for a range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The database's default retention policy on a new InfluxDB 1.x database: the raw points' unless IOT_INFLUX_RP.
DEFAULT_RAW_RP = "autogen"
ROLLUP_1M_RP = "rollup_1m"
ROLLUP_1H_RP = "rollup_1h"
#: A duration that never ends (InfluxQL's word for it).
FOREVER = "INF"
#: InfluxDB refuses a retention policy shorter than an hour.
MIN_RETENTION_S = 3_600
#: A reader asks the raw points for ranges up to this long, the 1-minute roll-up up to `MAX_1M_RANGE_S`.
MAX_RAW_RANGE_S = 6 * 3_600
MAX_1M_RANGE_S = 7 * 86_400
#: A continuous query recomputes its last buckets this long back at each run, so readings that arrive
#: late (a device's offline buffer) still reach the roll-ups; older ones: `hub stack retention --backfill`.
RESAMPLE_FOR = {ROLLUP_1M_RP: "10m", ROLLUP_1H_RP: "2h"}
#: How much of the raw points one backfill statement rolls up: a day into 1-minute buckets, 30 into hours.
BACKFILL_CHUNK_S = {ROLLUP_1M_RP: 86_400, ROLLUP_1H_RP: 30 * 86_400}
#: The aggregates each roll-up keeps of every numeric field: `<aggregate>_<field>`.
AGGREGATES = ("mean", "min", "max")

_UNIT_S = {"h": 3_600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
_DURATION = re.compile(r"^\s*(\d+)\s*([hdwy])\s*$", re.IGNORECASE)


class BadDuration(ValueError):
    """A retention that is not `<n>h|d|w|y` (at least an hour) nor INF."""


def parse_retention(text: str) -> int | None:
    """Seconds of `30d`, `12h`, `52w`, `1y` (365 days); None for INF (forever)."""
    if text.strip().upper() == FOREVER:
        return None
    match = _DURATION.match(text)
    if not match:
        raise BadDuration(f"{text!r} is not a duration like 30d, 12h, 52w, 1y or INF")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2).lower()]
    if seconds < MIN_RETENTION_S:
        raise BadDuration(f"{text!r} is shorter than InfluxDB's shortest retention, 1h")
    return seconds


_SPAN = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$", re.IGNORECASE)
_SPAN_UNIT_S = {"s": 1, "m": 60, **_UNIT_S}


def parse_span(text: str) -> int:
    """Seconds of a span of time asked on the command line: `90s`, `15m`, `6h`, `7d`, `2w`, `1y`."""
    match = _SPAN.match(text)
    if not match or int(match.group(1)) == 0:
        raise BadDuration(f"{text!r} is not a span like 15m, 6h, 7d, 2w or 1y")
    return int(match.group(1)) * _SPAN_UNIT_S[match.group(2).lower()]


_GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def go_duration_s(text: str) -> int | None:
    """Seconds of a duration as InfluxDB shows a policy's (`720h0m0s`); `0s` (forever) is None."""
    match = _GO_DURATION.match(text)
    if not match or not text:
        raise BadDuration(f"{text!r} is not a duration InfluxDB shows")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3_600 + minutes * 60 + seconds
    return total or None


def influx_duration(seconds: int | None) -> str:
    """InfluxQL's form of a retention: whole hours (InfluxQL has no years), or INF."""
    if seconds is None:
        return FOREVER
    return f"{seconds // 3_600}h"


def shard_duration(seconds: int | None) -> str:
    """The shard group duration InfluxDB itself picks for a retention (its documented defaults)."""
    if seconds is not None and seconds < 2 * 86_400:
        return "1h"
    if seconds is not None and seconds <= 183 * 86_400:
        return "1d"
    return "7d"


@dataclass(frozen=True)
class Resolution:
    """Where a reader finds a range's data: a retention policy and how its fields are named."""

    name: str
    rp: str
    #: The roll-up's bucket (0: raw points).
    bucket_s: int

    @property
    def raw(self) -> bool:
        return self.bucket_s == 0

    def field(self, sensor: str, aggregate: str = "mean") -> str:
        """A sensor's field: the sensor itself in the raw points, `<aggregate>_<sensor>` in a roll-up."""
        return sensor if self.raw else f"{aggregate}_{sensor}"


@dataclass(frozen=True)
class Rollup:
    rp: str
    bucket: str
    bucket_s: int


ROLLUPS = (Rollup(ROLLUP_1M_RP, "1m", 60), Rollup(ROLLUP_1H_RP, "1h", 3_600))


@dataclass(frozen=True)
class Statement:
    text: str
    #: Fails when there is nothing to do (the policy exists with other settings, the query does not
    #: exist yet): the statement after it does the work then, so the list runs blind on any state.
    may_fail: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """The retention policies and continuous queries of one database; durations in seconds, None: forever."""

    db: str
    raw_rp: str = DEFAULT_RAW_RP
    raw_s: int | None = 30 * 86_400
    rollup_1m_s: int | None = 365 * 86_400
    rollup_1h_s: int | None = None
    #: False where nothing makes roll-ups (InfluxDB 2.x/3.x through the v2 API): readers ask the raw points.
    rollups: bool = True

    @property
    def resolutions(self) -> tuple[tuple[Resolution, int | None], ...]:
        """Each resolution, finest first, with how long it is kept."""
        return (
            (Resolution("raw", self.raw_rp, 0), self.raw_s),
            (Resolution("1m", ROLLUP_1M_RP, 60), self.rollup_1m_s),
            (Resolution("1h", ROLLUP_1H_RP, 3_600), self.rollup_1h_s),
        )

    def policies(self) -> list[tuple[str, int | None, bool]]:
        """(name, retention, default) of each policy: the raw one is the database's default."""
        return [
            (self.raw_rp, self.raw_s, True),
            (ROLLUP_1M_RP, self.rollup_1m_s, False),
            (ROLLUP_1H_RP, self.rollup_1h_s, False),
        ]

    def statements(self) -> list[Statement]:
        """Idempotent on any state: a policy is created, else altered to these settings; a query is
        dropped and created again (its text may have changed). No point is touched. The roll-ups
        come first and the raw policy last, so history can be rolled up before its retention shrinks."""
        return self.rollup_statements() + self.raw_statements()

    def rollup_statements(self) -> list[Statement]:
        db = quote_identifier(self.db)
        out = [
            s for name, seconds, default in self.policies() if not default for s in self._policy(name, seconds, default)
        ]
        for rollup in ROLLUPS:
            name = quote_identifier(rollup.rp)
            out.append(Statement(f"DROP CONTINUOUS QUERY {name} ON {db}", may_fail=True))
            out.append(
                Statement(
                    f"CREATE CONTINUOUS QUERY {name} ON {db} RESAMPLE EVERY {rollup.bucket} FOR "
                    f"{RESAMPLE_FOR[rollup.rp]} BEGIN {self.rollup_select(rollup)} END"
                )
            )
        return out

    def raw_statements(self) -> list[Statement]:
        return self._policy(self.raw_rp, self.raw_s, True)

    def _policy(self, name: str, seconds: int | None, default: bool) -> list[Statement]:
        db = quote_identifier(self.db)
        settings = f"DURATION {influx_duration(seconds)} REPLICATION 1 SHARD DURATION {shard_duration(seconds)}"
        settings += " DEFAULT" if default else ""
        return [
            Statement(f"CREATE RETENTION POLICY {quote_identifier(name)} ON {db} {settings}", may_fail=True),
            Statement(f"ALTER RETENTION POLICY {quote_identifier(name)} ON {db} {settings}"),
        ]

    def rollup_select(self, rollup: Rollup, where: str = "") -> str:
        """The continuous query's SELECT INTO; with `where` (a time range) it backfills that range."""
        db = quote_identifier(self.db)
        aggregates = ", ".join(f"{aggregate}(*)" for aggregate in AGGREGATES)
        return (
            f"SELECT {aggregates} INTO {db}.{quote_identifier(rollup.rp)}.:MEASUREMENT "
            f"FROM {db}.{quote_identifier(self.raw_rp)}./.*/ {f'WHERE {where} ' if where else ''}"
            f"GROUP BY time({rollup.bucket}), *"
        )

    def backfill_selects(self, start_ms: int, end_ms: int) -> list[str]:
        """Each roll-up's SELECT INTO over [start, end) in whole hours, in chunks (`BACKFILL_CHUNK_S`).

        A roll-up starts no earlier than its own retention allows (InfluxDB refuses points older
        than their policy keeps, and the whole statement with them), an hour inside it.
        """
        hour_ms = 3_600 * 1000
        end_ms = -(-end_ms // hour_ms) * hour_ms
        kept = {ROLLUP_1M_RP: self.rollup_1m_s, ROLLUP_1H_RP: self.rollup_1h_s}
        statements = []
        for rollup in ROLLUPS:
            kept_s = kept[rollup.rp]
            first = start_ms if kept_s is None else max(start_ms, end_ms - kept_s * 1000 + hour_ms)
            at = first - first % hour_ms
            chunk_ms = BACKFILL_CHUNK_S[rollup.rp] * 1000
            while at < end_ms:
                until = min(at + chunk_ms, end_ms)
                statements.append(self.rollup_select(rollup, f"time >= {at}ms AND time < {until}ms"))
                at = until
        return statements


def pick_resolution(plan: RetentionPlan, start_ms: int, end_ms: int, now_ms: int) -> Resolution:
    """The finest resolution that still holds the range's start and suits its length.

    Raw points answer ranges up to 6 h, the 1-minute roll-up up to 7 days, the 1-hour one anything
    longer; a range that begins before a resolution's retention goes to the next coarser one.
    """
    if not plan.rollups:
        return plan.resolutions[0][0]
    span_s = max(0, end_ms - start_ms) / 1000
    age_s = max(0, now_ms - start_ms) / 1000
    limits = (MAX_RAW_RANGE_S, MAX_1M_RANGE_S, None)
    resolutions = plan.resolutions
    for (resolution, kept_s), longest_s in zip(resolutions, limits, strict=True):
        if (longest_s is None or span_s <= longest_s) and (kept_s is None or age_s <= kept_s):
            return resolution
    return resolutions[-1][0]


def quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
