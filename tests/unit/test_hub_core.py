"""The hub's deciding logic without I/O: line protocol, batching, rules, presence, command outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.core.config import load_settings
from hub.core.contract import Ack, Command, Presence, Protocol, Reading
from hub.core.errors import ConfigError
from hub.core.points import Point
from hub.outputs.influxdb_v2 import InfluxV2Output
from hub.outputs.lineprotocol import point, point_line
from hub.outputs.registry import open_output
from hub.runtime.batch import BATCH_MAX_POINTS, FLUSH_INTERVAL_S, IDLE_GAP_S, LINGER_S, Batch
from hub.runtime.health import stats_points
from hub.runtime.metrics import ServiceStats
from hub.runtime.topology import COMMANDS
from hub.services.commands.ledger import (
    LATE_COMMAND_GRACE_MS,
    MAX_EARLY_ACKS,
    ORPHAN_ACK_GRACE_MS,
    TIMEOUT_GRACE_MS,
    CommandLedger,
    Recorded,
)
from hub.services.presence.tracker import OFFLINE_AFTER_INTERVALS, PresenceTracker
from hub.services.rules.engine import Engine
from hub.services.rules.loader import load_rules, parse_rules
from hub.services.rules.model import Action, RateOfChange, Stuck, Threshold, ZScore
from hub.services.store.readings import reading_point
from tests.support import REPO


def _reading(
    seq: int = 1, kind: str = "thermostat", device: str = "th-1", ts: int = 1_000_000, **values: float
) -> Reading:
    return Reading(device=device, site="plant-a", kind=kind, seq=seq, ts=ts, readings=values or {"temperature": 21.0})


def reading_line(reading: Reading, protocol: Protocol) -> str:
    """What the store writes for a reading: its point, as InfluxDB line protocol."""
    return point_line(reading_point(reading, protocol))


def lines(recorded: Recorded) -> list[str]:
    return [point_line(p) for p in recorded.points]


def named(name: str) -> Point:
    return Point(name, {}, {"x": 1}, 0)


# --- line protocol -------------------------------------------------------------------------------


def test_a_reading_becomes_one_line_with_kind_tags_fields_seq_and_ms_timestamp() -> None:
    reading = Reading(
        device="env-7", site="plant-a", kind="environment", seq=42, ts=1763823456123,
        readings={"temperature": 21.5, "humidity": 40.0, "relay": True},
    )  # fmt: skip
    assert reading_line(reading, "mqtt") == (
        "environment,device=env-7,protocol=mqtt,site=plant-a temperature=21.5,humidity=40.0,relay=true,seq=42i "
        "1763823456123"
    )


def test_line_protocol_escapes_everything_that_could_break_or_inject_a_line() -> None:
    line = point(
        "my meas,x",
        {"tag key": "a,b=c d\\", "empty": ""},
        {"msg": 'say "hi"\nnext line,x=1 2', "n": 3, "on": False},
        5,
    )
    assert line == (r"my\ meas\,x,tag\ key=a\,b\=c\ d\\ " + r'msg="say \"hi\"\nnext line,x=1 2",n=3i,on=false 5')
    assert "\n" not in line


def test_line_protocol_refuses_nan_and_pointless_points() -> None:
    with pytest.raises(ValueError):
        point("m", {}, {"x": float("nan")}, 1)
    with pytest.raises(ValueError):
        point("m", {}, {}, 1)


# --- batching ------------------------------------------------------------------------------------


def add(batch: Batch, tag: int, point: Point | None, now: float) -> None:
    """What the runner does with a delivery's effects: open the batch, write its point, settle it."""
    batch.open(now)
    if point is not None:
        batch.write(point)
    if tag:
        batch.settle(tag, tag)


def test_a_batch_is_due_when_full_or_when_its_oldest_point_waited_the_flush_interval() -> None:
    batch = Batch(max_points=3, flush_interval_s=FLUSH_INTERVAL_S)
    assert not batch.due(now=0.0)
    add(batch, 1, named("a"), now=10.0)
    add(batch, 2, named("b"), now=10.05)
    assert not batch.due(now=10.1)
    assert batch.due(now=10.0 + FLUSH_INTERVAL_S + 0.001)
    add(batch, 3, named("c"), now=10.1)
    assert batch.due(now=10.1), "full"
    assert BATCH_MAX_POINTS >= 1000


