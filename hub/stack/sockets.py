"""Which TCP sockets a set of processes listens on, and on which addresses, read from /proc.

What `ss -ltnp` shows, without needing iproute2 (a slim Debian image has none): the kernel's
table of TCP sockets (`/proc/<pid>/net/tcp` and `tcp6`, in that process's network namespace)
joined with the socket inodes each process holds open (`/proc/<pid>/fd`). Only the owner of a
process (or root) may read its descriptors: another user's process shows no sockets.

    exposed(listening_sockets(pids))   # what answers from beyond this machine
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: `st` column of /proc/net/tcp for a listening socket (TCP_LISTEN in the kernel's tcp_states.h).
TCP_LISTEN = "0A"
#: The kernel's TCP tables of one process's network namespace, by address family.
PROC_TCP_TABLES = ("tcp", "tcp6")
#: How a descriptor that is a socket reads in /proc/<pid>/fd.
SOCKET_LINK_PREFIX = "socket:["

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ListeningSocket:
    """One listening TCP socket: its local address and port, and the process holding it."""

    port: int
    address: Address
    pid: int
    process: str

    @property
    def loopback_only(self) -> bool:
        """True if only this machine can connect: bound to 127.0.0.0/8 or ::1 (not the wildcard)."""
        return is_loopback(self.address)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port} ({self.process}, pid {self.pid})"


def is_loopback(address: Address) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def parse_address(hex_address: str) -> Address:
    """An address as /proc/net/tcp{,6} writes it: each 32-bit word of it as a number, in hex.

    The kernel prints the words as the machine holds them: on a little-endian machine 127.0.0.1
    reads `0100007F`. An IPv6 address is four such words.
    """
    if len(hex_address) not in (8, 32):
        raise ValueError(f"not an address from /proc/net/tcp: {hex_address!r}")
    words = (int(hex_address[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hex_address), 8))
    return ipaddress.ip_address(b"".join(words))


def parse_tcp_table(text: str) -> dict[int, tuple[Address, int]]:
    """Listening sockets of one /proc/net/tcp or tcp6 table: inode -> (local address, port)."""
    listening: dict[int, tuple[Address, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        host, _, port = fields[1].partition(":")
        listening[int(fields[9])] = (parse_address(host), int(port, 16))
    return listening


def socket_inodes(fd_targets: Iterable[str]) -> set[int]:
    """The socket inodes among a process's descriptors, given what each /proc/<pid>/fd link points to."""
    return {
        int(target[len(SOCKET_LINK_PREFIX) : -1])
        for target in fd_targets
        if target.startswith(SOCKET_LINK_PREFIX) and target.endswith("]")
    }


def listening_sockets(pids: Iterable[int], proc: Path = Path("/proc")) -> list[ListeningSocket]:
    """Every TCP socket the processes `pids` listen on, sorted by port; a process that is gone has none."""
    found: set[ListeningSocket] = set()
    for pid in set(pids):
        inodes = socket_inodes(_fd_targets(proc / str(pid) / "fd"))
        if not inodes:
            continue
        name = _read(proc / str(pid) / "comm").strip()
        for table in PROC_TCP_TABLES:
            for inode, (address, port) in parse_tcp_table(_read(proc / str(pid) / "net" / table)).items():
                if inode in inodes:
                    found.add(ListeningSocket(port, address, pid, name))
    return sorted(found, key=lambda s: (s.port, s.address.version, s.address.packed, s.pid))


def exposed(sockets: Iterable[ListeningSocket]) -> list[ListeningSocket]:
    """The sockets another machine could connect to: bound to the wildcard or to a non-loopback address."""
    return [s for s in sockets if not s.loopback_only]


def _fd_targets(folder: Path) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    targets = []
    for name in names:
        try:
            targets.append(os.readlink(folder / name))
        except OSError:
            continue  # closed since the listing
    return targets


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
