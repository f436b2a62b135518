"""`hub readings` and the dashboard page: the statement at each resolution and the shaping of the answer."""

from __future__ import annotations

import pytest

from hub.clients.influx import Series
from hub.control.readings import bucket_for, readings_statement, shape
from hub.core.errors import InvalidIdentifier
from hub.core.retention import ROLLUP_1H_RP, ROLLUP_1M_RP, Resolution, RetentionPlan
from hub.dashboard import queries

RAW = Resolution("raw", "autogen", 0)
MINUTES = Resolution("1m", ROLLUP_1M_RP, 60)
HOURS = Resolution("1h", ROLLUP_1H_RP, 3_600)


def test_raw_readings_are_aggregated_from_the_raw_fields() -> None:
    statement = readings_statement("env-0001", ["environment", "thermostat"], RAW, 21_600, 900)
    assert statement == (
        'SELECT mean(*), min(*), max(*) FROM "environment", "thermostat" WHERE "device" = \'env-0001\' '
        "AND time > now() - 21600s GROUP BY time(900s) fill(none)"
    )


def test_roll_ups_are_aggregated_from_their_own_aggregates() -> None:
    statement = readings_statement("env-0001", ["environment"], HOURS, 90 * 86_400, 86_400)
    assert statement.startswith(
        'SELECT mean(/^mean_/), min(/^min_/), max(/^max_/) FROM "rollup_1h"."environment" WHERE'
    )


def test_nothing_from_outside_reaches_the_statement_unchecked() -> None:
    for device, kind in (("env'0001", "environment"), ("env-0001", 'environment" ; DROP')):
        with pytest.raises(InvalidIdentifier):
            readings_statement(device, [kind], RAW, 60, 60)


def test_buckets_are_whole_multiples_of_the_roll_up() -> None:
    assert bucket_for(RAW, 21_600, 24) == 900
    assert bucket_for(MINUTES, 86_400, 24) == 3_600
    assert bucket_for(MINUTES, 86_400, 1_000) == 120  # 86.4 s rounds up to two minutes
    assert bucket_for(HOURS, 90 * 86_400, 24) == 324_000


def test_the_answer_becomes_one_row_per_bucket_and_sensor() -> None:
    rows = [{"time": 0, "mean_mean_temperature": 21.5, "min_min_temperature": 20, "max_max_temperature": 23.0,
             "mean_mean_seq": 3.5, "min_min_seq": 1, "max_max_seq": 6}]  # fmt: skip
    [bucket] = shape([Series("environment", {}, rows)], HOURS)
    assert (bucket.sensor, bucket.mean, bucket.min, bucket.max) == ("temperature", 21.5, 20.0, 23.0)
    raw = [{"time": 60_000, "mean_co2": 410.0, "min_co2": 400, "max_co2": 420, "mean_seq": 2.0}]
    [bucket] = shape([Series("air_quality", {}, raw)], RAW)
    assert (bucket.time_ms, bucket.sensor, bucket.mean, bucket.max) == (60_000, "co2", 410.0, 420.0)


def test_the_pages_long_ranges_read_the_roll_ups() -> None:
    plan = RetentionPlan(db="telemetry")
    windows = {name: queries.window(name, plan) for name in ("6h", "24h", "7d", "30d", "1y")}
    assert {name: w.resolution.name for name, w in windows.items()} == {
        "6h": "raw", "24h": "1m", "7d": "1m", "30d": "1h", "1y": "1h",
    }  # fmt: skip
    assert windows["30d"].interval_s == 21_600
    [_, rates, *_] = queries.overview_statements(windows["30d"])
    assert 'max("max_seq")' in rates and 'FROM "rollup_1h"./.*/' in rates
    [means, switches, *_] = queries.device_statements("env-0001", "environment", windows["7d"])
    assert means.startswith('SELECT mean(/^mean_/) FROM "rollup_1m"."environment"')
    assert 'FROM "environment"' in switches  # booleans are not rolled up: the raw points
    [raw_means, *_] = queries.device_statements("env-0001", "environment", windows["6h"])
    assert raw_means.startswith('SELECT mean(*) FROM "environment" WHERE')
