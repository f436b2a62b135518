"""CPU, memory and descriptors of processes from /proc: the broker's beside the simulator's."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Fields of /proc/PID/stat after the command name, counted from 0 (state is 0).
_PGRP, _UTIME, _STIME, _THREADS, _RSS_PAGES = 2, 11, 12, 17, 21


@dataclass(frozen=True)
class Usage:
    cpu_s: float = 0.0
    rss_bytes: int = 0
    fds: int = 0
    threads: int = 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (the stack starts the broker as a group leader)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) and fields[0] != "Z" and int(fields[_PGRP]) == pgid:
            pids.append(int(entry))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (it must be running)."""
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(f"no process {pid}")
    return (int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS_PER_S


def usage(pids: list[int]) -> Usage:
    """CPU seconds used so far, resident memory, open descriptors and threads, summed over `pids`."""
    cpu_ticks = rss_pages = fds = threads = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        cpu_ticks += int(fields[_UTIME]) + int(fields[_STIME])
        rss_pages += int(fields[_RSS_PAGES])
        threads += int(fields[_THREADS])
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return Usage(cpu_ticks / CLOCK_TICKS_PER_S, rss_pages * PAGE_BYTES, fds, threads)


def groups_usage(pgids: list[int]) -> Usage:
    """`usage` of every live process of the process groups `pgids` (a cluster's nodes)."""
    return usage([pid for pgid in pgids for pid in group_pids(pgid)])
