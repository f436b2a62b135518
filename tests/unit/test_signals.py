"""How a program here stops on SIGINT and SIGTERM (`hub.core.signals`), and that every benchmark uses it."""

from __future__ import annotations

import ast
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.core.signals import interrupt_on_stop_signals, interrupting, stop_requested

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(autouse=True)
def restored_handlers() -> Iterator[None]:
    """Whatever a test installs, pytest gets its own handlers back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_first_stop_signal_interrupts_and_the_next_ones_leave_the_cleanup_alone(sig: signal.Signals) -> None:
    cleaned = False
    with interrupting():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(sig)
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        cleaned = True
    assert cleaned


def test_interrupting_gives_the_previous_handlers_back() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with interrupting():
        pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigint_ignored_at_start_still_interrupts() -> None:
    """A background job of a shell script starts with SIGINT ignored: Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupting(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    with stop_requested() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_interrupt_on_stop_signals_lasts_past_the_call() -> None:
    interrupt_on_stop_signals()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGINT)  # ignored: the cleanup runs whole


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_request_only_sets_the_event_and_a_second_signal_interrupts(sig: signal.Signals) -> None:
    with stop_requested() as stop:
        assert not stop.is_set()
        signal.raise_signal(sig)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(sig)


def _bench_mains() -> dict[str, ast.FunctionDef]:
    mains = {}
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text())
        runs_as_program = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
        if runs_as_program:
            [main] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
            mains[path.stem] = main
    return mains


def test_every_benchmark_stops_what_it_started_on_sigterm_and_sigint() -> None:
    """Its `main` begins by turning the stop signals into KeyboardInterrupt, so its `finally` stops its stack."""
    mains = _bench_mains()
    assert {"chaos", "hub_throughput", "sim_scale", "connect_auth"} <= set(mains)
    for name, main in mains.items():
        first = main.body[0]
        assert ast.unparse(first) == "interrupt_on_stop_signals()", (
            f"bench.{name}.main begins with {ast.unparse(first)}"
        )