def test_a_batch_is_due_once_it_lingered_and_the_deliveries_paused_but_not_while_they_keep_coming() -> None:
    batch = Batch(max_points=100)
    add(batch, 1, named("a"), now=10.0)
    assert not batch.due(now=10.0 + LINGER_S / 2, idle=True), "too young: more may come"
    assert batch.next_check_s(now=10.0 + LINGER_S / 2) == pytest.approx(LINGER_S / 2)
    assert not batch.due(now=10.0 + LINGER_S, idle=False), "deliveries still coming: keep batching"
    assert batch.due(now=10.001 + LINGER_S, idle=True)
    assert batch.next_check_s(now=10.001 + LINGER_S) == IDLE_GAP_S
    assert batch.next_check_s(now=10.0 + FLUSH_INTERVAL_S - 0.001) == pytest.approx(0.001)
    assert not Batch().due(now=10.0, idle=True), "an empty batch is never due"
    acks_only = Batch()
    add(acks_only, 1, None, now=10.0)
    assert not acks_only.due(now=10.001 + LINGER_S, idle=True), "nothing to show: the timer acks it"
    assert acks_only.next_check_s(now=10.0 + LINGER_S) == pytest.approx(FLUSH_INTERVAL_S - LINGER_S)


def test_a_batch_of_refused_deliveries_alone_is_full_at_max_points_deliveries() -> None:
    batch = Batch(max_points=3)
    for tag in (1, 2, 3):
        add(batch, tag, None, now=0.0)
    assert batch.due(now=0.0)


def test_one_ack_covers_written_and_dead_lettered_deliveries_alike() -> None:
    batch = Batch()
    add(batch, 7, named("a"), now=0)
    add(batch, 8, None, now=0)  # dead-lettered with confirms: settled by the same ack
    add(batch, 9, named("b"), now=0)
    add(batch, 0, named("presence timeout"), now=0)  # a point that settles no delivery
    assert batch.last_tag == 9
    assert batch.deliveries == 3
    assert [p.measurement for p in batch.points] == ["a", "b", "presence timeout"]


def test_a_batch_of_only_timer_points_is_not_empty() -> None:
    batch = Batch()
    add(batch, 0, named("x"), now=0)
    assert not batch.empty and batch.last_tag == 0


# --- rules -----------------------------------------------------------------------------------------


def _fired(engine: Engine, reading: Reading, now_ms: int = 0) -> int:
    return len(engine.evaluate(reading, now_ms).decisions)


def test_threshold_rule_alerts_sends_its_command_and_then_holds_off_for_its_cooldown() -> None:
    rule = Threshold(
        name="hot", sensor="temperature", kind="thermostat", above=26.0, cooldown_s=60,
        action=Action(command="set_setpoint", args={"value": 20.0}),
    )  # fmt: skip
    engine = Engine([rule])
    [decision] = engine.evaluate(_reading(1, ts=1_000, temperature=29.0), now_ms=5_000).decisions
    assert decision.alert.rule == "hot" and decision.alert.value == 29.0
    assert decision.alert.routing_key == "alerts.warning.plant-a.th-1"
    assert decision.alert.ts == 1_000, "the reading's time, not the hub's"
    assert decision.command is not None
    assert (decision.command.command, decision.command.args) == ("set_setpoint", {"value": 20.0})
    assert decision.command.expires > decision.command.ts
    assert _fired(engine, _reading(2, ts=30_000, temperature=29.0)) == 0, "the cooldown counts in reading time"
    assert _fired(engine, _reading(3, ts=61_001, temperature=29.0)) == 1
    assert _fired(engine, _reading(4, device="th-2", ts=61_002, temperature=25.0)) == 0
    assert _fired(engine, _reading(5, device="th-2", ts=61_003, temperature=27.0)) == 1, "per device"


