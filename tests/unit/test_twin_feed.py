"""The twin's readings from the telemetry of its own process (no side queue), and when it gets them so."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

from hub.core.config import Settings
from hub.core.contract import Reading, now_ms
from hub.core.models import default_models
from hub.outputs.fanout import OutputSet
from hub.runtime import topology
from hub.runtime.handler import NOTHING, ROLE_ACTIVE, ROLE_STANDBY
from hub.runtime.runner import Runner
from hub.runtime.snapshot import STALL_S, Snapshot
from hub.runtime.stub import FakeClock, MemoryOutput, StubConsumer
from hub.services import build_services
from hub.services.rules.engine import Engine
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.service import TelemetryHandler
from hub.services.telemetry.stage import TelemetryStage
from hub.services.twin.book import MIN_SILENCE_MS, TwinBook
from hub.services.twin.feed import MAX_WAITING_READINGS, ReadingsFeed
from hub.services.twin.service import TwinHandler
from tests.empty_reader import EmptyReader

DEVICE = "th-0001"
KEY = f"telemetry.s.thermostat.{DEVICE}"
TS = 1_765_000_000_000


def _reading(ts: int, setpoint: float) -> dict[str, Any]:
    return {"ts": ts, "readings": {"temperature": 20.0, "setpoint": setpoint, "heating": True}}


def _single(seq: int, ts: int, setpoint: float) -> bytes:
    identity = {"v": 1, "device": DEVICE, "site": "s", "kind": "thermostat"}
    return json.dumps({**identity, "seq": seq, **_reading(ts, setpoint)}).encode()


def _batch(*entries: tuple[int, int, float]) -> bytes:
    batch = [{"seq": seq, **_reading(ts, setpoint)} for seq, ts, setpoint in entries]
    return json.dumps({"v": 1, "device": DEVICE, "site": "s", "kind": "thermostat", "batch": batch}).encode()


def _telemetry(feed: ReadingsFeed) -> TelemetryHandler:
    stage = TelemetryStage(ReadingJudge(default_models(), "store"), Engine([]))
    return TelemetryHandler(stage, TelemetryHandler.from_settings(Settings(), []).declaration, twin=feed)


def _run_telemetry_in_its_own_thread(handler: TelemetryHandler, *bodies: bytes) -> MemoryOutput:
    stop, clock = threading.Event(), FakeClock()
    broker = StubConsumer(stop, clock)
    broker.stop_when = lambda: broker.idle
    for one in bodies:
        broker.put(topology.partition(0).name, KEY, one)
    output = MemoryOutput()
    runner = Runner(handler, broker, OutputSet.of(output), [], stop, clock=clock, wait=clock.advance)
    thread = threading.Thread(target=runner.run, name="telemetry")
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and len(broker.acked) == len(bodies)
    return output


def test_the_readings_telemetry_reads_reach_the_twin_in_its_own_thread_batches_included() -> None:
    feed = ReadingsFeed()
    twin = TwinHandler(TwinBook(default_models()), EmptyReader(), feed)
    twin.on_consuming(0)
    stored = _run_telemetry_in_its_own_thread(
        _telemetry(feed), _single(1, TS, 21.0), _batch((3, TS + 3000, 23.0), (2, TS + 2000, 22.0))
    )
    assert len(stored.points) == 3, "telemetry stores as before"
    assert DEVICE not in twin.book.twins, "nothing applied before the twin takes it, in its own thread"
    effects = twin.tick(now_ms(), ROLE_ACTIVE)
    book_twin = twin.book.twins[DEVICE]
    assert book_twin.reported["setpoint"] == 23.0, "the batch's newest entry is the report"
    assert (book_twin.site, book_twin.kind, book_twin.online) == ("s", "thermostat", True)
    assert [p.measurement for p in effects.points] == ["twins"], "stored as a side-queue reading's would be"
    assert twin.tick(now_ms(), ROLE_ACTIVE) is NOTHING, "each reading once"


def test_a_fed_twin_declares_no_side_queue_and_one_alone_keeps_its_own() -> None:
    fed = TwinHandler(TwinBook(default_models()), EmptyReader(), ReadingsFeed())
    alone = TwinHandler(TwinBook(default_models()), EmptyReader())
    assert fed.declaration.side == () and fed.declaration.queues == (topology.TWIN,)
    [side] = alone.declaration.side
    assert side.name.startswith("hub.twin.readings.") and side.bindings == ("telemetry.#",)


def test_a_standby_fed_twin_takes_the_readings_and_stores_and_sends_nothing() -> None:
    feed = ReadingsFeed()
    twin = TwinHandler(TwinBook(default_models()), EmptyReader(), feed)
    twin.on_consuming(0)
    _run_telemetry_in_its_own_thread(_telemetry(feed), _single(1, TS, 21.0))
    assert twin.tick(now_ms(), ROLE_STANDBY) is NOTHING
    assert twin.book.twins[DEVICE].reported["setpoint"] == 21.0
    assert twin.tick(now_ms(), ROLE_STANDBY) is NOTHING


def test_no_reading_while_telemetry_stalls_is_silence() -> None:
    snapshot = Snapshot("telemetry", connected=True, reading_since_ms=0)
    feed = ReadingsFeed(source=lambda: snapshot)
    twin = TwinHandler(TwinBook(default_models()), EmptyReader(), feed)
    twin.on_consuming(0)
    _run_telemetry_in_its_own_thread(_telemetry(feed), _single(1, TS, 21.0))
    read_at = now_ms()
    twin.tick(read_at, ROLE_ACTIVE)
    assert twin.book.twins[DEVICE].online
    snapshot = replace(snapshot, retrying=True, writing_since=time.monotonic() - STALL_S - 0.05)
    twin.tick(read_at + MIN_SILENCE_MS * 10, ROLE_ACTIVE)
    assert twin.book.twins[DEVICE].online, "telemetry retries a write: the silence is not the device's"
    snapshot = Snapshot("telemetry", connected=True, reading_since_ms=read_at + MIN_SILENCE_MS * 10)
    twin.tick(read_at + MIN_SILENCE_MS * 11 - 1, ROLE_ACTIVE)
    assert twin.book.twins[DEVICE].online, "silence counts from when telemetry reads again"
    twin.tick(read_at + MIN_SILENCE_MS * 20, ROLE_ACTIVE)
    assert not twin.book.twins[DEVICE].online, "and then it is the device's"


def test_the_feed_keeps_the_newest_readings_when_the_twin_cannot_take_them() -> None:
    feed = ReadingsFeed()
    readings = [
        Reading(device=DEVICE, site="s", kind="thermostat", seq=n, ts=TS + n, readings={"setpoint": float(n % 30 + 5)})
        for n in range(MAX_WAITING_READINGS + 5)
    ]
    feed.batch(readings, 0)
    book = TwinBook(default_models())
    assert feed.take(book) == MAX_WAITING_READINGS and feed.take(book) == 0
    assert book.twins[DEVICE].reported["setpoint"] == readings[-1].readings["setpoint"]


def _wired(settings: Settings, names: tuple[str, ...]) -> tuple[TelemetryHandler | None, TwinHandler]:
    runners = build_services(settings, names, threading.Event(), [])
    handlers = {runner.name: runner.handler for runner in runners}
    telemetry = handlers.get("telemetry")
    twin = handlers["twin"]
    assert isinstance(twin, TwinHandler)
    assert telemetry is None or isinstance(telemetry, TelemetryHandler)
    return telemetry, twin


def test_the_twin_is_fed_only_beside_telemetry_of_every_partition() -> None:
    telemetry, twin = _wired(Settings(partitions=2), ("telemetry", "twin"))
    assert telemetry is not None and twin.feed is not None and telemetry.twin is twin.feed
    assert twin.declaration.side == () and twin.feed.source is not None
    _, alone = _wired(Settings(partitions=2), ("twin",))
    assert alone.feed is None and len(alone.declaration.side) == 1
    some, part = _wired(Settings(partitions=2, hub_partitions="0"), ("telemetry", "twin"))
    assert some is not None and some.twin is None and part.feed is None and len(part.declaration.side) == 1
