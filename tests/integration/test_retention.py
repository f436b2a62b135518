"""Retention policies and roll-ups on the session's real InfluxDB: what `stack up`, docker compose's
script and `hub stack retention` set, and roll-ups of readings written hours ago, made on demand
by the continuous queries' own SELECT INTO (no waiting for InfluxDB's clock)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hub.clients.influx import InfluxHttp
from hub.core.config import Settings
from hub.core.errors import PointsRejected
from hub.core.retention import ROLLUP_1H_RP, ROLLUP_1M_RP, RetentionPlan
from hub.dashboard.server import Dashboard
from hub.stack.compose import retention_file
from hub.stack.influx import Login, account_plan, backfill_rollups, ensure_retention
from hub.stack.stack import Stack
from tests.support import REPO, hub_cli, influx_query

HOUR_MS = 3_600_000
#: InfluxDB shows durations as Go does.
DEFAULT_DURATIONS = {"autogen": "720h0m0s", ROLLUP_1M_RP: "8760h0m0s", ROLLUP_1H_RP: "0s"}


@pytest.fixture
def admin(stack: Settings) -> Iterator[InfluxHttp]:
    login = account_plan(stack).admin
    client = InfluxHttp(stack.influx_url, stack.influx_db, user=login.user, password=login.password)
    try:
        yield client
    finally:
        # Whatever a test set, the session's stack gets its own settings back.
        ensure_retention(client, stack.retention)
        client.close()


#: The policies the retention set-up manages; others (the logs' own, `IOT_LOG_RETENTION`) are not its business.
MANAGED = ("autogen", "rollup_1m", "rollup_1h")


def _policies(admin: InfluxHttp, db: str) -> dict[str, dict[str, Any]]:
    rows = [row for s in admin.administer(f'SHOW RETENTION POLICIES ON "{db}"')[0] for row in s.rows]
    assert len({row["name"] for row in rows}) == len(rows)
    return {row["name"]: row for row in rows if row["name"] in MANAGED}


def _queries(admin: InfluxHttp, db: str) -> dict[str, str]:
    rows = [row for s in admin.administer("SHOW CONTINUOUS QUERIES")[0] if s.name == db for row in s.rows]
    assert len({row["name"] for row in rows}) == len(rows), rows
    return {row["name"]: row["query"] for row in rows}


def test_stack_up_sets_the_retention_policies_and_the_roll_up_queries(stack: Settings, admin: InfluxHttp) -> None:
    policies = _policies(admin, stack.influx_db)
    assert {name: row["duration"] for name, row in policies.items()} == DEFAULT_DURATIONS
    assert [name for name, row in policies.items() if row["default"]] == ["autogen"]
    queries = _queries(admin, stack.influx_db)
    assert set(queries) == {ROLLUP_1M_RP, ROLLUP_1H_RP}
    assert "INTO telemetry.rollup_1m.:MEASUREMENT FROM telemetry.autogen./.*/" in queries[ROLLUP_1M_RP]
    assert "GROUP BY time(1h), *" in queries[ROLLUP_1H_RP]


def test_running_it_again_alters_never_duplicates_and_keeps_the_data(stack: Settings, admin: InfluxHttp) -> None:
    writer = InfluxHttp.from_settings(stack, stack.influx_writer)
    ts = int(time.time() * 1000) - HOUR_MS
    try:
        writer.write(f"environment,device=env-9401,site=ret temperature=21.5,seq=1i {ts}".encode())
    finally:
        writer.close()
    longer = RetentionPlan(db=stack.influx_db, raw_s=60 * 86_400, rollup_1m_s=2 * 365 * 86_400, rollup_1h_s=None)
    for _ in range(2):
        ensure_retention(admin, longer)
    policies = _policies(admin, stack.influx_db)
    assert {name: row["duration"] for name, row in policies.items()} == {
        "autogen": "1440h0m0s",
        ROLLUP_1M_RP: "17520h0m0s",
        ROLLUP_1H_RP: "0s",
    }
    assert set(_queries(admin, stack.influx_db)) == {ROLLUP_1M_RP, ROLLUP_1H_RP}
    [series] = influx_query(stack, "SELECT temperature FROM environment WHERE device = 'env-9401'")
    assert series["values"] == [[ts, 21.5]]


def test_stack_up_on_the_running_stack_applies_changed_settings(stack: Settings, admin: InfluxHttp) -> None:
    status = Stack(stack.model_copy(update={"retention_raw": "8w", "retention_1h": "10y"})).up()
    assert status.already_running
    policies = _policies(admin, stack.influx_db)
    assert {name: row["duration"] for name, row in policies.items()} == {
        "autogen": "1344h0m0s",
        ROLLUP_1M_RP: "8760h0m0s",
        ROLLUP_1H_RP: "87600h0m0s",
    }
    assert Stack(stack).up().already_running
    assert {name: row["duration"] for name, row in _policies(admin, stack.influx_db).items()} == DEFAULT_DURATIONS


def test_the_first_set_up_rolls_up_the_history_before_the_raw_retention_shrinks(
    stack: Settings, admin: InfluxHttp
) -> None:
    """A database from before the roll-ups (its autogen keeps everything): its 60-day-old readings,
    which the 30-day raw retention will drop, are in the roll-ups once the retention is set."""
    db = "retention_history"
    admin.administer(f'CREATE DATABASE "{db}"')
    writer = InfluxHttp(stack.influx_url, db, user=admin_login(stack).user, password=admin_login(stack).password)
    ancient = (int(time.time() * 1000) - 3 * 365 * 86_400_000) // HOUR_MS * HOUR_MS  # beyond rollup_1m's year
    old = (int(time.time() * 1000) - 60 * 86_400_000) // HOUR_MS * HOUR_MS
    recent = (int(time.time() * 1000) - 86_400_000) // HOUR_MS * HOUR_MS
    try:
        writer.write(
            "\n".join(
                f"environment,device=env-9405,site=ret temperature={value} {at}"
                for value, at in ((5, ancient), (10, old), (30, old + 60_000), (50, recent))
            ).encode()
        )
        plan = RetentionPlan(db=db)
        ensure_retention(admin, plan)
        assert {name: row["duration"] for name, row in _policies(admin, db).items()} == DEFAULT_DURATIONS
        hourly = writer.query(f'SELECT "mean_temperature" FROM "{db}"."{ROLLUP_1H_RP}"."environment"')[0]
        assert [(row["time"], row["mean_temperature"]) for s in hourly for row in s.rows] == [
            (ancient, 5.0),
            (old, 20.0),
            (recent, 50.0),
        ]
        minutes = writer.query(f'SELECT count("max_temperature") FROM "{db}"."{ROLLUP_1M_RP}"."environment"')[0]
        assert [row["count"] for s in minutes for row in s.rows] == [3]
        ensure_retention(admin, plan)  # not the first time: nothing rolled up again, nothing duplicated
        assert set(_queries(admin, db)) == {ROLLUP_1M_RP, ROLLUP_1H_RP}
        # A reading of 20 days ago, after the roll-ups' look-back: a raw retention shrunk to 7 days rolls it up first.
        late = (int(time.time() * 1000) - 20 * 86_400_000) // HOUR_MS * HOUR_MS
        writer.write(f"environment,device=env-9405,site=ret temperature=70 {late}".encode())
        ensure_retention(admin, RetentionPlan(db=db, raw_s=7 * 86_400))
        assert _policies(admin, db)["autogen"]["duration"] == "168h0m0s"
        hourly = writer.query(f'SELECT "mean_temperature" FROM "{db}"."{ROLLUP_1H_RP}"."environment"')[0]
        assert (late, 70.0) in [(row["time"], row["mean_temperature"]) for s in hourly for row in s.rows]
    finally:
        writer.close()
        admin.administer(f'DROP DATABASE "{db}"')


def admin_login(stack: Settings) -> Login:
    return account_plan(stack).admin


def test_compose_script_runs_the_same_statements_idempotently(
    stack: Settings, admin: InfluxHttp, tmp_path: Any
) -> None:
    """influxdb/retention.sh, as the compose service runs it, against the real InfluxDB (twice)."""
    plan = RetentionPlan(db=stack.influx_db, raw_s=45 * 86_400, rollup_1m_s=400 * 86_400, rollup_1h_s=None)
    statements = tmp_path / "retention.iql"
    statements.write_text(retention_file(plan))
    login = account_plan(stack).admin
    environment = {
        "PATH": "/usr/bin:/bin",
        "INFLUX_URL": stack.influx_url,
        "INFLUXDB_ADMIN_USER": login.user,
        "INFLUXDB_ADMIN_PASSWORD": login.password,
    }
    for _ in range(2):
        done = subprocess.run(
            ["sh", str(REPO / "influxdb" / "retention.sh"), str(statements)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    policies = _policies(admin, stack.influx_db)
    assert {name: row["duration"] for name, row in policies.items()} == {
        "autogen": "1080h0m0s",
        ROLLUP_1M_RP: "9600h0m0s",
        ROLLUP_1H_RP: "0s",
    }
    assert set(_queries(admin, stack.influx_db)) == {ROLLUP_1M_RP, ROLLUP_1H_RP}
    environment["INFLUXDB_ADMIN_PASSWORD"] = "not-the-password"
    refused = subprocess.run(
        ["sh", str(REPO / "influxdb" / "retention.sh"), str(statements)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "refused" in refused.stderr


def _rows(stack: Settings, rp: str, device: str) -> list[dict[str, Any]]:
    series = influx_query(stack, f'SELECT * FROM "{stack.influx_db}"."{rp}"."environment" WHERE device = \'{device}\'')
    return [dict(zip(s["columns"], values, strict=True)) for s in series for values in s["values"]]


def test_readings_of_hours_ago_appear_in_the_roll_ups_with_their_aggregates(stack: Settings, admin: InfluxHttp) -> None:
    hour = (int(time.time() * 1000) - 3 * HOUR_MS) // HOUR_MS * HOUR_MS
    # Minute 0: 10, 20, 30 (and one out of range); minute 1: 40. The whole hour: 10, 20, 30, 40.
    lines = [
        f"environment,device=env-9402,protocol=mqtt,site=ret temperature=10,humidity=50,seq=1i {hour}",
        f"environment,device=env-9402,protocol=mqtt,site=ret temperature=20,humidity=52,seq=2i {hour + 20_000}",
        f'environment,device=env-9402,protocol=mqtt,site=ret temperature=30,humidity=54,seq=3i,out_of_range="humidity" '
        f"{hour + 40_000}",
        f"environment,device=env-9402,protocol=mqtt,site=ret temperature=40,humidity=56,seq=4i {hour + 60_000}",
    ]
    writer = InfluxHttp.from_settings(stack, stack.influx_writer)
    try:
        writer.write("\n".join(lines).encode())
    finally:
        writer.close()
    assert _rows(stack, ROLLUP_1M_RP, "env-9402") == []
    for _ in range(2):  # a second backfill overwrites the same buckets
        written = backfill_rollups(admin, stack.retention, hour, hour + HOUR_MS, lambda _done, _total: None)
        assert written >= 3
    minutes = _rows(stack, ROLLUP_1M_RP, "env-9402")
    assert [row["time"] for row in minutes] == [hour, hour + 60_000]
    first, second = minutes
    assert (first["mean_temperature"], first["min_temperature"], first["max_temperature"]) == (20.0, 10.0, 30.0)
    assert (first["mean_humidity"], first["min_seq"], first["max_seq"]) == (52.0, 1, 3)
    assert (second["mean_temperature"], second["min_temperature"], second["max_temperature"]) == (40.0, 40.0, 40.0)
    assert (first["device"], first["site"], first["protocol"]) == ("env-9402", "ret", "mqtt")
    assert not any("out_of_range" in column for column in first)
    [whole] = _rows(stack, ROLLUP_1H_RP, "env-9402")
    assert whole["time"] == hour
    assert (whole["mean_temperature"], whole["min_temperature"], whole["max_temperature"]) == (25.0, 10.0, 40.0)
    assert (whole["mean_seq"], whole["max_seq"]) == (2.5, 4)
    # The tags stay tags: the roll-ups group by device as the raw points do.
    tags = influx_query(stack, f'SHOW TAG KEYS FROM "{stack.influx_db}"."{ROLLUP_1H_RP}"."environment"')
    assert {"device", "site", "protocol"} <= {value[0] for value in tags[0]["values"]}


def test_a_reading_older_than_the_raw_retention_is_refused(stack: Settings) -> None:
    """Such a reading is dead-lettered as `rejected_by_influxdb` (docs/contract.md, Retention and roll-ups)."""
    old = int(time.time() * 1000) - 40 * 86_400_000
    writer = InfluxHttp.from_settings(stack, stack.influx_writer)
    try:
        with pytest.raises(PointsRejected, match="retention"):
            writer.write(f"environment,device=env-9403,site=ret temperature=1 {old}".encode())
    finally:
        writer.close()


def test_stack_retention_sets_them_and_backfills_from_the_command_line(stack: Settings) -> None:
    done = hub_cli(stack, "stack", "retention", "--backfill", "2h", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert {row["name"]: row["duration"] for row in answer["policies"] if row["name"] in MANAGED} == DEFAULT_DURATIONS
    assert {row["name"] for row in answer["continuous_queries"]} == {ROLLUP_1M_RP, ROLLUP_1H_RP}
    assert isinstance(answer["backfilled_points"], int)
    bad = hub_cli(stack, "stack", "retention", "--backfill", "soon")
    assert bad.returncode == 2 and "--backfill" in bad.stderr


# --- readers pick the resolution that fits the range -------------------------------------------


@pytest.fixture(scope="module")
def rolled_up(stack: Settings) -> int:
    """Device env-9404 (with its presence row): 10, 20, 30 in one minute and 40 in the next, 3 hours ago,
    rolled up on demand. Its hour's raw mean is 25; the mean of its two 1-minute means (20, 40) is 30."""
    hour = (int(time.time() * 1000) - 3 * HOUR_MS) // HOUR_MS * HOUR_MS
    lines = [
        f"environment,device=env-9404,protocol=mqtt,site=ret temperature={value},seq={i}i {hour + offset}"
        for i, (value, offset) in enumerate(((10, 0), (20, 20_000), (30, 40_000), (40, 60_000)), start=1)
    ]
    lines.append(
        f'device_status,device=env-9404,kind=environment,protocol=mqtt,site=ret state="online",online=true {hour}'
    )
    writer = InfluxHttp.from_settings(stack, stack.influx_writer)
    login = account_plan(stack).admin
    admin = InfluxHttp(stack.influx_url, stack.influx_db, user=login.user, password=login.password)
    try:
        writer.write("\n".join(lines).encode())
        backfill_rollups(admin, stack.retention, hour, hour + HOUR_MS, lambda _done, _total: None)
    finally:
        writer.close()
        admin.close()
    return hour


