"""Start a server as a detached process we can recognise later, and stop exactly that one."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

from hub.core.limits import raise_open_files_limit

#: How long a server gets to shut down after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


def start_detached(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (it outlives us), output appended to `log_path`.

    It inherits our open-files limit, raised first to the hard limit: the broker needs one
    descriptor per device connection (and keeps about 10 % of its limit for files).
    """
    raise_open_files_limit()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    return process


def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ours(pid: int, marker: str) -> bool:
    """True if `pid` is alive and its command line or environment mentions `marker` (our data directory).

    Pids are recycled: checking for the marker keeps `down` from killing a stranger.
    """
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return marker in _proc_text(pid, "cmdline") or marker in _proc_text(pid, "environ")


def all_ours(*homes: Path) -> list[int]:
    """Every live process whose command line or environment mentions one of `homes` (the servers' data
    folders): a server, what it started, and a daemon that has left its process tree (the node's epmd).
    """
    markers = [f"{home}{os.sep}" for home in homes]
    pids = sorted(int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if any(is_ours(pid, marker) for marker in markers)]


def stop(pid: int, marker: str, grace_s: float = STOP_GRACE_S, first: signal.Signals = signal.SIGTERM) -> bool:
    """`first` (SIGTERM) to the process group of `pid` if ours, SIGKILL after `grace_s`. True if it was running."""
    if not is_ours(pid, marker):
        return False
    _signal_group(pid, first)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_ours(pid, marker):
            return True
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    while is_ours(pid, marker):
        time.sleep(0.05)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


#: Ports handed to servers come from below Linux's ephemeral range (32768-60999), where
#: outgoing client connections never take them between our check and the server's bind.
SERVER_PORT_RANGE = (20_000, 32_000)


def free_port() -> int:
    """A port nothing listens on or is bound to now, outside the ephemeral range."""
    low, high = SERVER_PORT_RANGE
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("::", port))
            except OSError:
                continue
        if not port_open("127.0.0.1", port, timeout_s=0.2):
            return port
    raise OSError(f"no free port in {low}-{high}")


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
