"""`python -m hub stack up` on a partly running stack: the missing server starts, the other is left alone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hub.clients.influx import InfluxHttp
from hub.stack import Stack
from hub.stack.processes import is_ours
from hub.stack.stack import settings_on_free_ports
from tests.support import wait_until


def test_stack_up_starts_again_only_the_server_that_died(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path / "partly")
    stack = Stack(settings)
    try:
        pids = {s.name: s.pid for s in stack.up().services}
        os.kill(pids["InfluxDB"], signal.SIGKILL)
        wait_until(lambda: not is_ours(pids["InfluxDB"], str(tmp_path / "partly")), 15)
        assert not stack.status().running
        said: list[str] = []
        again = stack.up(said.append)
        after = {s.name: s.pid for s in again.services}
        assert again.running and not again.already_running
        assert after["RabbitMQ"] == pids["RabbitMQ"], "the running broker is left alone"
        assert after["InfluxDB"] != pids["InfluxDB"]
        expected = "InfluxDB not running: starting it again (RabbitMQ, broker auth left as it is)"
        assert any(expected in line for line in said), said
        client = InfluxHttp.from_settings(settings, settings.influx_reader)
        try:
            [[databases]] = client.query("SHOW DATABASES")
            assert {"name": settings.influx_db} in databases.rows
        finally:
            client.close()
    finally:
        stack.down()
