"""The profile summary of `bench.profile`: own and total shares from py-spy's collapsed stacks."""

from __future__ import annotations

from bench.profile import frame_name, shares

MAIN, RUN = "<module> (hub/__main__.py:3)", "run (hub/runtime/consumer.py:120)"
COLLAPSED = f"""\
{MAIN};{RUN};deliver (hub/runtime/service.py:88);decode (hub/core/contract.py:40) 6
{MAIN};run (hub/runtime/consumer.py:121);_read (pika/adapters/blocking_connection.py:900) 3
{MAIN};{RUN};deliver (hub/runtime/service.py:90) 1
"""


def test_frame_names_drop_the_folder_and_the_line() -> None:
    assert frame_name("deliver (hub/runtime/service.py:88)") == "deliver (service.py)"
    assert frame_name("<native>") == "<native>"


def test_own_share_counts_the_innermost_frame_and_total_every_stack_it_is_in() -> None:
    samples, functions = shares(COLLAPSED)
    by_name = {f.function: f for f in functions}
    assert samples == 10
    assert (by_name["decode (contract.py)"].own, by_name["decode (contract.py)"].total) == (0.6, 0.6)
    assert (by_name["deliver (service.py)"].own, by_name["deliver (service.py)"].total) == (0.1, 0.7)
    assert by_name["run (consumer.py)"].total == 1.0
    assert functions[0].function == "decode (contract.py)", "sorted by own share"


def test_no_sample_gives_nothing() -> None:
    assert shares("") == (0, [])
