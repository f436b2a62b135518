"""bench.fanout's arithmetic: the figures of one phase from two snapshots, and the hash split."""

from __future__ import annotations

import pytest

from bench.fanout import HASHED, Snapshot, _split, figures


def test_figures_are_rates_over_the_window_and_the_slowest_reader_sets_the_drain() -> None:
    before = Snapshot(at_s=10.0, acked=1_000, delivered=(900, 800), reader_cpu_s=1.0, broker_cpu_s=5.0)
    after = Snapshot(at_s=20.0, acked=21_000, delivered=(20_900, 18_800), reader_cpu_s=3.4, broker_cpu_s=9.0)
    result = figures(before, after)
    assert result.in_per_s == pytest.approx(2_000)
    assert result.drained_per_s == pytest.approx(1_800)
    assert result.reader_us_per_delivery == pytest.approx(2.4e6 / 38_000)
    assert result.reader_us_per_reading == pytest.approx(2.4e6 / 20_000)
    assert result.broker_cpu_s_per_1000 == pytest.approx(0.2)


def test_figures_without_readers_leave_the_consumer_columns_empty() -> None:
    before = Snapshot(at_s=0.0, acked=0, delivered=(), reader_cpu_s=0.0, broker_cpu_s=0.0)
    after = Snapshot(at_s=5.0, acked=5_000, delivered=(), reader_cpu_s=0.0, broker_cpu_s=1.0)
    result = figures(before, after)
    assert (result.drained_per_s, result.reader_us_per_delivery, result.reader_us_per_reading) == (None, None, None)
    assert result.broker_cpu_s_per_1000 == pytest.approx(0.2)


def test_split_shows_each_queue_share() -> None:
    assert _split([300, 100]) == "[300, 100] (75% / 25%)"
    assert _split([42]) == "[42]"


def test_a_fresh_topology_renames_its_queues_and_keeps_single_active_on_the_same_ones() -> None:
    fresh = HASHED.fresh("p3")
    assert fresh.queues == tuple(f"{queue}.p3" for queue in HASHED.queues)
    assert fresh.single_active == fresh.queues
    assert fresh.hashed