def test_threshold_rule_ignores_other_kinds() -> None:
    engine = Engine([Threshold(name="hot", sensor="temperature", kind="thermostat", above=26.0)])
    assert _fired(engine, _reading(1, kind="environment", temperature=40.0)) == 0


def test_zscore_rule_flags_an_outlier_after_enough_samples_only() -> None:
    engine = Engine([ZScore(name="odd", sensor="temperature", window=50, min_samples=20, threshold=4.0)])
    for seq in range(30):
        assert _fired(engine, _reading(seq, ts=1000 + seq, temperature=21.0 + (seq % 3) * 0.1)) == 0
    [decision] = engine.evaluate(_reading(31, ts=2000, temperature=30.0), now_ms=31).decisions
    assert "z-score" in decision.alert.message


def test_stuck_rule_fires_from_the_nth_repeat_on_within_its_cooldown() -> None:
    engine = Engine([Stuck(name="stuck", sensor="temperature", samples=5, cooldown_s=0)])
    fired = [_fired(engine, _reading(seq, ts=1000 + seq, temperature=21.0)) for seq in range(8)]
    assert fired == [0, 0, 0, 0, 1, 1, 1, 1], "the condition holds while the value stays"
    held_off = Engine([Stuck(name="stuck", sensor="temperature", samples=5, cooldown_s=60)])
    fired = [_fired(held_off, _reading(seq, ts=1000 + seq, temperature=21.0)) for seq in range(8)]
    assert fired == [0, 0, 0, 0, 1, 0, 0, 0]


def test_rate_of_change_rule_uses_reading_timestamps() -> None:
    engine = Engine([RateOfChange(name="jump", sensor="humidity", max_per_s=5.0)])
    assert _fired(engine, _reading(1, ts=0, humidity=40.0)) == 0
    assert _fired(engine, _reading(2, ts=1000, humidity=44.0)) == 0
    assert _fired(engine, _reading(3, ts=2000, humidity=60.0)) == 1


def test_the_shipped_rules_file_loads() -> None:
    names = [rule.name for rule in load_rules(REPO / "rules.yaml")]
    assert "thermostat-too-hot" in names and "co2-high" in names


def test_rules_file_errors_name_the_file_and_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"my\.yaml: rule 'bad-one'.*abov"):
        parse_rules("rules:\n  - {name: bad-one, type: threshold, sensor: temperature, abov: 3}\n", "my.yaml")
    with pytest.raises(ConfigError, match=r"rule 'x'.*threshold"):
        parse_rules("rules:\n  - {name: x, type: threshold, sensor: temperature}\n", "f")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_rules("rules: [", "f")
    with pytest.raises(ConfigError, match="unique"):
        parse_rules("rules:\n  - {name: a, type: stuck, sensor: co2}\n  - {name: a, type: stuck, sensor: co2}\n")
    with pytest.raises(ConfigError, match="rules file"):
        load_rules(REPO / "no-such-rules.yaml")


# --- presence --------------------------------------------------------------------------------------


def _status(state: str, ts: int, protocol: str = "mqtt", interval_ms: int = 1000, site: str = "plant-a") -> Presence:
    return Presence(
        device="d-1", state=state, protocol=protocol, kind="environment", site=site,  # type: ignore[arg-type]
        interval_ms=interval_ms, fw="1.0", ts=ts,
    )  # fmt: skip


def test_only_transitions_are_reported() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    first = tracker.on_status(_status("online", 100), at_ms=100)
    assert first is not None and first.online and first.reason == "status"
    assert tracker.on_status(_status("online", 200), at_ms=200) is None
    off = tracker.on_status(_status("offline", 300), at_ms=300)
    assert off is not None and not off.online and off.reason == "status"


def test_a_device_silent_for_three_intervals_goes_offline_and_comes_back_with_telemetry() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.on_status(_status("online", 0, protocol="stomp", interval_ms=1000), at_ms=0)
    tracker.on_telemetry("d-1", "plant-a", "environment", "stomp", device_ts=1000, at_ms=1000)
    limit = 1000 + OFFLINE_AFTER_INTERVALS * 1000
    assert tracker.silent(limit) == []
    [gone] = tracker.silent(limit + 1)
    assert (gone.online, gone.reason, gone.ts) == (False, "silent", limit + 1)
    assert tracker.silent(limit + 10_000) == [], "reported once"
    back = tracker.on_telemetry("d-1", "plant-a", "environment", "stomp", device_ts=9000, at_ms=9000)
    assert back is not None and back.online and back.reason == "telemetry"


