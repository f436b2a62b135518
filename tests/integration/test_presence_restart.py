"""Presence across a hub restart: the time the hub was away is not the devices' silence.

Devices stream while `python -m hub run` is stopped for many times their offline window, then
the hub starts again: a device that streamed throughout gets no offline row, one that said
goodbye meanwhile is recorded offline from the status that waited in `hub.presence`, and a STOMP
device that died silently meanwhile (no last will) is still found silent.
"""

from __future__ import annotations

import time
from pathlib import Path

from devices.fleet import Fleet
from hub.core.config import Settings
from hub.services.presence.service import RECONNECT_GRACE_S
from tests.support import hub_process, transitions, wait_until

SITE = "plant-away"
INTERVAL_S = 0.25
#: The hub is away for this many seconds: twelve times the devices' offline window (3 intervals).
HUB_AWAY_S = 9.0


def test_devices_streaming_while_the_hub_was_away_are_not_recorded_offline(stack: Settings, tmp_path: Path) -> None:
    # The session's stack is shared: its fleets reuse device ids, so each row is looked up at SITE.
    with Fleet(stack, count=6, protocol="mixed", interval_s=INTERVAL_S, site=SITE, seed=7) as fleet:
        ids = [d.device_id for d in fleet.devices]
        mqtt_leaving = next(d.device_id for d in fleet.devices if d.protocol == "mqtt")
        stomp_dying = next(d.device_id for d in fleet.devices if d.protocol == "stomp")
        streaming = [i for i in ids if i not in (mqtt_leaving, stomp_dying)]
        with hub_process(stack, tmp_path):
            wait_until(lambda: all(len(transitions(stack, i, SITE)) == 1 for i in ids), 20)
            time.sleep(1.0)
            before = {i: transitions(stack, i, SITE) for i in ids}
            assert all(states[0][0] == "online" for states in before.values()), before
        fleet.stop_device(mqtt_leaving, clean=True)  # says offline: the status waits in hub.presence
        fleet.stop_device(stomp_dying, clean=False)  # a STOMP device just vanishes: no last will
        time.sleep(HUB_AWAY_S)
        with hub_process(stack, tmp_path):
            wait_until(lambda: transitions(stack, mqtt_leaving, SITE)[-1:] == [("offline", "status")], 15)
            wait_until(lambda: transitions(stack, stomp_dying, SITE)[-1:] == [("offline", "silent")], 30)
            time.sleep(RECONNECT_GRACE_S + 2.0)  # past the grace and many offline windows after it
            for device in streaming:
                assert transitions(stack, device, SITE) == before[device], device
    assert transitions(stack, mqtt_leaving, SITE) == [*before[mqtt_leaving], ("offline", "status")]
    assert transitions(stack, stomp_dying, SITE) == [*before[stomp_dying], ("offline", "silent")]
