"""Retention settings, the statements that set them up, and the resolution a reader picks for a range."""

from __future__ import annotations

import pytest

from hub.core.config import Settings, load_settings
from hub.core.errors import ConfigError
from hub.core.retention import (
    MAX_1M_RANGE_S,
    MAX_RAW_RANGE_S,
    ROLLUP_1H_RP,
    ROLLUP_1M_RP,
    BadDuration,
    RetentionPlan,
    go_duration_s,
    influx_duration,
    parse_retention,
    parse_span,
    pick_resolution,
    shard_duration,
)

NOW_MS = 1_765_000_000_000
DAY_S = 86_400
PLAN = RetentionPlan(db="telemetry")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * DAY_S), ("12h", 12 * 3_600), ("52w", 364 * DAY_S), ("1y", 365 * DAY_S), ("INF", None), ("inf", None)],
)
def test_a_retention_is_whole_hours_days_weeks_years_or_forever(text: str, seconds: int | None) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["30", "30m", "0h", "-1d", "1.5d", "forever", ""])
def test_a_retention_that_influxdb_would_refuse_is_an_error(text: str) -> None:
    with pytest.raises(BadDuration):
        parse_retention(text)


def test_a_bad_retention_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_RETENTION_1M", "a year")
    with pytest.raises(ConfigError, match="IOT_RETENTION_1M"):
        load_settings()


def test_the_defaults_are_30_days_a_year_and_forever() -> None:
    plan = Settings().retention
    assert (plan.raw_rp, plan.raw_s, plan.rollup_1m_s, plan.rollup_1h_s) == ("autogen", 30 * DAY_S, 365 * DAY_S, None)
    assert Settings(influx_rp="raw").retention.raw_rp == "raw"


def test_influxql_durations_are_hours_and_the_shards_follow_influxdbs_own_rule() -> None:
    assert [influx_duration(s) for s in (30 * DAY_S, 365 * DAY_S, None)] == ["720h", "8760h", "INF"]
    assert [shard_duration(s) for s in (3_600, 30 * DAY_S, 365 * DAY_S, None)] == ["1h", "1d", "7d", "7d"]


def test_spans_asked_on_the_command_line() -> None:
    assert [parse_span(t) for t in ("90s", "15m", "6h", "7d", "2w")] == [90, 900, 21_600, 7 * DAY_S, 14 * DAY_S]
    for bad in ("0h", "soon", "6"):
        with pytest.raises(BadDuration):
            parse_span(bad)


def test_each_policy_is_created_else_altered_and_each_query_replaced() -> None:
    statements = PLAN.statements()
    texts = [s.text for s in statements]
    for name in ("autogen", ROLLUP_1M_RP, ROLLUP_1H_RP):
        create = next(i for i, t in enumerate(texts) if t.startswith(f'CREATE RETENTION POLICY "{name}"'))
        assert statements[create].may_fail
        assert texts[create + 1] == texts[create].replace("CREATE", "ALTER", 1)
        assert not statements[create + 1].may_fail
    assert sum(" DEFAULT" in t for t in texts if t.startswith("ALTER")) == 1
    for rp in (ROLLUP_1M_RP, ROLLUP_1H_RP):
        drop = texts.index(f'DROP CONTINUOUS QUERY "{rp}" ON "telemetry"')
        assert statements[drop].may_fail and texts[drop + 1].startswith(f'CREATE CONTINUOUS QUERY "{rp}"')
    assert not any("DROP RETENTION" in t or "DROP DATABASE" in t or "DELETE" in t for t in texts)


def test_the_roll_ups_keep_the_tags_and_three_aggregates_of_every_field() -> None:
    [_, hourly] = [s.text for s in PLAN.statements() if s.text.startswith("CREATE CONTINUOUS")]
    assert "RESAMPLE EVERY 1h FOR 2h" in hourly
    assert (
        'SELECT mean(*), min(*), max(*) INTO "telemetry"."rollup_1h".:MEASUREMENT FROM "telemetry"."autogen"./.*/ '
        "GROUP BY time(1h), *"
    ) in hourly


