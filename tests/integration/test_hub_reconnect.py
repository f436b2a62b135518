"""A hub service that lost its broker connection several times still retries soon after each loss.

The broker closes the service's connection (as a node restart or a network blip would), the
service reconnects, and again: its backoff starts over once it consumes, so the first retry
after the fourth loss waits no longer than after the first (it used to wait the maximum).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from hub.clients.management import ManagementAdmin
from hub.core.backoff import HUB_RECONNECT
from hub.core.config import Settings
from tests.support import hub_process, wait_until

#: Connection losses in a row: after four, a backoff never reset is at its maximum.
OUTAGES = 4
#: `hub run` logs one `event=reconnecting in_s=<delay>` per retry (the delay to one decimal).
RECONNECTING = re.compile(r"service=commands event=reconnecting in_s=([0-9.]+)")


def test_each_connection_loss_is_retried_after_the_first_delay_not_a_growing_one(
    stack: Settings, tmp_path: Path
) -> None:
    admin = ManagementAdmin(stack)
    with hub_process(stack, tmp_path, "--only", "commands") as hub:
        [log] = tmp_path.glob("hub-*.log")
        ours = f"iot-hub hub-commands {socket.gethostname()}-{hub.pid}"

        def consuming() -> int:
            return log.read_text().count("event=consuming")

        for _ in range(OUTAGES):
            [connection] = wait_until(lambda: admin.connections_named(ours), 15)
            before = consuming()
            admin.close_connection(connection, "test: connection lost")
            wait_until(lambda: consuming() > before, 15)  # noqa: B023 (called at once, within this round)
    delays = [float(delay) for delay in RECONNECTING.findall(log.read_text())]
    assert len(delays) == OUTAGES, log.read_text()
    assert max(delays) <= HUB_RECONNECT.first_s, f"retry delays {delays}: the backoff grew from one outage to the next"
