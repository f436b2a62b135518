"""A simulated device's own log: lines waiting to be published to `logs/<device>/<level>`.

What a device does (boot, connect, lose its connection, a sensor fault, a command) becomes a
`LogLine` here, without I/O; the fleet's event loop publishes what waits once the device is
online. Lines are kept while it is offline, at most `MAX_PENDING_LINES` (the oldest go first):
a log is worth less than readings, so it is not in the readings' outbox and is sent at most
once. Each line of one level is stamped at least 1 ms after the previous one of that level:
device, level and `ts` identify a stored line.
"""

from __future__ import annotations

from collections import deque

from hub.core.contract import LogLevel, LogLine, Scalar, encode, log_key

#: Lines one device keeps while offline; beyond it the oldest go.
MAX_PENDING_LINES = 50


class DeviceLog:
    def __init__(self, device: str, capacity: int = MAX_PENDING_LINES) -> None:
        self.device = device
        self._pending: deque[tuple[str, bytes]] = deque(maxlen=capacity)
        self._last_ts: dict[str, int] = {}
        #: Lines logged, and lines thrown away unsent because too many waited.
        self.logged = 0
        self.dropped = 0

    def add(self, level: LogLevel, message: str, at_ms: int, **fields: Scalar) -> LogLine:
        ts = max(at_ms, self._last_ts.get(level, -1) + 1)
        self._last_ts[level] = ts
        line = LogLine(device=self.device, ts=ts, level=level, message=message, fields=fields)
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append((log_key(self.device, level), encode(line)))
        self.logged += 1
        return line

    def take(self) -> list[tuple[str, bytes]]:
        """Every waiting line, (routing key, body), oldest first; they are no longer kept."""
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def __len__(self) -> int:
        return len(self._pending)
