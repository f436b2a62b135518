"""Process limits a program with thousands of sockets needs raised before it opens them."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the limit now in force.

    Each device connection is one file descriptor in the simulator and one in the broker, and a
    soft limit of 1,024 (a common default) stops both near a thousand devices. Child processes
    (the broker the stack starts) inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft
