"""A benchmark stopped by `timeout` (SIGTERM) or Ctrl-C (SIGINT) stops the stack it started.

A real benchmark (`bench.chaos`, the one seen leaving its stack behind, in its quick form) runs
in a session of its own, as under `timeout` or in a terminal's foreground, and its whole process
group gets the signal once its stack answers. The stack's servers run in sessions of their own:
only the benchmark's `finally` can stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hub.stack.processes import all_ours
from tests.support import REPO, wait_until

#: The line `bench.chaos` prints before its stack starts, with the stack's folder after it.
STARTING = "starting a stack under "
#: What `Stack.up` reports once both servers answer.
READY = "ready in "


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["timeout", "ctrl-c"])
def test_a_benchmark_stopped_by_a_signal_leaves_no_server_running(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "bench.log"
    with open(log, "wb") as out:
        bench = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos", "--quick", "--devices", "2"],
            cwd=REPO,
            env={name: value for name, value in os.environ.items() if not name.startswith("IOT_")},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: READY in log.read_text() or bench.poll() is not None, 120, 0.2)
        assert bench.poll() is None, log.read_text()
        [root] = [line.split(STARTING, 1)[1].split()[0] for line in log.read_text().splitlines() if STARTING in line]
        servers = all_ours(Path(root))
        assert servers, f"the benchmark's stack runs under {root}"
        os.killpg(bench.pid, sig)
        bench.wait(120)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    left = all_ours(Path(root))
    for pid in left:  # a failed test leaves nothing running either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == [], log.read_text()
    assert not Path(root).exists(), "its temporary folder is gone too"