def test_a_backfill_covers_the_range_in_whole_hours_and_chunks() -> None:
    hour_ms = 3_600_000
    start = 10 * 24 * hour_ms + 90_000
    selects = PLAN.backfill_selects(start, start + 30 * hour_ms)
    assert len(selects) == 3  # two days of minutes, one chunk of hours
    assert f"time >= {10 * 24 * hour_ms}ms AND time < {11 * 24 * hour_ms}ms" in selects[0]
    assert f"time < {(10 * 24 + 31) * hour_ms}ms GROUP BY time(1m), *" in selects[1]
    assert "GROUP BY time(1h), *" in selects[2]


def test_a_backfill_writes_nothing_older_than_a_roll_up_keeps() -> None:
    """InfluxDB refuses a point beyond its policy's retention, and the whole SELECT INTO with it."""
    hour_ms, year_ms = 3_600_000, 365 * 86_400_000
    end = 60 * year_ms
    selects = PLAN.backfill_selects(end - 3 * year_ms, end)
    minutes = [s for s in selects if "time(1m)" in s]
    hours = [s for s in selects if "time(1h)" in s]
    assert f"time >= {end - year_ms + hour_ms}ms AND" in minutes[0] and len(minutes) == 365
    assert f"time >= {end - 3 * year_ms}ms AND" in hours[0]


def _pick(span_s: int, plan: RetentionPlan = PLAN, ago_s: int = 0) -> str:
    end = NOW_MS - ago_s * 1000
    return pick_resolution(plan, end - span_s * 1000, end, NOW_MS).name


def test_a_short_range_reads_the_raw_points_a_week_the_minutes_longer_the_hours() -> None:
    assert [_pick(s) for s in (300, 3_600, MAX_RAW_RANGE_S)] == ["raw", "raw", "raw"]
    assert [_pick(s) for s in (MAX_RAW_RANGE_S + 1, DAY_S, MAX_1M_RANGE_S)] == ["1m", "1m", "1m"]
    assert [_pick(s) for s in (MAX_1M_RANGE_S + 1, 90 * DAY_S, 10 * 365 * DAY_S)] == ["1h", "1h", "1h"]


def test_a_range_older_than_a_resolutions_retention_reads_the_next_coarser_one() -> None:
    assert _pick(3_600, ago_s=31 * DAY_S) == "1m"
    assert _pick(3_600, ago_s=400 * DAY_S) == "1h"
    short = RetentionPlan(db="telemetry", raw_s=2 * 3_600)
    assert _pick(3 * 3_600, short) == "1m"


def test_without_roll_ups_every_range_reads_the_raw_points() -> None:
    plan = Settings(influx_token="t", influx_org="o").retention
    assert not plan.rollups
    assert _pick(90 * DAY_S, plan) == "raw"
    assert Settings().retention.rollups


def test_a_resolution_names_a_sensors_field() -> None:
    raw = pick_resolution(PLAN, NOW_MS - 1_000, NOW_MS, NOW_MS)
    hourly = pick_resolution(PLAN, NOW_MS - 30 * DAY_S * 1000, NOW_MS, NOW_MS)
    assert (raw.rp, raw.field("temperature")) == ("autogen", "temperature")
    assert (hourly.rp, hourly.field("temperature"), hourly.field("temperature", "max")) == (
        ROLLUP_1H_RP,
        "mean_temperature",
        "max_temperature",
    )


def test_durations_as_influxdb_shows_them() -> None:
    assert [go_duration_s(t) for t in ("720h0m0s", "1h30m0s", "0s", "90s")] == [720 * 3_600, 5_400, None, 90]
    with pytest.raises(BadDuration):
        go_duration_s("30d")
