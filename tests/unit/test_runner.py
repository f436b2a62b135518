"""The runner's ack and settle logic on the in-memory stub broker (`hub.runtime.stub`), as
dramatiq's StubBroker tests its workers: redelivery, a failing output, a poison message,
confirms, held deliveries, the reconnect backoff. The same promises on a real RabbitMQ are in
tests/integration/test_hub_runtime.py and the hub's end-to-end tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from pika.spec import BasicProperties

from hub.core.errors import InvalidMessage
from hub.core.points import Point
from hub.outputs.fanout import OutputSet
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, Effects, Publish, Refusal
from hub.runtime.middleware import BatchReport, Middleware
from hub.runtime.runner import Runner
from hub.runtime.stub import FakeClock, MemoryOutput, StubConsumer
from hub.runtime.topology import Declaration, HubQueue

QUEUE = HubQueue("hub.test", ("test.#",), prefetch=100)
OTHER = HubQueue("hub.other", ("other.#",), prefetch=100)


@dataclass
class Recorder:
    """A test handler: body `n` -> a point of seq n; `bad` -> refused; `boom` -> a bug in the handler;
    `hold:n` -> held, `release:n` -> releases hold:n, `refuse:n` -> refuses hold:n; `publish:n` -> a
    message to publish beside its point."""

    name: str = "recorder"
    declaration: Declaration = field(default_factory=lambda: Declaration((QUEUE,)))
    seen: list[tuple[bytes, bool]] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    on_handle: Callable[[Delivery], None] = lambda _delivery: None
    ticks: list[str] = field(default_factory=list)
    consuming: list[int] = field(default_factory=list)

    def handle(self, delivery: Delivery) -> Effects:
        self.seen.append((delivery.body, delivery.redelivered))
        self.on_handle(delivery)
        word, _, arg = delivery.body.decode().partition(":")
        if word == "bad":
            raise InvalidMessage("schema", "not a number")
        if word == "boom":
            raise ZeroDivisionError("a bug in the handler")
        if word == "hold":
            self.held[arg] = delivery.tag
            return Effects(hold=True, events=(("held",),))
        if word == "release":
            return Effects(release=(self.held.pop(arg),))
        if word == "refuse":
            return Effects(refuse=(Refusal(self.held.pop(arg), "unknown_command", f"no {arg}"),))
        if word == "publish":
            message = Publish("iot", f"out.{arg}", b"{}", BasicProperties(), mandatory=False)
            return Effects(point(int(arg)), publishes=(message,))
        return Effects(point(int(word)), events=(("alert", "info", "r"),))

    def tick(self, now_ms: int, role: str) -> Effects:
        self.ticks.append(role)
        return NOTHING

    def on_consuming(self, now_ms: int) -> None:
        self.consuming.append(now_ms)
        self.held.clear()


def point(seq: int) -> Point:
    return Point("m", {"device": "d", "protocol": "amqp"}, {"seq": seq}, 1_000 + seq, True)


class Spy(Middleware):
    """Every signal, in order."""

    def __init__(self) -> None:
        self.signals: list[tuple[str, object]] = []
        self.reports: list[BatchReport] = []

    def after_connect(self, service: str) -> None:
        self.signals.append(("connect", service))

    def after_disconnect(self, service: str) -> None:
        self.signals.append(("disconnect", service))

    def after_settle(self, service: str, report: BatchReport) -> None:
        self.reports.append(report)
        self.signals.append(("settle", len(report.deliveries)))

    def after_dead_letter(self, service: str, reason: str) -> None:
        self.signals.append(("dead_letter", reason))

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None:
        self.signals.append(("write_failed", attempt))


@dataclass
class Rig:
    handler: Recorder
    broker: StubConsumer
    output: MemoryOutput
    spy: Spy
    runner: Runner
    waits: list[float]

    def run(self) -> None:
        self.runner.run()
        assert self.broker.rounds <= 10_000, "the run did not end by itself"


def rig(
    *bodies: str,
    handler: Recorder | None = None,
    output: MemoryOutput | None = None,
    broker_class: type[StubConsumer] = StubConsumer,
    until: Callable[[StubConsumer], bool] | None = None,
) -> Rig:
    stop = threading.Event()
    clock = FakeClock()
    handler = handler or Recorder()
    output = output or MemoryOutput()
    broker = broker_class(stop, clock)
    broker.stop_when = lambda: (until or (lambda b: b.idle))(broker)
    for body in bodies:
        broker.put(QUEUE.name, "test.x", body.encode())
    spy = Spy()
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    runner = Runner(handler, broker, OutputSet.of(output), [spy], stop, clock=clock, wait=wait)
    return Rig(handler, broker, output, spy, runner, waits)


def seqs(output: MemoryOutput) -> list[int]:
    return [int(p.fields["seq"]) for p in output.points]


def test_a_batch_is_acked_once_with_one_multiple_ack_after_its_points_are_written() -> None:
    acks: list[tuple[int, bool, int]] = []
    output = MemoryOutput()

    class Watching(StubConsumer):
        def ack(self, tag: int, multiple: bool) -> None:
            acks.append((tag, multiple, len(output.points)))
            super().ack(tag, multiple)

    r = rig(*[str(n) for n in range(10)], output=output, broker_class=Watching)
    r.run()
    assert seqs(r.output) == list(range(10))
    assert acks == [(10, True, 10)], "one ack for the whole batch, once its 10 points are written"
    assert len(r.broker.acked) == 10 and r.broker.connects == 1
    [report] = r.spy.reports
    assert (len(report.deliveries), report.points, report.stored, len(report.records)) == (10, 10, 10, 10)
    assert report.events == [("alert", "info", "r")] * 10, "the handler's events, once, with their batch"


def test_an_invalid_message_is_dead_lettered_with_its_reason_and_the_others_are_stored() -> None:
    r = rig("1", "bad", "2")
    r.run()
    assert seqs(r.output) == [1, 2]
    assert r.broker.dead_letters == [("test.x", "schema")]
    assert len(r.broker.acked) == 3, "the refused one is settled with its batch"
    assert ("dead_letter", "schema") in r.spy.signals


def test_a_poison_message_is_dead_lettered_internal_alone_without_a_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig("1", "boom", "2", "boom", "3")
    with caplog.at_level("ERROR"):
        r.run()
    assert seqs(r.output) == [1, 2, 3]
    assert r.broker.dead_letters == [("test.x", "internal")] * 2
    [letter, _] = [m for m in r.broker.published if m.exchange == "iot.dlx"]
    assert (letter.properties.headers or {})["x-iot-detail"].startswith("ZeroDivisionError: a bug")
    assert r.broker.connects == 1 and all(not redelivered for _body, redelivered in r.handler.seen)
    assert len([rec for rec in caplog.records if "event=internal_error" in rec.getMessage()]) == 1, "once per class"


def test_a_failing_output_keeps_the_batch_unacked_until_it_takes_it_and_nothing_is_lost() -> None:
    acks: list[int] = []
    output = MemoryOutput(failing_writes=3)
    snapshots: list[bool] = []

    class Watching(StubConsumer):
        def ack(self, tag: int, multiple: bool) -> None:
            acks.append(len(output.points))
            super().ack(tag, multiple)

        def sleep(self, seconds: float) -> None:
            snapshots.append(r.runner.snapshot.retrying and r.runner.snapshot.stalled(self.clock()))
            super().sleep(seconds)

    r = rig("1", "2", "3", output=output, broker_class=Watching)
    r.run()
    assert output.writes == 4 and seqs(output) == [1, 2, 3]
    assert acks == [3], "acked once, after the write that passed"
    assert [s for s in r.spy.signals if s[0] == "write_failed"] == [("write_failed", n) for n in (1, 2, 3)]
    assert snapshots and all(snapshots), "while retrying, the snapshot says the runner is not reading"
    assert not r.runner.snapshot.retrying


def test_deliveries_that_arrive_during_a_retried_write_go_into_the_next_batch() -> None:
    class DownOnce(MemoryOutput):
        def write(self, points: Sequence[Point]) -> None:
            if self.writes == 0:  # while the first batch waits, two more readings come in
                r.broker.put(QUEUE.name, "test.x", b"3")
                r.broker.put(QUEUE.name, "test.x", b"4")
            super().write(points)

    output = DownOnce(failing_writes=2)
    r = rig("1", "2", output=output, until=lambda b: b.idle and len(b.acked) == 4)
    r.run()
    assert seqs(output) == [1, 2, 3, 4]
    assert [len(report.deliveries) for report in r.spy.reports] == [2, 2]


def test_a_point_an_output_refuses_dead_letters_the_delivery_it_stands_for_alone() -> None:
    output = MemoryOutput(refuses=lambda p: p.fields["seq"] == 2)
    r = rig("1", "2", "3", output=output)
    r.run()
    assert seqs(output) == [1, 3]
    assert r.broker.dead_letters == [("test.x", "rejected_by_memory")]
    assert len(r.broker.acked) == 3
    [report] = r.spy.reports
    assert report.stored == 2 and [p.fields["seq"] for p in report.records] == [1, 3]


def test_a_lost_connection_redelivers_everything_unacked_and_each_message_is_acked_once() -> None:
    r = rig("1", "2", "3", "4", until=lambda b: b.idle and b.connects == 2)

    def drop_after_third(delivery: Delivery) -> None:
        if delivery.body == b"3" and not delivery.redelivered:
            r.broker.drop()

    r.handler.on_handle = drop_after_third
    r.run()
    assert r.broker.connects == 2
    assert [m.deliveries for m in r.broker.acked] == [2, 2, 2, 1], "the three taken before the drop, again"
    assert len(r.broker.acked) == 4, "each acked once"
    assert sorted(set(seqs(r.output))) == [1, 2, 3, 4], "stored: a replay writes the same points again"
    assert [redelivered for body, redelivered in r.handler.seen if body == b"1"] == [False, True]
    assert len(r.handler.consuming) == 2, "told at each connect, before its first delivery"
    assert [s for s in r.spy.signals if s[0] in ("connect", "disconnect")][:3] == [
        ("connect", "recorder"),
        ("disconnect", "recorder"),
        ("connect", "recorder"),
    ]


def test_a_nacked_publish_leaves_its_batch_unacked_and_the_redelivery_publishes_it_again() -> None:
    r = rig("publish:1", "publish:2", until=lambda b: b.idle and len(b.published) == 2)
    r.broker.nack_next = True
    r.run()
    assert r.broker.connects == 2
    assert [m.routing_key for m in r.broker.published] == ["out.1", "out.2"]
    assert [m.deliveries for m in r.broker.acked] == [2, 2], "acked only after the confirms of the replay"


def test_the_confirms_of_what_a_batch_published_come_before_its_ack() -> None:
    unconfirmed_at_ack: list[int] = []

    class Watching(StubConsumer):
        def ack(self, tag: int, multiple: bool) -> None:
            unconfirmed_at_ack.append(len(self.unconfirmed))
            super().ack(tag, multiple)

    r = rig("publish:1", "bad", "publish:2", broker_class=Watching)
    r.run()
    assert unconfirmed_at_ack == [0]
    assert [m.routing_key for m in r.broker.published] == ["out.1", "test.x", "out.2"]


def test_a_held_delivery_is_acked_only_when_released_and_the_deliveries_after_it_one_by_one() -> None:
    acks: list[tuple[int, bool]] = []

    class Watching(StubConsumer):
        def ack(self, tag: int, multiple: bool) -> None:
            acks.append((tag, multiple))
            super().ack(tag, multiple)

    def script(broker: StubConsumer) -> bool:
        if acks and "a" in r.handler.held and not broker.ready[QUEUE.name]:
            broker.put(QUEUE.name, "test.x", b"release:a")  # once the first batch is settled
        return len(acks) > 3 and broker.idle

    r = rig("1", "hold:a", "2", "3", broker_class=Watching, until=script)
    r.run()
    assert acks[:3] == [(1, True), (3, False), (4, False)], "below the held one at once, above it singly"
    assert acks[3:] == [(5, True)], "the held one with its release, at once"
    assert len(r.broker.acked) == 5 and not r.broker.unacked


def test_a_held_delivery_the_handler_refuses_is_dead_lettered_then_acked() -> None:
    r = rig("hold:a", "refuse:a")
    r.run()
    assert r.broker.dead_letters == [("test.x", "unknown_command")]
    assert len(r.broker.acked) == 2 and not r.broker.unacked
    assert r.spy.reports[-1].events == [("held",)]


def test_the_snapshot_counts_what_is_held_per_queue_and_the_consumer_tags() -> None:
    handler = Recorder(declaration=Declaration((QUEUE, OTHER)))
    r = rig("hold:a", "1", handler=handler, until=lambda b: b.rounds > 20)
    r.broker.put(OTHER.name, "other.x", b"hold:b")
    r.run()
    snapshot = r.runner.snapshot
    assert not snapshot.connected and snapshot.held == {QUEUE.name: 0, OTHER.name: 0}, "nothing held once gone"
    assert r.broker.unacked == {}, "back in their queues"
    assert [m.body for m in r.broker.ready[QUEUE.name]] == [b"hold:a"]


def test_the_snapshot_while_consuming() -> None:
    handler = Recorder(declaration=Declaration((QUEUE, OTHER)))
    seen: list[tuple[dict[str, int], dict[str, str]]] = []

    def look(broker: StubConsumer) -> bool:
        snapshot = r.runner.snapshot
        if broker.rounds > 20:
            seen.append((dict(snapshot.held), dict(snapshot.consumer_tags)))
            return True
        return False

    r = rig("hold:a", "1", handler=handler, until=look)
    r.broker.put(OTHER.name, "other.x", b"hold:b")
    r.run()
    [(held, tags)] = seen
    assert held == {QUEUE.name: 1, OTHER.name: 1}
    assert set(tags) == {QUEUE.name, OTHER.name}


def test_ticks_carry_the_role_the_monitor_set_and_a_quiet_tick_writes_nothing() -> None:
    r = rig(until=lambda b: b.rounds > 10)
    r.runner.role = "standby"
    r.run()
    assert r.handler.ticks and set(r.handler.ticks) == {"standby"}
    assert r.output.writes == 0 and r.spy.reports == []


def test_the_reconnect_backoff_starts_again_from_the_shortest_wait_after_a_successful_connect() -> None:
    r = rig("1", "2", until=lambda b: b.idle and b.connects == 2)
    r.broker.failing_connects = 4

    def drop_once(delivery: Delivery) -> None:
        if delivery.body == b"2" and not delivery.redelivered:
            r.broker.drop()
            r.broker.failing_connects = 1

    r.handler.on_handle = drop_once
    r.run()
    before, after = r.waits[:4], r.waits[4:]
    assert before[-1] >= 0.4, "four failed connects in a row wait longer and longer"
    assert len(after) == 2 and after[0] <= 0.2, "after a connect that held, the first retry is quick again"
