"""Batched telemetry: decoding and validating a batch body, and the telemetry service storing it on the
in-memory stub broker (`hub.runtime.stub`); over a real broker: tests/integration/test_batches.py."""

from __future__ import annotations

import json
import threading
from typing import Any, cast

import pytest

from devices.fleet import batch_body
from devices.outbox import Outbox
from hub.control.tail import describe
from hub.core import contract
from hub.core.config import Settings
from hub.core.contract import MAX_BATCH_ENTRIES, Batch, Reading, decode_telemetry
from hub.core.errors import InvalidMessage
from hub.core.models import default_models
from hub.outputs.fanout import OutputSet
from hub.runtime import topology
from hub.runtime.runner import Runner
from hub.runtime.stub import FakeClock, MemoryOutput, StubConsumer
from hub.services.rules.engine import Engine, Evaluation
from hub.services.rules.model import Rule
from hub.services.store.judge import ReadingJudge
from hub.services.telemetry.service import TelemetryHandler
from hub.services.telemetry.stage import TelemetryStage

KEY = "telemetry.plant-a.environment.env-0001"
BASE_TS = 1_765_000_000_000


def body(*entries: dict[str, Any], **identity: Any) -> bytes:
    message = {"v": 1, "device": "env-0001", "site": "plant-a", "kind": "environment", **identity}
    return json.dumps({**message, "batch": list(entries)}).encode()


