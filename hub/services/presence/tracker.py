"""Presence: which devices are online, from status messages, MQTT last wills and silence.

`PresenceTracker` is the pure core: it takes status messages, signs of life (telemetry) and the
clock, and returns *transitions* only.
A device silent for `OFFLINE_AFTER_INTERVALS` of its reporting intervals, and at least
`MIN_SILENCE_MS`, is offline ("silent"),
which also covers STOMP devices (no last will). An offline status whose body is older than
the device's last sign of life is its MQTT last will: the broker publishes the body the device
registered when it connected, while a device going offline on purpose stamps it now.
An online status that names a new site, kind or protocol is recorded again even when the device
was already online, so `device_status` always says where a device is.

The time the hub was away is not silence: silence is counted from the last sign of life or
from `silence_from_ms`, whichever is later. The service moves `silence_from_ms` to the moment
it consumes again (after a start, a reconnect, a paused feed) plus a grace in which devices
reconnect; and a restarted hub starts from the states `device_status` last recorded (`seed`),
so a device that went silent while the hub was down is still found, and one still streaming is
not recorded online a second time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hub.core.contract import Presence, Transport
from hub.core.points import Point

#: A device is offline after this many of its intervals without a status or a reading...
OFFLINE_AFTER_INTERVALS = 3
#: ...and never after less than this: a hub under load (a backlog after an outage, two busy
#: cores) takes readings a second or more late, and 3 intervals of a device reporting every
#: 0.2 s are 0.6 s (`python -m bench.chaos` saw the whole fleet "silent" after an InfluxDB outage).
MIN_SILENCE_MS = 5_000


@dataclass
class DevicePresence:
    device: str
    site: str
    kind: str
    protocol: Transport
    interval_ms: int | None
    fw: str
    online: bool
    #: Hub clock (ms) at the last status or reading.
    last_seen_ms: int
    #: The device's own timestamp on its last status or reading.
    last_device_ts: int


@dataclass(frozen=True)
class Transition:
    device: str
    site: str
    kind: str
    protocol: Transport
    online: bool
    interval_ms: int
    fw: str
    reason: str  # status | last_will | silent | telemetry
    ts: int

    def point(self) -> Point:
        return Point(
            "device_status",
            {"device": self.device, "site": self.site, "kind": self.kind, "protocol": self.protocol},
            {
                "state": "online" if self.online else "offline",
                "online": self.online,
                "interval_ms": self.interval_ms,
                "fw": self.fw,
                "reason": self.reason,
            },
            self.ts,
        )


class PresenceTracker:
    """Device states, kept by presence's thread alone (signs from other threads wait in a `SignsFeed`)."""

    def __init__(
        self, offline_after_intervals: int = OFFLINE_AFTER_INTERVALS, min_silence_ms: int = MIN_SILENCE_MS
    ) -> None:
        self.offline_after = offline_after_intervals
        self.min_silence_ms = min_silence_ms
        self.devices: dict[str, DevicePresence] = {}
        #: Hub clock (ms) before which no device's silence is counted (see the module's docstring).
        self.silence_from_ms = 0

    def _transition(self, state: DevicePresence, online: bool, reason: str, ts: int) -> Transition:
        state.online = online
        return Transition(
            state.device,
            state.site,
            state.kind,
            state.protocol,
            online,
            state.interval_ms or 0,
            state.fw,
            reason,
            ts,
        )

    def on_status(self, status: Presence, at_ms: int) -> Transition | None:
        online = status.state == "online"
        state = self.devices.get(status.device)
        if state is None:
            state = self.devices[status.device] = DevicePresence(
                status.device, status.site, status.kind, status.protocol, status.interval_ms, status.fw,
                not online, at_ms, status.ts,
            )  # fmt: skip
            last_will = False
        else:
            last_will = not online and status.protocol == "mqtt" and status.ts < state.last_device_ts
        moved = (state.site, state.kind, state.protocol) != (status.site, status.kind, status.protocol)
        state.site, state.kind, state.protocol = status.site, status.kind, status.protocol
        state.interval_ms, state.fw = status.interval_ms, status.fw or state.fw
        if online:
            state.last_seen_ms = max(state.last_seen_ms, at_ms)
        if not last_will:
            state.last_device_ts = max(state.last_device_ts, status.ts)
        if state.online == online and not (online and moved):
            return None
        return self._transition(state, online, "last_will" if last_will else "status", at_ms)

    def on_telemetry(
        self, device: str, site: str, kind: str, protocol: Transport, device_ts: int, at_ms: int
    ) -> Transition | None:
        """A reading is a sign of life; a device not known online becomes online ("telemetry").

        A reading stamped before the device's last word is not: the telemetry and status queues
        drain independently, so after a backlog a reading can arrive after the device's own
        "offline" status, and must not bring a device back that has gone.
        """
        state = self.devices.get(device)
        if state is not None and not state.online and device_ts <= state.last_device_ts:
            return None
        if state is None:
            state = self.devices[device] = DevicePresence(
                device, site, kind, protocol, None, "", False, at_ms, device_ts
            )
        elif state.interval_ms is None and device_ts > state.last_device_ts:
            state.interval_ms = device_ts - state.last_device_ts  # no status seen: estimate it
        state.last_seen_ms = max(state.last_seen_ms, at_ms)
        state.last_device_ts = max(state.last_device_ts, device_ts)
        if state.online:
            return None
        return self._transition(state, True, "telemetry", at_ms)

    def silent(self, now: int) -> list[Transition]:
        """Offline transitions for every online device not heard from for its allowed silence."""
        found = []
        for state in self.devices.values():
            if (
                state.online
                and state.interval_ms
                and now - max(state.last_seen_ms, self.silence_from_ms)
                > max(self.offline_after * state.interval_ms, self.min_silence_ms)
            ):
                found.append(self._transition(state, False, "silent", now))
        return found

    def heard_from_all(self, now: int) -> None:
        """Count every device as heard from at `now`: the time its signs could not reach us is not silence."""
        self.silence_from_ms = max(self.silence_from_ms, now)

    def adopt(self, known: Iterable[DevicePresence]) -> None:
        """Take over from another hub: what `device_status` recorded replaces what a standby saw."""
        self.devices.update((state.device, state) for state in known)

    def seed(self, known: Iterable[DevicePresence]) -> None:
        """Start from what `device_status` last recorded (a hub start); devices already heard from are kept."""
        for state in known:
            self.devices.setdefault(state.device, state)
