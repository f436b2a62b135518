"""The benchmark's split of a command round trip into legs, and the simulator's command stamps."""

from __future__ import annotations

import pytest

from bench.command_legs import LEGS, split_round_trip
from devices.stats import CommandTimes, CommandTiming
from hub.control.send import SendStamps


def test_legs_are_differences_of_the_stamps() -> None:
    stamps = SendStamps(entered=10.0, published=10.010, confirmed=10.030, acked=10.031)
    legs = split_round_trip(stamps, returned=10.032, device=CommandTiming(taken=10.014, ack_written=10.015))
    assert set(legs) == set(LEGS) - {"free_back", "free_round_trip"}
    assert legs["cli_before"] == pytest.approx(0.010)
    assert legs["confirm"] == pytest.approx(0.020)
    assert legs["outbound"] == pytest.approx(0.004)
    assert legs["device"] == pytest.approx(0.001)
    assert legs["back"] == pytest.approx(0.016)
    assert legs["cli_after"] == pytest.approx(0.001)
    assert legs["round_trip"] == pytest.approx(legs["outbound"] + legs["device"] + legs["back"])


def test_an_ack_that_came_after_the_confirm_waited_for_nothing() -> None:
    stamps = SendStamps(entered=0.0, published=1.0, confirmed=1.002, acked=1.020)
    legs = split_round_trip(stamps, returned=1.021, device=CommandTiming(taken=1.005, ack_written=1.006))
    assert legs["held"] == 0.0


def test_an_ack_written_before_the_confirm_waited_at_most_until_it() -> None:
    stamps = SendStamps(entered=0.0, published=1.0, confirmed=1.050, acked=1.051)
    legs = split_round_trip(stamps, returned=1.052, device=CommandTiming(taken=1.005, ack_written=1.010))
    assert legs["held"] == pytest.approx(0.040)


def test_command_times_stamp_acks_when_the_loop_writes_them() -> None:
    times = CommandTimes()
    times.ack_queued("c1", taken=5.0)
    assert times.get("c1") is None
    times.acks_writing(5.002)
    timing = times.get("c1")
    assert timing is not None and timing.handling_s == pytest.approx(0.002)
    times.acks_writing(9.0)
    assert times.get("c1") == timing


def test_command_times_forget_the_oldest_beyond_their_bound() -> None:
    times = CommandTimes(kept=2)
    for index in range(3):
        times.ack_queued(f"c{index}", taken=float(index))
        times.acks_writing(float(index) + 0.5)
    assert times.get("c0") is None
    assert times.get("c1") is not None and times.get("c2") is not None


def test_an_ack_heard_by_the_free_listener_gives_the_round_trip_without_the_confirm_wait() -> None:
    stamps = SendStamps(entered=0.0, published=1.0, confirmed=1.050, acked=1.051)
    device = CommandTiming(taken=1.005, ack_written=1.010)
    legs = split_round_trip(stamps, returned=1.052, device=device, heard=1.012)
    assert legs["free_back"] == pytest.approx(0.002)
    assert legs["free_round_trip"] == pytest.approx(0.012)
    assert "free_back" not in split_round_trip(stamps, returned=1.052, device=device)
