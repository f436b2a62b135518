"""Device logs without servers: the body's contract, the token bucket, the per-device limiter
and its summaries, the log-rule hook, the handler's effects, and the CLI's level filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pika.spec import Basic, BasicProperties
from pydantic import ValidationError

from hub.cli.logs import entry_text
from hub.control.logs import entry_from_body, entry_from_row, follow_patterns, levels_from, parse_since
from hub.control.tail import describe
from hub.core.config import LOG_RETENTION_POLICY, Settings
from hub.core.contract import (
    LOG_LEVELS,
    MAX_BODY_BYTES,
    MAX_LOG_FIELD_CHARS,
    MAX_LOG_FIELDS,
    MAX_LOG_MESSAGE_CHARS,
    LogLine,
    decode_log_line,
    encode,
    log_key,
    mqtt_topic,
)
from hub.core.errors import ConfigError, InvalidIdentifier, InvalidMessage, Unreadable
from hub.core.measurements import LOGS_MEASUREMENT
from hub.outputs.influxdb_v1 import influxql_device_logs
from hub.outputs.influxdb_v2 import flux_device_logs
from hub.outputs.jsonl import JsonLinesReader
from hub.runtime.delivery import Delivery
from hub.services import output_settings
from hub.services.logs.limiter import LogLimiter, Summary, TokenBucket
from hub.services.logs.rules import LineBurst
from hub.services.logs.service import LogsHandler, device_of
from hub.services.logs.stored import HUB_SOURCE, line_point, summary_point
from hub.stack.influx import log_retention_statement

DEVICE = "env-0001"
TS = 1_763_823_456_123


def body(**override: object) -> bytes:
    fields: dict[str, object] = {"v": 1, "device": DEVICE, "ts": TS, "level": "error", "message": "sensor timeout"}
    fields.update(override)
    return json.dumps(fields).encode()


# --- the contract ---------------------------------------------------------------------------------


def test_a_log_line_is_routed_by_device_and_level() -> None:
    assert log_key(DEVICE, "warning") == "logs.env-0001.warning"
    assert mqtt_topic(log_key(DEVICE, "warning")) == "logs/env-0001/warning"
    with pytest.raises(InvalidIdentifier):
        log_key(DEVICE, "fatal")
    with pytest.raises(InvalidIdentifier):
        log_key("a.b", "info")


def test_a_valid_line_decodes_with_its_fields() -> None:
    line = decode_log_line(body(fields={"attempt": 3, "broker": "n1", "ok": False}), "logs.env-0001.error")
    assert (line.device, line.level, line.message, line.fields["attempt"]) == (DEVICE, "error", "sensor timeout", 3)
    assert decode_log_line(encode(line)) == line


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"level": "fatal"}, "schema"),
        ({"message": "x" * (MAX_LOG_MESSAGE_CHARS + 1)}, "schema"),
        ({"fields": {f"f{i}": i for i in range(MAX_LOG_FIELDS + 1)}}, "schema"),
        ({"fields": {"note": "y" * (MAX_LOG_FIELD_CHARS + 1)}}, "schema"),
        ({"fields": {"Bad-Name": 1}}, "schema"),
        ({"fields": {"nested": {"a": 1}}}, "schema"),
        ({"device": "Not An Id"}, "schema"),
        ({"ts": 1.5}, "schema"),
        ({"v": 2}, "schema"),
    ],
)
def test_a_line_breaking_a_limit_is_refused_with_its_reason(override: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_log_line(body(**override))
    assert refused.value.reason == reason


def test_a_line_at_the_limits_is_accepted() -> None:
    fields = {f"f{i}": "z" * MAX_LOG_FIELD_CHARS for i in range(MAX_LOG_FIELDS)}
    line = decode_log_line(body(message="m" * MAX_LOG_MESSAGE_CHARS, fields=fields))
    assert len(line.fields) == MAX_LOG_FIELDS


def test_an_oversize_body_and_a_routing_mismatch_are_refused() -> None:
    with pytest.raises(InvalidMessage) as oversize:
        decode_log_line(b" " * (MAX_BODY_BYTES + 1))
    assert oversize.value.reason == "oversize"
    for key in ("logs.env-0002.error", "logs.env-0001.info"):
        with pytest.raises(InvalidMessage) as mismatch:
            decode_log_line(body(), key)
        assert mismatch.value.reason == "routing_mismatch"


@pytest.mark.parametrize(
    "key", ["logs.env-0001", "logs.env-0001.fatal", "logs.A.error", "telemetry.a.b.c", "logs.a.b.c"]
)
def test_a_routing_key_that_is_not_a_log_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        device_of(key)
    assert refused.value.reason == "routing_key"


# --- the token bucket and the limiter ----------------------------------------------------------------


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, capacity=3, now_ms=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(499)  # 0.998 of a token
    assert bucket.take(500)
    assert not bucket.take(500)
    assert [bucket.take(10_000) for _ in range(4)] == [True, True, True, False]  # never more than its capacity


def test_a_clock_that_goes_back_refills_nothing() -> None:
    bucket = TokenBucket.full(rate=1.0, capacity=1, now_ms=5_000)
    assert bucket.take(5_000)
    assert not bucket.take(1_000)
    assert not bucket.take(5_999)
    assert bucket.take(6_000)


def test_the_limiter_keeps_devices_apart_and_counts_what_it_drops() -> None:
    limiter = LogLimiter(rate=1.0, burst=2, summary_ms=60_000)
    admitted = [limiter.admit("a", 0) for _ in range(5)]
    assert admitted == [True, True, False, False, False]
    assert limiter.admit("b", 0) and limiter.admit("b", 0)
    assert limiter.pending() == {"a": 3}


def test_one_summary_per_device_per_interval_with_what_was_dropped() -> None:
    limiter = LogLimiter(rate=1.0, burst=1, summary_ms=60_000)
    for at in (0, 0, 10, 20):
        limiter.admit("a", at)
    assert limiter.summaries(59_999) == []
    assert limiter.summaries(60_000) == [Summary("a", 3, 0, 60_000)]
    assert limiter.summaries(120_000) == []  # nothing dropped since: no summary
    limiter.admit("a", 120_000)
    limiter.admit("a", 120_000)
    assert limiter.summaries(180_000) == [Summary("a", 1, 120_000, 180_000)]


def test_the_limiter_forgets_devices_whose_buckets_are_full_again() -> None:
    limiter = LogLimiter(rate=10.0, burst=5, summary_ms=1_000)
    limiter.admit("a", 0)
    limiter.summaries(1_000)
    assert limiter._buckets == {}


# --- stored points ------------------------------------------------------------------------------------


def test_a_line_is_a_point_keyed_by_device_level_and_its_own_time() -> None:
    line = decode_log_line(body(fields={"attempt": 2}))
    point = line_point(line)
    assert point.measurement == LOGS_MEASUREMENT
    assert (dict(point.tags), point.ts_ms) == ({"device": DEVICE, "level": "error"}, TS)
    assert point.fields == {"message": "sensor timeout", "fields": '{"attempt":2}'}
    assert line_point(decode_log_line(body())).fields == {"message": "sensor timeout"}


def test_a_summary_is_a_warning_of_the_hub_that_never_overwrites_a_device_line() -> None:
    point = summary_point(Summary(DEVICE, 42, 0, 60_000), rate=5.0)
    assert point.tags == {"device": DEVICE, "level": "warning", "source": HUB_SOURCE}
    assert point.fields["dropped"] == 42
    assert "42 log lines dropped in 60 s" in str(point.fields["message"])


# --- the rule hook -----------------------------------------------------------------------------------


def line(level: str, ts: int, device: str = DEVICE) -> LogLine:
    return LogLine(device=device, ts=ts, level=level, message="m")  # type: ignore[arg-type]


def test_three_errors_in_a_minute_hit_once() -> None:
    rule = LineBurst("errors", "error", count=3, window_ms=60_000)
    hits = [rule.observe(line(level, ts)) for level, ts in [("error", 0), ("info", 1), ("critical", 2), ("error", 3)]]
    assert [h is not None for h in hits] == [False, False, False, True]
    assert rule.observe(line("error", 4)) is None  # counted afresh after a hit


def test_errors_spread_wider_than_the_window_do_not_hit() -> None:
    rule = LineBurst("errors", "error", count=3, window_ms=60_000)
    assert [rule.observe(line("error", ts)) for ts in (0, 30_000, 60_000, 90_000)] == [None, None, None, None]
    assert rule.observe(line("error", 3, device="other")) is None


# --- the handler ----------------------------------------------------------------------------------------


def delivery(routing_key: str, payload: bytes) -> Delivery:
    return Delivery(Basic.Deliver(delivery_tag=1, routing_key=routing_key), BasicProperties(), payload, "hub.logs")


def test_the_handler_stores_admitted_lines_and_drops_the_excess_unread() -> None:
    clock = [0]
    handler = LogsHandler(LogLimiter(rate=1.0, burst=2, summary_ms=1_000), clock=lambda: clock[0])
    effects = [handler.handle(delivery("logs.env-0001.error", body())) for _ in range(3)]
    assert [len(e.points) for e in effects] == [1, 1, 0]
    assert effects[2].events == (("log_line", "dropped"),)
    # Over the rate the body is not even read: a dropped line is never dead-lettered.
    assert handler.handle(delivery("logs.env-0001.error", b"not json")).events == (("log_line", "dropped"),)
    summary = handler.tick(1_000, "active")
    assert [dict(p.tags) for p in summary.points] == [{"device": DEVICE, "level": "warning", "source": "hub"}]
    assert summary.points[0].fields["dropped"] == 2


def test_the_handler_refuses_a_bad_body_and_a_foreign_key() -> None:
    handler = LogsHandler(LogLimiter(rate=100.0, burst=100, summary_ms=1_000))
    with pytest.raises(InvalidMessage) as bad:
        handler.handle(delivery("logs.env-0001.error", b"{"))
    assert bad.value.reason == "bad_json"
    with pytest.raises(InvalidMessage) as foreign:
        handler.handle(delivery("logs.env-0002.error", body()))
    assert foreign.value.reason == "routing_mismatch"


def test_a_rule_hit_is_an_event_beside_the_stored_line() -> None:
    rules = [LineBurst("two", "error", 2, 60_000)]
    handler = LogsHandler(LogLimiter(rate=100.0, burst=100, summary_ms=1_000), rules=rules)
    handler.handle(delivery("logs.env-0001.error", body(ts=1)))
    effects = handler.handle(delivery("logs.env-0001.error", body(ts=2)))
    assert effects.events == (("log_line", "stored"), ("log_rule", "two"))


def test_levels_are_ordered_least_severe_first() -> None:
    assert LOG_LEVELS == ("debug", "info", "warning", "error", "critical")


# --- hub logs: the level filter, --since, rows and live bodies, the queries ---------------------------


def test_a_level_means_itself_and_every_level_above() -> None:
    assert levels_from("warning") == ("warning", "error", "critical")
    assert levels_from("debug") == LOG_LEVELS
    assert levels_from("critical") == ("critical",)
    with pytest.raises(ConfigError):
        levels_from("fatal")


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172_800)])
def test_since_is_a_duration(text: str, seconds: int) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1y", "-1h", "1.5h", "h"])
def test_a_since_that_is_no_duration_is_a_usage_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_since(text)


def test_live_views_bind_one_key_per_level() -> None:
    assert follow_patterns(None, ("error", "critical")) == ["logs.*.error", "logs.*.critical"]
    assert follow_patterns(DEVICE, ("critical",)) == ["logs.env-0001.critical"]
    with pytest.raises(InvalidIdentifier):
        follow_patterns("#", ("error",))


def test_a_stored_row_and_a_live_body_are_the_same_entry() -> None:
    row = {"time": TS, "device": DEVICE, "level": "error", "message": "sensor timeout", "fields": '{"attempt":2}'}
    stored = entry_from_row(row)
    live = entry_from_body("logs.env-0001.error", body(fields={"attempt": 2}))
    assert stored == live and stored.key == live.key
    summary = entry_from_row(
        {"time": 5, "device": DEVICE, "level": "warning", "message": "m", "source": "hub", "dropped": 7}
    )
    assert (summary.source, summary.fields) == ("hub", {"dropped": 7})


def test_what_a_device_wrote_is_escaped_on_the_terminal() -> None:
    entry = entry_from_body(
        "logs.env-0001.error", body(message="boom\x1b]0;owned\x07 [bold]x[/]", fields={"k": "v\u202e\x1b"})
    )
    shown = entry_text(entry).plain
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert "\\x1b]0;owned\\x07 [bold]x[/]" in shown


def test_the_stored_lines_are_asked_with_every_name_checked() -> None:
    query = influxql_device_logs(3600, ["env-0001", "th-0002"], ("error", "critical"), 50)
    assert query == (
        'SELECT * FROM "device_logs" WHERE time > now() - 3600s AND "device" =~ /^(env-0001|th-0002)$/'
        ' AND "level" =~ /^(error|critical)$/ ORDER BY time DESC LIMIT 50'
    )
    assert "(?!)" in influxql_device_logs(60, [], None, 1)  # no device of the site: nothing matches
    flux = flux_device_logs("telemetry", 60, ["env-0001"], ("error",), 10)
    assert 'contains(value: r.device, set: ["env-0001"])' in flux and "range(start: -60s)" in flux
    for build in (influxql_device_logs, lambda *a: flux_device_logs("b", *a)):
        with pytest.raises(InvalidIdentifier):
            build(60, ["x/ or true or /"], None, 1)
        with pytest.raises(ValueError):
            build(60, None, ["fatal'"], 1)


def test_the_jsonl_output_cannot_answer_for_logs(tmp_path: Path) -> None:
    reader = JsonLinesReader(Settings(outputs="jsonl", jsonl_path=tmp_path / "p.jsonl"))
    with pytest.raises(Unreadable) as refused:
        reader.device_logs(60)
    assert "logs" in str(refused.value) and "IOT_OUTPUTS" in str(refused.value)


# --- the logs' own retention policy (IOT_LOG_RETENTION) ------------------------------------------------


def test_a_retention_of_their_own_is_a_duration_influxdb_takes_or_nothing() -> None:
    assert Settings().log_rp == ""
    assert Settings(log_retention="14d").log_rp == LOG_RETENTION_POLICY
    for bad in ("14", "0d", "14 days", "1y", "14d; DROP DATABASE telemetry"):
        with pytest.raises(ValidationError):
            Settings(log_retention=bad)


def test_the_logs_service_alone_writes_into_the_logs_retention_policy() -> None:
    settings = Settings(log_retention="14d", influx_rp="raw")
    assert output_settings(settings, "logs").influx_rp == LOG_RETENTION_POLICY
    assert output_settings(settings, "telemetry").influx_rp == "raw"
    assert output_settings(Settings(influx_rp="raw"), "logs").influx_rp == "raw"
    query = influxql_device_logs(60, None, None, 5, LOG_RETENTION_POLICY)
    assert query.startswith('SELECT * FROM "device_logs"."device_logs" WHERE')


def test_the_stack_creates_the_policy_then_alters_it() -> None:
    settings = Settings(log_retention="14d")
    assert log_retention_statement(settings, exists=False) == (
        'CREATE RETENTION POLICY "device_logs" ON "telemetry" DURATION 14d REPLICATION 1'
    )
    assert log_retention_statement(settings, exists=True) == (
        'ALTER RETENTION POLICY "device_logs" ON "telemetry" DURATION 14d'
    )


def test_tail_shows_a_log_line_by_its_level() -> None:
    shown = describe("logs.env-0001.error", body(fields={"attempt": 3}))
    assert (shown.text, shown.style) == ("error sensor timeout  attempt=3", "red")
    assert describe("logs.env-0001.error", b"{").text.startswith("invalid (bad_json)")
