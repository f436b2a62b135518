"""What the cluster drills share: a steady load (two hubs, a fleet of both protocols), commands sent
during a drill, and the checks every drill ends with.

One load runs through every drill of `test_cluster.py`, so each drill is judged on its own window:
the readings produced up to its end stored exactly once per (device, seq), every command sent
during it settled, the hubs that should live alive, every device online.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from devices.fleet import Fleet
from hub.clients.management import read_hub_consumers
from hub.control.audit import command_records, correctly_recorded
from hub.control.send import CommandSender, Outcome
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.errors import BrokerUnavailable
from tests.support import hub_process, influx_query, wait_until

#: The fleet's site: its readings and nobody else's.
SITE = "drills"
#: Both protocols, spread over the nodes (device i starts on node i modulo 3).
DEVICES = 12
#: Seconds between readings of one device: 12 devices make 60 readings a second.
INTERVAL_S = 0.2
#: Seconds every device gets to be online again after a drill.
RECONNECT_WAIT_S = 30.0
#: Seconds the readings of a drill window get to be stored (after a node loss: redeliveries, re-sends).
STORED_WAIT_S = 60.0
#: Devices pinged in every round of a drill's commands: two of each protocol (the fleet alternates them).
COMMANDED = 4
#: Seconds a drill's command waits for its ack; the hub records `timeout` 2 s after it expires.
COMMAND_TIMEOUT_S = 8.0
#: Seconds between two rounds of commands during a drill.
COMMAND_ROUND_S = 5.0
#: Seconds every command of a drill gets to have its `sent` and its one outcome in `commands`.
COMMANDS_SETTLE_S = 30.0
#: The service whose role tells which hub is the active one (a queue name that stays: hub.commands).
COMMANDS_QUEUE = "hub.commands"


def alive(process: subprocess.Popen[bytes]) -> bool:
    """Running, by /proc: not exited, not a zombie (our child, so `poll` reaps it once it is gone)."""
    if process.poll() is not None:
        return False
    try:
        state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Load:
    """Two `hub run` processes and a fleet of both protocols on the cluster, for every drill in turn."""

    settings: Settings
    fleet: Fleet
    hubs: list[subprocess.Popen[bytes]]
    #: Hubs a drill killed on purpose (not restarted: their standby carries on).
    killed: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _stack: ExitStack = field(default_factory=ExitStack)

    def living_hubs(self) -> list[subprocess.Popen[bytes]]:
        return [hub for hub in self.hubs if hub not in self.killed]

    def active_hub(self) -> subprocess.Popen[bytes] | None:
        """The hub the broker delivers hub.commands to (its connection name carries `<host>-<pid>`)."""
        consumers = read_hub_consumers(self.settings) or []
        active = [name for queue, name, status in consumers if queue == COMMANDS_QUEUE and status == "single_active"]
        pids = {name.rsplit("-", 1)[-1] for name in active}
        found = [hub for hub in self.living_hubs() if str(hub.pid) in pids]
        return found[0] if len(found) == 1 else None

    def close(self) -> None:
        self._stack.close()


@contextmanager
def steady_load(settings: Settings, log_dir: Path) -> Iterator[Load]:
    """Two hubs (the first active, the second a hot standby), then the fleet, all online."""
    with ExitStack() as stack:
        first = stack.enter_context(hub_process(settings, log_dir))
        second = stack.enter_context(hub_process(settings, log_dir))
        fleet = stack.enter_context(
            Fleet(settings, count=DEVICES, protocol="mixed", interval_s=INTERVAL_S, site=SITE, seed=15)
        )
        assert fleet.wait_online(timeout_s=RECONNECT_WAIT_S), "the fleet came online"
        load = Load(settings, fleet, [first, second], _stack=stack.pop_all())
    try:
        yield load
    finally:
        load.close()


class DrillCommands:
    """`ping` to a few devices of both protocols in rounds, from a thread, while a drill runs (through
    `hub.control.send`, the path of `python -m hub send`). Every outcome the sender saw is kept."""

    def __init__(self, settings: Settings, fleet: Fleet) -> None:
        self.settings = settings
        self.devices = [d.device_id for d in fleet.devices[:COMMANDED]]
        self.outcomes: list[Outcome] = []
        #: Rounds the sender lost its connection in: reported as failed to the sender.
        self.failed_rounds = 0
        self.started_ms = now_ms()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._rounds, name="drill-commands", daemon=True)

    def __enter__(self) -> DrillCommands:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(COMMAND_TIMEOUT_S * 3)
        assert not self._thread.is_alive(), "the command sender ended"

    def _rounds(self) -> None:
        while not self._stop.is_set():
            try:
                with CommandSender(self.settings) as sender:
                    self.outcomes += sender.send(self.devices, "ping", {}, timeout_s=COMMAND_TIMEOUT_S)
            except BrokerUnavailable:
                self.failed_rounds += 1
            self._stop.wait(COMMAND_ROUND_S)

    def check(self) -> Counter[str]:
        """Every command the hub saw since the drill began has one `sent` and one outcome in `commands`;
        every one the sender saw acked is recorded `ok`. Returns the sender's outcomes, counted."""
        assert self.outcomes, "commands were sent during the drill"

        def settled() -> dict[str, list[str]] | None:
            records = command_records(self.settings, self.started_ms)
            # Also those the sender lost sight of (its connection gone after the publish): the hub has them.
            published = {o.id for o in self.outcomes if o.id} | {i for i, s in records.items() if "sent" in s}
            done = all(correctly_recorded(records.get(command_id, [])) for command_id in published)
            return records if done else None

        try:
            records: dict[str, list[str]] = wait_until(settled, COMMANDS_SETTLE_S, 0.5)
        except AssertionError:
            records = command_records(self.settings, self.started_ms)
            stuck = {i: s for i, s in records.items() if not correctly_recorded(s)}
            lost = [o for o in self.outcomes if o.id and o.id not in records]
            raise AssertionError(f"commands not settled: stuck {stuck}, never recorded {lost}") from None
        for outcome in self.outcomes:
            if outcome.status == "ok":
                assert "ok" in records[outcome.id], (outcome, records[outcome.id])
            else:  # reported to the sender as failed: never silent
                assert outcome.status in ("timeout", "unknown_device", "expired"), outcome
        return Counter(o.status for o in self.outcomes)


