"""Presence across a hub restart: the time the hub was away is not silence, and nothing is forgotten."""

from __future__ import annotations

import time
from dataclasses import replace

from hub.clients.influx import Series
from hub.core.contract import Presence, now_ms
from hub.runtime.handler import NOTHING, ROLE_ACTIVE, ROLE_STANDBY
from hub.runtime.snapshot import STALL_S, Snapshot
from hub.services.presence.recorded import states_from_series
from hub.services.presence.service import RECONNECT_GRACE_S, PresenceHandler
from hub.services.presence.signs import SignsFeed
from hub.services.presence.tracker import MIN_SILENCE_MS, OFFLINE_AFTER_INTERVALS, PresenceTracker
from tests.empty_reader import EmptyReader

INTERVAL_MS = 1000
ALLOWED_SILENCE_MS = OFFLINE_AFTER_INTERVALS * INTERVAL_MS


def _online(tracker: PresenceTracker, device: str, at_ms: int) -> None:
    tracker.on_status(
        Presence(
            device=device, state="online", protocol="stomp", kind="environment", site="plant-a",
            interval_ms=INTERVAL_MS, ts=at_ms,
        ),
        at_ms,
    )  # fmt: skip


def test_silence_is_counted_only_from_when_the_hub_consumes_again() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    _online(tracker, "d-1", 0)
    back = 60_000  # the hub (or the broker) was away for a minute
    tracker.heard_from_all(back)
    assert tracker.silent(back + ALLOWED_SILENCE_MS) == [], "its absence is not the device's silence"
    tracker.on_telemetry("d-1", "plant-a", "environment", "stomp", device_ts=back + 500, at_ms=back + 500)
    assert tracker.silent(back + 500 + ALLOWED_SILENCE_MS) == []
    [gone] = tracker.silent(back + 500 + ALLOWED_SILENCE_MS + 1)
    assert (gone.device, gone.reason) == ("d-1", "silent"), "silence after the hub is back still counts"


def test_a_device_never_heard_from_after_the_hub_is_back_goes_offline_after_the_grace() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    _online(tracker, "d-1", 0)
    tracker.heard_from_all(60_000)
    assert tracker.silent(60_000 + ALLOWED_SILENCE_MS) == []
    assert [t.device for t in tracker.silent(60_000 + ALLOWED_SILENCE_MS + 1)] == ["d-1"]


def _recorded(device: str, state: str, at_ms: int) -> Series:
    row = {
        "time": at_ms, "fw": "sim-1", "interval_ms": INTERVAL_MS, "kind": "environment", "online": state == "online",
        "protocol": "stomp", "reason": "status", "site": "plant-a", "state": state,
    }  # fmt: skip
    return Series("device_status", {"device": device}, [row])


def test_a_restarted_hub_starts_from_the_recorded_states() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.seed(states_from_series([_recorded("d-on", "online", 1000), _recorded("d-off", "offline", 2000)]))
    start = 90_000
    tracker.heard_from_all(start)
    again = tracker.on_telemetry("d-on", "plant-a", "environment", "stomp", device_ts=start, at_ms=start)
    assert again is None, "a device recorded online and still streaming is not recorded online twice"
    stale = tracker.on_telemetry("d-off", "plant-a", "environment", "stomp", device_ts=1500, at_ms=start)
    assert stale is None, "a reading from before it went offline does not bring it back"
    assert tracker.silent(start + ALLOWED_SILENCE_MS) == []
    assert not tracker.devices["d-off"].online


def test_a_device_recorded_online_that_died_while_the_hub_was_away_is_found_silent() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    tracker.seed(states_from_series([_recorded("d-gone", "online", 1000)]))
    tracker.heard_from_all(90_000)
    [gone] = tracker.silent(90_000 + ALLOWED_SILENCE_MS + 1)
    assert (gone.device, gone.online, gone.reason, gone.site) == ("d-gone", False, "silent", "plant-a")


def test_a_state_the_hub_heard_before_the_seed_is_kept() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    _online(tracker, "d-1", 5000)
    tracker.seed(states_from_series([_recorded("d-1", "offline", 1000)]))
    assert tracker.devices["d-1"].online


