"""What a simulated device logs, without a broker: boot, each fault it starts, each command it
handles; lines that wait while it is offline are bounded, and stamped so none overwrites another."""

from __future__ import annotations

from devices.device import FIRMWARE, DeviceSpec, SimulatedDevice
from devices.device_log import DeviceLog
from hub.core.contract import Command, Scalar, decode_log_line, encode

START_MS = 1_795_392_000_000


def device(fault_rate: float = 0.0) -> SimulatedDevice:
    return SimulatedDevice.create(
        DeviceSpec("env-0001", "environment", "mqtt", "plant-a"), seed=1, fault_rate=fault_rate, start_s=START_MS / 1000
    )


def lines(sim: SimulatedDevice) -> list[tuple[str, str]]:
    taken = [decode_log_line(body, key) for key, body in sim.log.take()]  # each valid, on its own routing key
    return [(line.level, line.message) for line in taken]


def test_a_device_logs_its_boot() -> None:
    assert lines(device()) == [("info", f"booted {FIRMWARE}")]


def test_each_fault_started_is_one_line_at_a_level_that_fits() -> None:
    sim = device(fault_rate=0.05)
    sim.log.take()
    for i in range(1, 1_000):
        sim.produce(START_MS + i * 1000)
    counts = sim.faults.counts
    logged = [level for level, _message in lines(sim)]
    # At most 50 wait while offline: the newest are kept.
    assert len(logged) == min(50, counts.spike + counts.stuck + counts.dropout)
    assert set(logged) <= {"warning", "error"} and "error" in logged


def test_a_fault_free_device_logs_nothing_while_it_reads() -> None:
    sim = device()
    sim.log.take()
    for i in range(1, 100):
        sim.produce(START_MS + i * 1000)
    assert lines(sim) == []


def test_commands_handled_are_logged_info_when_done_and_warning_when_not() -> None:
    sim = device()
    sim.log.take()
    calls: list[tuple[str, dict[str, Scalar]]] = [("ping", {}), ("set_setpoint", {"value": 20})]
    for name, args in calls:
        command = Command(id=f"c-{name}", command=name, args=args, ts=START_MS, expires=START_MS + 1)
        sim.handle_command(encode(command), at_ms=START_MS)
    assert lines(sim) == [
        ("info", "command ping done"),
        ("warning", "command set_setpoint unsupported: set_setpoint is for thermostat devices, this is environment"),
    ]


def test_lines_of_one_level_in_one_millisecond_get_their_own_timestamps() -> None:
    log = DeviceLog("env-0001", capacity=3)
    stamps = [log.add("warning", f"w{i}", 1_000).ts for i in range(3)]
    assert stamps == [1_000, 1_001, 1_002]
    assert log.add("error", "e", 1_000).ts == 1_000
    assert (len(log), log.dropped) == (3, 1)