def test_an_offline_status_older_than_the_last_sign_of_life_is_the_last_will() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.on_status(_status("online", 1000), at_ms=1000)
    tracker.on_telemetry("d-1", "plant-a", "environment", "mqtt", device_ts=5000, at_ms=5000)
    will = tracker.on_status(_status("offline", 900), at_ms=6000)  # body registered at connect time
    assert will is not None and will.reason == "last_will"


def test_a_reading_older_than_the_offline_status_does_not_bring_the_device_back() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.on_status(_status("online", 1000), at_ms=1000)
    tracker.on_status(_status("offline", 3000), at_ms=3000)
    assert tracker.on_telemetry("d-1", "plant-a", "environment", "mqtt", device_ts=2500, at_ms=4000) is None
    assert not tracker.devices["d-1"].online
    back = tracker.on_telemetry("d-1", "plant-a", "environment", "mqtt", device_ts=5000, at_ms=5000)
    assert back is not None and back.online


def test_an_online_device_that_moves_site_is_recorded_again() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.on_status(_status("online", 1000), at_ms=1000)
    moved = tracker.on_status(_status("online", 2000, site="plant-b"), at_ms=2000)
    assert moved is not None and (moved.online, moved.site) == (True, "plant-b")
    assert tracker.on_status(_status("online", 3000, site="plant-b"), at_ms=3000) is None


def test_a_device_seen_only_by_telemetry_gets_an_interval_estimate() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.on_telemetry("d-2", "plant-a", "environment", "mqtt", device_ts=0, at_ms=0)
    tracker.on_telemetry("d-2", "plant-a", "environment", "mqtt", device_ts=500, at_ms=500)
    assert tracker.silent(500 + 3 * 500 + 1)[0].reason == "silent"


# --- command outcomes --------------------------------------------------------------------------------


def _command(ts: int = 1000, expires: int = 11_000) -> Command:
    return Command(id="c-1", command="ping", ts=ts, expires=expires)


def test_an_ack_records_the_outcome_with_its_round_trip_and_origin() -> None:
    ledger = CommandLedger()
    [sent] = lines(ledger.on_command("dev-1", _command(), "rule", at_ms=1005))
    assert sent.startswith("commands,command=ping,device=dev-1,origin=rule,status=sent ")
    acked = ledger.on_ack(Ack(id="c-1", device="dev-1", status="ok", ts=1030), at_ms=1042, token=7)
    [line] = lines(acked)
    assert line.startswith("commands,command=ping,device=dev-1,origin=rule,status=ok ")
    assert "rtt_ms=30.0" in line, "the round trip between the command's and the ack's own times"
    assert line.endswith(" 1030"), "stamped with the device's ack time"
    assert acked.released == [7], "the ack's delivery is settled with its point"
    assert ledger.timed_out(10**9) == Recorded()


def test_a_command_without_ack_by_its_expiry_times_out_once() -> None:
    ledger = CommandLedger()
    ledger.on_command("dev-1", _command(), "cli", at_ms=1000)
    assert lines(ledger.timed_out(11_000 + TIMEOUT_GRACE_MS)) == []
    timed_out = ledger.timed_out(11_001 + TIMEOUT_GRACE_MS)
    [line] = lines(timed_out)
    assert ",status=timeout " in line and ",origin=cli," in line
    assert timed_out.released == [], "a timeout settles no delivery"
    assert ledger.timed_out(10**9) == Recorded()


