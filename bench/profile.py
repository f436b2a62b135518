"""Where a process's CPU goes during a phase, sampled by py-spy: the functions at the top of its profile.

    with sampling(pid, Path("hub.raw")) as profile:
        ...                                   # the phase
    print(top_table(profile.functions(), "hub, all valid"))

py-spy samples the running process from outside (no change to it, a few % of one core at the
default rate) and writes collapsed stacks, one line per distinct stack: `frame;frame;... count`.
A function's *own* share is how often it was the innermost frame; its *total* share how often
it was anywhere in the stack. Idle samples (a thread blocked in a read) are left out by py-spy,
so the shares are of CPU time, not of wall time.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

#: Samples per second (py-spy's default is 100; more gives a steadier top on a phase of seconds).
SAMPLE_RATE_HZ = 250
#: Functions the summary shows.
TOP = 15
#: Seconds py-spy gets to write its file once asked to stop.
STOP_WAIT_S = 20.0
#: `function (path/to/module.py:line)` -> `function (module.py)`: the line varies within one function.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^():]+)(?::\d+)?\)$")


@dataclass(frozen=True)
class FunctionShare:
    function: str
    own: float
    total: float


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['function']} ({Path(match['path']).name})"


def shares(collapsed: str) -> tuple[int, list[FunctionShare]]:
    """(samples, every function with its own and total share), from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    if not samples:
        return 0, []
    functions = [FunctionShare(name, own[name] / samples, total[name] / samples) for name in total]
    return samples, sorted(functions, key=lambda f: (f.own, f.total), reverse=True)


@dataclass
class Profile:
    path: Path
    error: str | None = None
    samples: int = 0
    functions: list[FunctionShare] = field(default_factory=list)

    def read(self) -> None:
        if self.error is None and self.path.exists():
            self.samples, self.functions = shares(self.path.read_text(errors="replace"))
        if not self.samples and self.error is None:
            self.error = "py-spy wrote no sample"


@contextmanager
def sampling(pid: int, path: Path) -> Iterator[Profile]:
    """py-spy recording `pid` (and its threads) for the duration of the block; read when it ends."""
    profile = Profile(path)
    # Beside this interpreter first: a virtualenv's scripts are there even when it is not on PATH.
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        profile.error = "py-spy is not installed (it is one of the dev extras of pyproject.toml)"
        yield profile
        return
    command = [py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ), "--format", "raw"]
    recorder = subprocess.Popen(
        [*command, "--nonblocking", "--output", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield profile
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        try:
            _out, err = recorder.communicate(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            recorder.kill()
            _out, err = recorder.communicate()
        if not path.exists():
            profile.error = f"py-spy failed: {(err or '').strip().splitlines()[-1:] or 'no output'}"
        profile.read()


def top_table(profile: Profile, title: str, top: int = TOP) -> Table:
    table = Table(title=f"profile: {title} ({profile.samples:,} samples at {SAMPLE_RATE_HZ} Hz, CPU only)")
    table.add_column("function (module)")
    table.add_column("own", justify="right")
    table.add_column("total", justify="right")
    if profile.error is not None:
        table.add_row(profile.error, "", "")
        return table
    for function in profile.functions[:top]:
        table.add_row(function.function, f"{function.own:.1%}", f"{function.total:.1%}")
    return table