def test_a_stall_of_the_feeding_runner_is_not_silence_and_a_short_write_changes_nothing() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    snapshot = Snapshot("telemetry", connected=True, reading_since_ms=0)
    feed = SignsFeed(tracker, source=lambda: snapshot)
    _online(tracker, "d-1", 0)
    snapshot = replace(snapshot, writing_since=time.monotonic())
    assert not feed.stalled() and tracker.silence_from_ms == 0, "a write of a few milliseconds"
    snapshot = replace(snapshot, writing_since=time.monotonic() - STALL_S - 0.05)
    assert feed.stalled(), "held up: silence is not judged meanwhile"
    snapshot = replace(snapshot, retrying=True, writing_since=time.monotonic())
    assert feed.stalled(), "a write retried: nothing is read"
    snapshot = Snapshot("telemetry", connected=True, reading_since_ms=20_000)  # reading again since then
    assert not feed.stalled()
    assert tracker.silent(20_000 + ALLOWED_SILENCE_MS) == [], "counted again from the end of the stall"
    assert [t.device for t in tracker.silent(20_000 + ALLOWED_SILENCE_MS + 1)] == ["d-1"]
    snapshot = Snapshot("telemetry", connected=False, reading_since_ms=20_000)
    assert feed.stalled(), "disconnected"


def test_signs_wait_raw_until_presence_takes_them_in_its_own_thread() -> None:
    tracker = PresenceTracker(min_silence_ms=0)
    feed = SignsFeed(tracker)
    feed.sign("d-2", "plant-a", "environment", "mqtt", device_ts=1000, at_ms=1000)
    assert "d-2" not in tracker.devices, "not applied by the feeding thread"
    [transition] = feed.take()
    assert (transition.device, transition.reason, transition.online) == ("d-2", "telemetry", True)
    assert feed.take() == [] and not feed.stalled(), "presence's own side queue never stalls"


def test_a_device_reporting_every_fifth_of_a_second_is_silent_after_five_seconds_not_after_three_intervals() -> None:
    tracker = PresenceTracker()
    tracker.on_telemetry("d-fast", "plant-a", "environment", "mqtt", device_ts=0, at_ms=0)
    tracker.on_telemetry("d-fast", "plant-a", "environment", "mqtt", device_ts=200, at_ms=200)
    assert tracker.silent(200 + MIN_SILENCE_MS) == [], "a hub a second late is not a device gone"
    assert [t.device for t in tracker.silent(200 + MIN_SILENCE_MS + 1)] == ["d-fast"]


class _Recorded(EmptyReader):
    """A reader of what `device_status` recorded (the read side's protocol, in memory)."""

    def __init__(self, *series: Series) -> None:
        self.series = list(series)
        self.reads = 0

    def device_states(self) -> list[Series]:
        self.reads += 1
        return self.series


def _presence(*recorded: Series) -> PresenceHandler:
    handler = PresenceHandler(SignsFeed(PresenceTracker()), _Recorded(*recorded), own_signs=False)
    _online(handler.tracker, "env-standby", now_ms() - 60_000)  # silent for a minute
    return handler


def test_a_standby_presence_records_nothing_and_judges_no_silence() -> None:
    assert _presence().tick(now_ms(), ROLE_STANDBY) is NOTHING


def test_a_standby_that_takes_over_counts_silence_only_from_a_grace_after_the_handover() -> None:
    handler = _presence()
    handler.tick(now_ms(), ROLE_STANDBY)
    assert handler.tick(now_ms(), ROLE_ACTIVE) is NOTHING and not handler.was_standby
    later = now_ms() + round(RECONNECT_GRACE_S * 1000) + ALLOWED_SILENCE_MS + MIN_SILENCE_MS
    assert [t.device for t in handler.tracker.silent(later)] == ["env-standby"]


def test_the_untouched_active_presence_still_finds_a_silent_device() -> None:
    effects = _presence().tick(now_ms(), ROLE_ACTIVE)
    assert [point.tags["device"] for point in effects.points] == ["env-standby"]
    assert list(effects.events) == [("transition", "offline", "silent")]


def test_presence_starts_from_what_was_recorded_before_it_takes_any_sign_of_life() -> None:
    feed = SignsFeed(PresenceTracker())
    reader = _Recorded(_recorded("d-on", "online", now_ms() - 5_000))
    handler = PresenceHandler(feed, reader, own_signs=False)
    feed.sign("d-on", "plant-a", "environment", "stomp", now_ms(), now_ms())  # telemetry, before presence consumes
    handler.on_consuming(now_ms())
    handler.on_consuming(now_ms())
    assert reader.reads == 1, "recorded states are read once, at the first connect"
    assert handler.tick(now_ms(), ROLE_ACTIVE) is NOTHING, "a device recorded online and streaming: nothing new"
