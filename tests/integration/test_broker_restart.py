"""A broker restart under load: the hub and every device are back within seconds, and nothing is lost.

The stack is this test's own (it stops the broker): RabbitMQ is stopped with SIGTERM, then once
more with SIGKILL, and started again on the same ports with the same data directory, while
`python -m hub run` and a mixed fleet of MQTT and STOMP devices keep going.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from devices.fleet import Fleet
from hub.clients.amqp import connect
from hub.control.audit import audit_seqs
from hub.core.config import Settings
from hub.core.errors import BrokerUnavailable
from hub.stack.processes import port_open
from tests.support import HUB_SERVICES, fleet_credentials, hub_process, started_stack, wait_until

SITE = "plant-restart"
DEVICES = 8
INTERVAL_S = 0.25
#: The issue's bounds, from the moment the broker answers again.
HUB_CONSUMES_WITHIN_S = 2.0
DEVICES_BACK_WITHIN_S = 5.0
#: How often the test looks at the broker, the hub's log and the fleet.
POLL_S = 0.02
#: `hub run` logs `event=consuming` once per service per connect.
SERVICES = HUB_SERVICES


def answering_since(settings: Settings, restarted: threading.Thread) -> tuple[float, float]:
    """Monotonic times at which the restarted broker's AMQP vhost, then its MQTT and STOMP listeners, answer."""
    amqp_at = listeners_at = 0.0
    deadline = time.monotonic() + 180
    while not (amqp_at and listeners_at) and time.monotonic() < deadline:
        now = time.monotonic()
        if not amqp_at:
            try:
                connect(settings, "test-probe").close()
                amqp_at = now
            except BrokerUnavailable:
                pass
        if not listeners_at and all(port_open("127.0.0.1", p, 0.2) for p in (settings.mqtt_port, settings.stomp_port)):
            listeners_at = now
        time.sleep(POLL_S)
    assert amqp_at and listeners_at, "the broker did not come back"
    restarted.join(180)
    return amqp_at, listeners_at


def consuming_count(log: Path) -> int:
    return log.read_text().count("event=consuming")


def test_hub_and_devices_are_back_within_seconds_of_a_broker_restart_and_no_reading_is_lost(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    settings, stack = started_stack(tmp_path_factory)
    try:
        fleet_credentials(settings, DEVICES, protocol="mixed", site=SITE)
        with hub_process(settings, tmp_path):
            [log] = tmp_path.glob("hub-*.log")
            fleet = Fleet(settings, count=DEVICES, protocol="mixed", interval_s=INTERVAL_S, site=SITE, seed=13)
            fleet.start()
            try:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    time.sleep(2.0)  # streaming, with readings in flight
                    before = consuming_count(log)
                    assert stack.kill("RabbitMQ", sig)
                    time.sleep(1.0)  # the devices and the hub notice, and buffer
                    restart = threading.Thread(target=stack.up)
                    restart.start()
                    amqp_at, listeners_at = answering_since(settings, restart)
                    wait_until(lambda: consuming_count(log) >= before + SERVICES, 30, POLL_S)  # noqa: B023
                    hub_after_s = time.monotonic() - amqp_at
                    assert fleet.wait_online(timeout_s=30)
                    devices_after_s = time.monotonic() - listeners_at
                    assert hub_after_s <= HUB_CONSUMES_WITHIN_S, f"{sig.name}: hub consumed {hub_after_s:.2f} s after"
                    assert devices_after_s <= DEVICES_BACK_WITHIN_S, (
                        f"{sig.name}: devices back {devices_after_s:.2f} s after the listeners answered"
                    )
                time.sleep(2.0)
            finally:
                fleet.close()
            produced = {d.device_id: d.seq for d in fleet.devices}
            assert all(seq > 20 for seq in produced.values())

            def all_stored() -> bool:
                audits = audit_seqs(settings, SITE)
                return all(d in audits and audits[d].distinct >= n for d, n in produced.items())

            wait_until(all_stored, 60, 0.5)
            audits = audit_seqs(settings, SITE)
            for device, n in produced.items():
                audit = audits[device]
                assert (audit.count, audit.distinct, audit.first, audit.last) == (n, n, 1, n), device
    finally:
        stack.down()