def stored_seqs(settings: Settings, device: str, kind: str, site: str = SITE) -> list[int]:
    series = influx_query(settings, f"SELECT seq FROM \"{kind}\" WHERE device = '{device}' AND site = '{site}'")
    return [int(row[1]) for row in series[0]["values"]] if series else []


def check_window(load: Load) -> dict[str, int]:
    """The readings produced so far (the end of this drill's window): each stored exactly once per
    (device, seq), none missing; the hubs that should live alive; every device online. Returns made."""
    fleet = load.fleet
    if not fleet.wait_online(timeout_s=RECONNECT_WAIT_S):
        away = [f"{d.device_id}: {fleet.describe(d.device_id)}" for d in fleet.devices]
        raise AssertionError("devices not online again:\n" + "\n".join(away))
    made = {d.device_id: d.seq for d in fleet.devices}

    def stored() -> dict[str, list[int]]:
        return {d.device_id: stored_seqs(load.settings, d.device_id, d.kind) for d in fleet.devices}

    def complete() -> dict[str, list[int]] | None:
        seqs = stored()
        return seqs if all(set(range(1, made[d] + 1)) <= set(s) for d, s in seqs.items()) else None

    try:
        seqs: dict[str, list[int]] = wait_until(complete, STORED_WAIT_S, 0.5)
    except AssertionError:
        seqs = stored()
        missing = {d: sorted(set(range(1, made[d] + 1)) - set(s))[:20] for d, s in seqs.items()}
        raise AssertionError(f"readings missing: {missing}") from None
    for device, device_seqs in seqs.items():
        doubled = sorted(seq for seq, n in Counter(device_seqs).items() if n > 1)
        assert not doubled, f"{device}: stored twice: {doubled[:20]}"
        assert sorted(s for s in device_seqs if s <= made[device]) == list(range(1, made[device] + 1))
    for hub in load.living_hubs():
        assert alive(hub), f"hub {hub.pid} ran through the drill without a restart"
    return made


def wait_for_active(load: Load, timeout_s: float = 30.0) -> subprocess.Popen[bytes]:
    """The hub that is active on hub.commands, once the broker has one."""
    hub: subprocess.Popen[bytes] = wait_until(partial(Load.active_hub, load), timeout_s, 0.5)
    return hub