def test_an_ack_that_overtakes_its_command_is_held_then_recorded_with_the_commands_name_origin_and_rtt() -> None:
    ledger = CommandLedger()
    held = ledger.on_ack(Ack(id="c-1", device="dev-1", status="ok", ts=1030), at_ms=1042, token=5)
    assert held == Recorded(), "nothing written and the ack's delivery not settled yet"
    assert ledger.held_tokens() == [5]
    assert ledger.timed_out(1042 + ORPHAN_ACK_GRACE_MS) == Recorded(), "still within the grace"
    recorded = ledger.on_command("dev-1", _command(ts=1000), "rule", at_ms=1050)
    sent, ok = lines(recorded)
    assert sent.startswith("commands,command=ping,device=dev-1,origin=rule,status=sent ")
    assert sent.endswith(" 1000"), "sent is stamped with the command's own time, before its outcome"
    assert ok.startswith("commands,command=ping,device=dev-1,origin=rule,status=ok ")
    assert "rtt_ms=30.0" in ok and ok.endswith(" 1030")
    assert recorded.released == [5], "the held ack is settled once, with these points"
    assert ledger.held_tokens() == []
    assert ledger.timed_out(10**9) == Recorded(), "a command whose ack was seen never times out"


def test_an_early_ack_unmatched_after_the_grace_is_refused_and_never_recorded() -> None:
    ledger = CommandLedger()
    ledger.on_ack(Ack(id="c-1", device="dev-1", status="error", detail="bad args", ts=1030), at_ms=2000, token=9)
    assert ledger.timed_out(2000 + ORPHAN_ACK_GRACE_MS) == Recorded(), "still within the grace"
    expired = ledger.timed_out(2001 + ORPHAN_ACK_GRACE_MS)
    assert expired.points == [] and expired.released == []
    [refused] = expired.refused
    assert (refused.token, refused.reason) == (9, "unknown_command")
    assert "no command c-1 was sent to dev-1" in refused.detail
    assert ledger.held_tokens() == [] and ledger.timed_out(10**9) == Recorded(), "refused once"


def test_early_acks_are_bounded_and_the_oldest_are_refused_first() -> None:
    ledger = CommandLedger(max_early_acks=2)
    for index in range(2):
        early = Ack(id=f"c-{index}", device="dev-1", status="ok", ts=1)
        assert ledger.on_ack(early, at_ms=10, token=index + 1) == Recorded()
    evicted = ledger.on_ack(Ack(id="c-2", device="dev-1", status="ok", ts=1), at_ms=11, token=3)
    assert evicted.points == [] and [r.token for r in evicted.refused] == [1]
    assert sorted(ledger.held_tokens()) == [2, 3]
    assert COMMANDS.prefetch > MAX_EARLY_ACKS, "held deliveries must never fill the prefetch window"


def test_an_early_ack_said_twice_is_held_with_the_first_and_recorded_once() -> None:
    ledger = CommandLedger()
    for token in (1, 2):
        assert ledger.on_ack(Ack(id="c-1", device="dev-1", status="ok", ts=1030), at_ms=1042, token=token) == Recorded()
    both = ledger.on_command("dev-1", _command(), "cli", at_ms=1050, token=3)
    assert [line.split(" ")[0] for line in lines(both)] == [
        "commands,command=ping,device=dev-1,origin=cli,status=sent",
        "commands,command=ping,device=dev-1,origin=cli,status=ok",
    ], "one outcome, however often the device said it"
    assert sorted(both.released) == [1, 2, 3] and ledger.held_tokens() == []


def test_a_commands_delivery_is_held_until_its_outcome_is_recorded() -> None:
    ledger = CommandLedger()
    sent = ledger.on_command("dev-1", _command(), "cli", at_ms=1005, token=3)
    assert sent.released == [] and ledger.held_tokens() == [3]
    acked = ledger.on_ack(Ack(id="c-1", device="dev-1", status="ok", ts=1030), at_ms=1042, token=7)
    assert sorted(acked.released) == [3, 7] and ledger.held_tokens() == []
    ledger.on_command(
        "dev-1",
        _command(ts=2000, expires=3000).__class__(id="c-2", command="ping", ts=2000, expires=3000),
        "cli",
        at_ms=2000,
        token=9,
    )
    timed_out = ledger.timed_out(3001 + LATE_COMMAND_GRACE_MS + TIMEOUT_GRACE_MS)
    assert timed_out.released == [9]
    [line] = lines(timed_out)
    assert ",status=timeout " in line and line.endswith(" 3000"), "stamped at its expiry: the same point if redone"