def entry(seq: int, ts: int | None = None, **readings: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": BASE_TS + seq * 1000 if ts is None else ts, "readings": readings or {"temperature": 21.0}}


# --- the contract ---------------------------------------------------------------------------------


def test_a_batch_decodes_and_gives_its_readings_in_ts_order() -> None:
    batch = decode_telemetry(body(entry(3), entry(1), entry(2, ts=BASE_TS + 1000)), KEY)
    assert isinstance(batch, Batch)
    assert [(r.seq, r.ts) for r in batch.readings()] == [(1, BASE_TS + 1000), (2, BASE_TS + 1000), (3, BASE_TS + 3000)]
    assert all(r.routing_key == KEY for r in batch.readings())


def test_a_single_reading_stays_a_reading_even_with_a_sensor_named_batch() -> None:
    single = {
        "device": "env-0001",
        "site": "plant-a",
        "kind": "environment",
        "seq": 1,
        "ts": 5,
        "readings": {"batch": 1},
    }
    assert isinstance(decode_telemetry(json.dumps(single).encode(), KEY), Reading)


@pytest.mark.parametrize(
    ("entries", "where"),
    [
        ((entry(1), {**entry(2), "note": "x"}), None),
        ((entry(1), {"seq": "two", "ts": 1, "readings": {"t": 1.0}}), "$.batch[1].seq"),
        ((entry(1), entry(2), {"seq": 3, "ts": 3, "readings": {"seq": 1.0}}), "$.batch[2]"),
        ((entry(1), {"seq": 2, "ts": 1, "readings": {}}), "$.batch[1].readings"),
        ((entry(1), {"seq": 2, "ts": 1.5, "readings": {"t": 1.0}}), "$.batch[1].ts"),
    ],
)
def test_one_bad_entry_refuses_the_whole_batch_naming_its_index(
    entries: tuple[dict[str, Any], ...], where: str | None
) -> None:
    if where is None:  # an extra field in an entry is ignored, as everywhere in the contract
        assert isinstance(decode_telemetry(body(*entries), KEY), Batch)
        return
    with pytest.raises(InvalidMessage) as refused:
        decode_telemetry(body(*entries), KEY)
    assert refused.value.reason == "schema" and where in refused.value.detail


def test_a_batch_has_at_least_one_and_at_most_the_documented_entries() -> None:
    with pytest.raises(InvalidMessage, match=r"\$\.batch"):
        decode_telemetry(body(), KEY)
    small = [{"seq": i, "ts": i, "readings": {"t": 1}} for i in range(MAX_BATCH_ENTRIES + 1)]
    with pytest.raises(InvalidMessage, match="length <= 500"):
        decode_telemetry(body(*small), KEY)
    assert len(json.dumps(small[:MAX_BATCH_ENTRIES])) < contract.MAX_BODY_BYTES


def test_a_batch_keeps_the_body_limit_and_its_routing_key() -> None:
    many = {f"s{j}": 1.0 for j in range(60)}
    big = [{"seq": i, "ts": BASE_TS + i, "readings": many} for i in range(150)]
    with pytest.raises(InvalidMessage) as refused:
        decode_telemetry(body(*big), KEY)
    assert refused.value.reason == "oversize"
    with pytest.raises(InvalidMessage) as mismatch:
        decode_telemetry(body(entry(1)), "telemetry.plant-a.environment.env-0002")
    assert mismatch.value.reason == "routing_mismatch"


# --- the telemetry service --------------------------------------------------------------------------


class OrderSeen:
    """An engine that remembers the order it was asked in and decides nothing."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.rules: list[Rule] = []

    def evaluate(self, reading: Reading, now_ms: int) -> Evaluation:
        self.seen.append(reading.seq)
        return Evaluation()


def run(
    handler: TelemetryHandler, *bodies: bytes, output: MemoryOutput | None = None
) -> tuple[StubConsumer, MemoryOutput]:
    stop, clock = threading.Event(), FakeClock()
    broker = StubConsumer(stop, clock)
    broker.stop_when = lambda: broker.idle
    for one in bodies:
        broker.put(topology.partition(0).name, KEY, one)
    output = output or MemoryOutput()
    Runner(handler, broker, OutputSet.of(output), [], stop, clock=clock, wait=clock.advance).run()
    return broker, output


def handler(engine: object) -> TelemetryHandler:
    stage = TelemetryStage(ReadingJudge(default_models(), "store"), cast(Engine, engine))
    return TelemetryHandler(stage, TelemetryHandler.from_settings(Settings(), []).declaration)


def test_a_batch_is_stored_once_per_entry_and_the_rules_see_its_entries_in_ts_order() -> None:
    engine = OrderSeen()
    broker, output = run(handler(engine), body(entry(3), entry(1), entry(2)))
    assert sorted(int(p.fields["seq"]) for p in output.points) == [1, 2, 3]
    assert [p.ts_ms for p in output.points] == [BASE_TS + 1000, BASE_TS + 2000, BASE_TS + 3000]
    assert engine.seen == [1, 2, 3]
    assert broker.dead_letters == [] and len(broker.acked) == 1


def test_an_entry_the_store_refuses_dead_letters_the_whole_batch_before_any_rule_sees_it() -> None:
    engine = OrderSeen()
    refused = body(entry(1), entry(2, temperature=True), entry(3))
    broker, output = run(handler(engine), refused, body(entry(4)))
    assert broker.dead_letters == [(KEY, "sensor_type")]
    [letter] = [m for m in broker.published if m.routing_key == KEY]
    assert "batch entry seq 2" in str((letter.properties.headers or {}).get("x-iot-detail", ""))
    assert [int(p.fields["seq"]) for p in output.points] == [4]
    assert engine.seen == [4]


def test_entries_an_output_refuses_dead_letter_the_message_once_and_the_others_are_stored() -> None:
    output = MemoryOutput(refuses=lambda p: p.fields["seq"] in (2, 3))
    broker, output = run(handler(OrderSeen()), body(entry(1), entry(2), entry(3), entry(4)), output=output)
    assert sorted(int(p.fields["seq"]) for p in output.points) == [1, 4]
    assert broker.dead_letters == [(KEY, "rejected_by_memory")]
    assert len(broker.acked) == 1


# --- the simulator ----------------------------------------------------------------------------------


def single(seq: int) -> bytes:
    return contract.encode(
        Reading(device="env-0001", site="plant-a", kind="environment", seq=seq, ts=BASE_TS + seq, readings={"t": 1.0})
    )


def test_the_outbox_hands_over_groups_within_count_bytes_and_window() -> None:
    outbox = Outbox(window=2)
    for seq in range(1, 8):
        outbox.add(seq, single(seq))
    groups = list(outbox.sendable_groups(3, 10_000))
    assert [[seq for seq, _ in g] for g in groups] == [[1, 2, 3], [4, 5, 6]]  # two messages fill the window
    for token, group in enumerate(groups):
        outbox.sent(token, group)
    assert (outbox.in_flight, outbox.waiting, len(outbox)) == (2, 1, 7)
    assert outbox.confirm(0) and outbox.confirmed == 3
    assert outbox.requeue_in_flight() == 3
    assert outbox.seqs() == [4, 5, 6, 7]
    tight = next(outbox.sendable_groups(100, 2 * len(single(4))))
    assert [seq for seq, _ in tight] == [4, 5]  # the bytes say when a group is full


def test_a_group_leaves_as_one_valid_batch_body() -> None:
    decoded = decode_telemetry(batch_body([single(1), single(2)]), KEY)
    assert isinstance(decoded, Batch)
    assert [(r.seq, r.ts, r.readings) for r in decoded.readings()] == [
        (1, BASE_TS + 1, {"t": 1.0}),
        (2, BASE_TS + 2, {"t": 1.0}),
    ]


def test_hub_tail_shows_a_batch_as_one_line() -> None:
    line = describe(KEY, body(entry(2), entry(1, temperature=19.5)))
    assert line.text == "batch of 2, seq 1..2; newest: temperature=21°C" and line.style == "green"
