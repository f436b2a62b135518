"""hub.stack.sockets: a process's listening TCP sockets, read from /proc as `ss -ltnp` shows them."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from hub.stack.sockets import (
    ListeningSocket,
    exposed,
    listening_sockets,
    parse_address,
    parse_tcp_table,
    socket_inodes,
)

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
IPV6_ANY = "0" * 32


def _row(local: str, remote: str, state: str, inode: int) -> str:
    """One line of /proc/net/tcp{,6}, its columns after the inode left out (the parser reads up to it)."""
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 {inode}"


#: /proc/net/tcp and tcp6 as a little-endian machine (x86-64, arm64) writes them: listeners on
#: 127.0.0.1:5672 (0x1628) and 0.0.0.0:4369 (0x1111), a connection (state 01), [::1]:5672 and [::]:5671.
TCP = "\n".join(
    [
        HEADER,
        _row("0100007F:1628", "00000000:0000", "0A", 1001),
        _row("00000000:1111", "00000000:0000", "0A", 1002),
        _row("0100007F:1628", "0100007F:D431", "01", 1003),
    ]
)
TCP6 = "\n".join(
    [
        HEADER,
        _row("00000000000000000000000001000000:1628", f"{IPV6_ANY}:0000", "0A", 2001),
        _row(f"{IPV6_ANY}:1627", f"{IPV6_ANY}:0000", "0A", 2002),
    ]
)


def test_addresses_read_as_the_kernel_writes_them() -> None:
    assert parse_address("0100007F") == ipaddress.ip_address("127.0.0.1")
    assert parse_address("0200007F") == ipaddress.ip_address("127.0.0.2")
    assert parse_address("00000000000000000000000001000000") == ipaddress.ip_address("::1")
    assert parse_address("0000000000000000FFFF00000100007F") == ipaddress.ip_address("::ffff:127.0.0.1")


def test_an_address_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError, match="not an address"):
        parse_address("7F0001")


def test_only_listening_sockets_are_read_from_a_table() -> None:
    assert parse_tcp_table(TCP) == {
        1001: (ipaddress.ip_address("127.0.0.1"), 5672),
        1002: (ipaddress.ip_address("0.0.0.0"), 4369),
    }
    assert parse_tcp_table(TCP6) == {
        2001: (ipaddress.ip_address("::1"), 5672),
        2002: (ipaddress.ip_address("::"), 5671),
    }


def test_socket_inodes_are_the_descriptors_that_are_sockets() -> None:
    targets = ["/dev/null", "socket:[1001]", "pipe:[77]", "socket:[2002]", "anon_inode:[eventpoll]"]
    assert socket_inodes(targets) == {1001, 2002}


def test_exposed_sockets_are_those_bound_beyond_loopback() -> None:
    def bound(address: str) -> ListeningSocket:
        return ListeningSocket(5671, ipaddress.ip_address(address), 1, "beam.smp")

    sockets = [bound(a) for a in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "10.0.0.5")]
    assert [str(s.address) for s in exposed(sockets)] == ["0.0.0.0", "::", "10.0.0.5"]


def test_a_fake_proc_tree_maps_sockets_to_their_process(tmp_path: Path) -> None:
    for pid, name, inodes in ((10, "beam.smp", (1001, 2002)), (11, "epmd", (1002,)), (12, "sh", ())):
        folder = tmp_path / str(pid)
        (folder / "fd").mkdir(parents=True)
        (folder / "net").mkdir()
        (folder / "comm").write_text(f"{name}\n")
        (folder / "net" / "tcp").write_text(TCP)
        (folder / "net" / "tcp6").write_text(TCP6)
        for fd, inode in enumerate(inodes):
            os.symlink(f"socket:[{inode}]", folder / "fd" / str(fd))
    found = listening_sockets([10, 11, 12, 13], proc=tmp_path)  # 13: gone
    assert [str(s) for s in found] == [
        "0.0.0.0:4369 (epmd, pid 11)",
        "[::]:5671 (beam.smp, pid 10)",
        "127.0.0.1:5672 (beam.smp, pid 10)",
    ]


def test_this_process_own_listener_is_found_on_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        mine = [s for s in listening_sockets([os.getpid()]) if s.port == port]
    assert [(str(s.address), s.pid, s.loopback_only) for s in mine] == [("127.0.0.1", os.getpid(), True)]
