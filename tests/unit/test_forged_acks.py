"""Only the truth is recorded: an ack counts only as the answer of a command sent to its own device."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from pika.spec import Basic, BasicProperties

from hub.control.send import CommandSender
from hub.core.config import load_settings
from hub.core.contract import Ack, Command, encode
from hub.outputs.fanout import OutputSet
from hub.outputs.lineprotocol import point_line
from hub.runtime.runner import Runner
from hub.runtime.stub import FakeClock, MemoryOutput, StubConsumer
from hub.services.commands.ledger import MAX_PENDING, ORPHAN_ACK_GRACE_MS, CommandLedger, Recorded
from hub.services.commands.recorded import settled_from_rows
from hub.services.commands.service import CommandsHandler
from tests.empty_reader import EmptyReader
from tests.unit.test_runner import Spy


def _command(command_id: str = "c-1", ts: int = 1000, expires: int = 11_000) -> Command:
    return Command(id=command_id, command="ping", ts=ts, expires=expires)


def _ack(device: str, command_id: str = "c-1", status: str = "ok", ts: int = 1030) -> Ack:
    return Ack(id=command_id, device=device, status=status, ts=ts)  # type: ignore[arg-type]


def statuses(recorded: Recorded) -> list[str]:
    return [point_line(p).split(" ")[0].split("status=")[1].split(",")[0] for p in recorded.points]


def test_an_ack_for_a_command_never_sent_is_refused_as_unknown_command_and_records_nothing() -> None:
    ledger = CommandLedger()
    assert ledger.on_ack(_ack("dev-1", "never-sent"), at_ms=0, token=4) == Recorded(), "held: it may be just early"
    refused = ledger.timed_out(ORPHAN_ACK_GRACE_MS + 1)
    assert refused.points == [] and refused.released == []
    assert [(r.token, r.reason) for r in refused.refused] == [(4, "unknown_command")]
    assert refused.refused[0].detail.startswith("no command never-sent was sent to dev-1")


def test_an_ack_from_another_device_never_answers_a_pending_command() -> None:
    ledger = CommandLedger()
    ledger.on_command("dev-a", _command(), "cli", at_ms=1000, token=1)
    assert ledger.on_ack(_ack("dev-b"), at_ms=1040, token=2) == Recorded(), "not an answer to dev-a's command"
    genuine = ledger.on_ack(_ack("dev-a", status="error"), at_ms=1050, token=3)
    assert statuses(genuine) == ["error"] and sorted(genuine.released) == [1, 3]
    assert "device=dev-a" in point_line(genuine.points[0])
    forged = ledger.timed_out(1040 + ORPHAN_ACK_GRACE_MS + 1)
    assert forged.points == [] and [(r.token, r.reason) for r in forged.refused] == [(2, "unknown_command")]
    assert "no command c-1 was sent to dev-b" in forged.refused[0].detail


def test_an_early_ack_from_another_device_is_refused_when_the_command_goes_to_its_own() -> None:
    ledger = CommandLedger()
    ledger.on_ack(_ack("dev-b"), at_ms=1040, token=2)
    sent = ledger.on_command("dev-a", _command(), "rule", at_ms=1045, token=3)
    assert statuses(sent) == ["sent"] and sent.released == [], "dev-a's command waits for dev-a's ack"
    forged = ledger.timed_out(1040 + ORPHAN_ACK_GRACE_MS + 1)
    assert [r.token for r in forged.refused] == [2]
    assert statuses(ledger.on_ack(_ack("dev-a"), at_ms=1050, token=4)) == ["ok"]


def test_a_repeated_ack_of_an_answered_command_is_settled_without_a_second_outcome() -> None:
    ledger = CommandLedger()
    ledger.on_command("dev-a", _command(), "cli", at_ms=1000, token=1)
    assert statuses(ledger.on_ack(_ack("dev-a"), at_ms=1040, token=2)) == ["ok"]
    assert ledger.on_ack(_ack("dev-a"), at_ms=1041, token=3) == Recorded(released=[3])
    assert ledger.on_ack(_ack("dev-b"), at_ms=1042, token=4) == Recorded(), "another device's is held, then refused"
    assert [r.token for r in ledger.timed_out(10**9).refused] == [4]


def test_a_restarted_ledger_seeded_with_what_was_recorded_settles_a_late_ack_instead_of_refusing_it() -> None:
    rows = [{"time": 2, "id": "c-2", "device": "dev-a"}, {"time": 1, "id": "c-1", "device": "dev-a"}]
    settled = settled_from_rows(rows)
    assert settled == [("c-1", "dev-a"), ("c-2", "dev-a")], "oldest first: the ledger keeps the newest"
    ledger = CommandLedger()
    ledger.seed(settled)
    assert ledger.on_ack(_ack("dev-a", "c-2", status="expired"), at_ms=5, token=7) == Recorded(released=[7])
    assert ledger.on_ack(_ack("dev-b", "c-2"), at_ms=5, token=8) == Recorded()
    assert [r.token for r in ledger.timed_out(10**9).refused] == [8]


def test_settled_commands_are_remembered_up_to_a_bound_newest_kept() -> None:
    ledger = CommandLedger(max_settled=2)
    ledger.seed([("c-1", "dev-a"), ("c-2", "dev-a"), ("c-3", "dev-a")])
    assert list(ledger.settled) == [("c-2", "dev-a"), ("c-3", "dev-a")]


def test_a_command_let_go_past_the_pending_bound_is_still_answered_once() -> None:
    ledger = CommandLedger()
    for index in range(MAX_PENDING + 1):
        ledger.on_command("dev-a", _command(f"c-{index}"), "cli", at_ms=1000, token=index + 1)
    assert ("c-0", "dev-a") not in ledger.pending
    late = ledger.on_ack(_ack("dev-a", "c-0"), at_ms=1050, token=10**6)
    assert statuses(late) == ["ok"] and late.released == [10**6], "its delivery was released when it was let go"
    assert ledger.on_ack(_ack("dev-a", "c-0"), at_ms=1060, token=10**6 + 1) == Recorded(released=[10**6 + 1])


def test_hub_send_takes_an_ack_only_from_the_device_it_sent_the_command_to() -> None:
    sender = CommandSender(load_settings())
    sender._expected = {"c-1": "dev-a"}

    def deliver(routing_key: str, device: str) -> None:
        ack = encode(Ack(id="c-1", device=device, status="ok", ts=1))
        sender._on_ack(cast(Any, None), Basic.Deliver(routing_key=routing_key), BasicProperties(), ack)

    deliver("acks.dev-b", "dev-b")
    deliver("acks.dev-b", "dev-a")  # a body that claims to be dev-a, on dev-b's routing key
    assert sender._acks == {}
    deliver("acks.dev-a", "dev-a")
    assert sender._acks["c-1"][0].device == "dev-a"


def test_an_early_ack_of_a_command_another_hub_settled_is_released_once_that_is_learnt() -> None:
    """A standby made active: the repeat of an ack the other hub recorded waits, then the seed says it is settled."""
    ledger = CommandLedger()
    assert ledger.on_ack(_ack("dev-a"), at_ms=0, token=5) == Recorded()
    ledger.seed([("c-1", "dev-a")])
    assert ledger.timed_out(ORPHAN_ACK_GRACE_MS + 1) == Recorded(released=[5])
    assert ledger.held_tokens() == []


# --- the commands handler on its runner, over the in-memory stub broker ----------------------------


def _commands_rig(hub_ms: list[int]) -> tuple[StubConsumer, MemoryOutput, Spy, Runner]:
    stop = threading.Event()
    clock = FakeClock()
    broker = StubConsumer(stop, clock)
    output = MemoryOutput()
    spy = Spy()

    def hub_clock() -> int:
        return hub_ms[0]

    handler = CommandsHandler(CommandLedger(), _NothingSettled())
    runner = Runner(
        handler, broker, OutputSet.of(output), [spy], stop, clock=clock, wait=clock.advance, hub_clock=hub_clock
    )
    return broker, output, spy, runner


class _NothingSettled(EmptyReader):
    """A store in which no command was ever settled."""


def test_on_its_runner_a_forged_ack_is_dead_lettered_after_the_grace_and_the_command_stays_held() -> None:
    now = time.time_ns() // 1_000_000
    hub_ms = [now]
    broker, output, _spy, runner = _commands_rig(hub_ms)
    command = Command(id="c-1", command="ping", ts=now, expires=now + 60_000)
    broker.put("hub.commands", "commands.dev-a", encode(command))
    broker.put("hub.commands", "acks.dev-b", encode(_ack("dev-b", ts=now + 10)))

    def after_the_grace() -> bool:
        if broker.rounds == 20:
            hub_ms[0] = now + ORPHAN_ACK_GRACE_MS + 1_500  # the next tick is past the forged ack's grace
        return bool(broker.dead_letters) and len(broker.acked) == 1

    broker.stop_when = after_the_grace
    runner.run()
    assert broker.dead_letters == [("acks.dev-b", "unknown_command")]
    assert [m.routing_key for m in broker.acked] == ["acks.dev-b"], "refused, then settled"
    assert [m.routing_key for m in broker.unacked.values()] == [], "the stop let the held command go back"
    assert [m.routing_key for m in broker.ready["hub.commands"]] == ["commands.dev-a"], "unacked: it waits for its ack"
    assert [p.tags["status"] for p in output.points] == ["sent"]


def test_on_its_runner_a_command_and_its_ack_are_acked_together_once_both_are_recorded() -> None:
    now = time.time_ns() // 1_000_000
    broker, output, spy, runner = _commands_rig([now])
    broker.put("hub.commands", "acks.dev-a", encode(_ack("dev-a", ts=now + 30)))  # the ack overtook its command
    broker.put("hub.commands", "commands.dev-a", encode(Command(id="c-1", command="ping", ts=now, expires=now + 9_000)))
    broker.stop_when = lambda: broker.idle
    runner.run()
    assert [p.tags["status"] for p in output.points] == ["sent", "ok"]
    assert len(broker.acked) == 2 and broker.dead_letters == []
    assert [event for report in spy.reports for event in report.events] == [
        ("command_outcome", "sent"),
        ("command_outcome", "ok"),
    ]


def test_on_its_runner_a_redelivered_command_is_recorded_again_but_counted_as_sent_once() -> None:
    now = time.time_ns() // 1_000_000
    broker, output, spy, runner = _commands_rig([now])
    broker.put("hub.commands", "commands.dev-a", encode(Command(id="c-1", command="ping", ts=now, expires=now + 9_000)))

    def drop_once_written() -> bool:
        if output.points and broker.connects == 1:
            broker.drop()  # the command is held, unacked: it comes again
        return broker.connects == 2 and len(output.points) == 2

    broker.stop_when = drop_once_written
    runner.run()
    assert [p.tags["status"] for p in output.points] == ["sent", "sent"], "the same point again: stored once"
    assert [event for report in spy.reports for event in report.events] == [("command_outcome", "sent")]