def _temperature(answer: dict[str, Any]) -> list[float]:
    [reading] = [r for r in answer["readings"] if r["name"] == "temperature"]
    return [value for _t, value in reading["points"]]


def test_the_dashboard_page_reads_the_roll_ups_for_long_ranges(stack: Settings, rolled_up: int) -> None:
    page = Dashboard(stack)
    expected = {"6h": ("raw", [25.0]), "7d": ("1m", [30.0]), "30d": ("1h", [25.0]), "1y": ("1h", [25.0])}
    for range_name, (resolution, means) in expected.items():
        answer = page.device("env-9404", range_name)
        assert (answer["resolution"], _temperature(answer)) == (resolution, means), range_name
        overview = page.overview(range_name)
        assert overview["resolution"] == resolution


def test_hub_readings_reads_the_resolution_that_fits_the_range(stack: Settings, rolled_up: int) -> None:
    answers = {}
    for since in ("6h", "3d", "90d"):
        done = hub_cli(stack, "readings", "env-9404", "--since", since, "--points", "1", "--json")
        assert done.returncode == 0, done.stderr
        answers[since] = json.loads(done.stdout)
    assert {since: a["resolution"] for since, a in answers.items()} == {"6h": "raw", "3d": "1m", "90d": "1h"}
    for since, a in answers.items():
        [bucket] = [b for b in a["buckets"] if b["sensor"] == "temperature"]
        assert (bucket["min"], bucket["max"]) == (10.0, 40.0), since
        assert bucket["mean"] == (30.0 if since == "3d" else 25.0), since
    shown = hub_cli(stack, "readings", "env-9404", "--since", "90d", "--points", "1")
    assert shown.returncode == 0 and "1-hour roll-ups" in shown.stdout and "temperature" in shown.stdout


def test_chronografs_device_dashboard_reads_each_resolution(stack: Settings, rolled_up: int) -> None:
    board = json.loads((REPO / "dashboards" / "device-detail.dashboard").read_text())
    [cell] = [c for c in board["cells"] if c["name"].startswith("Readings of")]
    [template] = [t for t in board["templates"] if t["tempVar"] == ":resolution:"]
    expected = {"autogen": ("mean_temperature", 25.0), ROLLUP_1M_RP: ("mean_mean_temperature", 30.0)}
    expected[ROLLUP_1H_RP] = ("mean_mean_temperature", 25.0)
    assert [v["value"] for v in template["values"]] == list(expected)
    for resolution, (column, mean) in expected.items():
        rendered = (
            cell["queries"][0]["query"]
            .replace(":resolution:", resolution)
            .replace(":kind:", "environment")
            .replace(":device:", "env-9404")
            .replace(":dashboardTime:", "now() - 1d")
            .replace(":upperDashboardTime:", "now()")
            .replace(":interval:", "1d")
        )
        [series] = influx_query(stack, rendered)
        rows = [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
        assert [row[column] for row in rows if row.get(column) is not None] == [mean], resolution