def test_a_command_first_seen_after_its_expiry_waits_for_its_ack_instead_of_timing_out() -> None:
    """The hub was away longer than the command's expiry: its ack is still in the queue behind it."""
    ledger = CommandLedger()
    back_at = 11_000 + 60_000
    ledger.on_command("dev-1", _command(ts=1000, expires=11_000), "cli", at_ms=back_at, token=1)
    assert ledger.timed_out(back_at + 1_000) == Recorded(), "not a timeout because the hub was away"
    acked = ledger.on_ack(Ack(id="c-1", device="dev-1", status="ok", ts=1003), at_ms=back_at + 1_200, token=2)
    [line] = lines(acked)
    assert ",status=ok " in line and "rtt_ms=3.0" in line, "the round trip the device saw, not the hub's downtime"


def test_a_command_delivered_twice_is_one_lifecycle_and_no_delivery_is_left_held() -> None:
    ledger = CommandLedger()
    first = ledger.on_command("dev-1", _command(ts=1000, expires=11_000), "cli", at_ms=1000, token=4)
    again = ledger.on_command("dev-1", _command(ts=1000, expires=11_000), "cli", at_ms=9000, token=5)
    assert lines(first) == lines(again), "the same sent point: stored once"
    assert again.released == [4] and ledger.held_tokens() == [5]
    assert ledger.timed_out(11_000 + TIMEOUT_GRACE_MS) == Recorded(), "first seen at 1000: its expiry counts"
    ledger.forget_held()
    assert ledger.held_tokens() == [], "after a lost connection the broker delivers them all again"


def test_hub_stats_points_carry_the_service_counters() -> None:
    stats = ServiceStats("telemetry", received=10, stored=9, dead_lettered=1)
    stats.add_batch(0.004)
    [line] = map(point_line, stats_points("host-1", [stats], {"telemetry": 5}, 1234))
    assert line.startswith("hub_stats,instance=host-1,service=telemetry received=10i,stored=9i,dead_lettered=1i,")
    assert "batches=1i" in line and "batch_latency_ms=4.0" in line and "queue_depth=5i" in line


# --- writer choice ---------------------------------------------------------------------------------


def test_a_token_selects_the_v2_api_and_v2_without_credentials_is_a_config_error(tmp_path: Path) -> None:
    # A stack folder of its own, without secrets: the checkout's .stack would give InfluxDB credentials.
    settings = load_settings(
        influx_url="http://127.0.0.1:9", influx_token="t0ken", influx_org="acme", stack_dir=tmp_path
    )
    writer = open_output(settings, "influxdb")
    try:
        assert isinstance(writer, InfluxV2Output)
        assert (writer.bucket, writer.org) == ("telemetry", "acme")
    finally:
        writer.close()
    with pytest.raises(ConfigError, match="IOT_INFLUX_TOKEN"):
        open_output(load_settings(influx_url="http://127.0.0.1:9", influx_api="v2", stack_dir=tmp_path), "influxdb")


def test_the_fast_reading_line_equals_the_general_escaping_one() -> None:
    reading = Reading(
        device="d_1-x", site="s-2", kind="air_quality", seq=2**53, ts=0,
        readings={"co2": 1e-05, "voc": 1234567.0, "ventilation": False},
    )  # fmt: skip
    fields: dict[str, bool | int | float | str] = {**reading.readings, "seq": reading.seq}
    general = point(reading.kind, {"device": reading.device, "site": reading.site, "protocol": "stomp"}, fields, 0)
    assert reading_line(reading, "stomp") == general


def test_an_ack_after_its_command_timed_out_is_settled_but_not_recorded_again() -> None:
    ledger = CommandLedger()
    ledger.on_command("dev-1", _command(ts=1000, expires=11_000), "cli", at_ms=1000, token=1)
    assert len(lines(ledger.timed_out(20_000))) == 1
    late = ledger.on_ack(Ack(id="c-1", device="dev-1", status="expired", ts=30_000), at_ms=30_000, token=2)
    assert late == Recorded([], [2]), "one lifecycle per command: sent, then timeout"
