"""The fault drills as a benchmark: faults under steady load, and what became of every reading and command.

    python -m bench.chaos [--quick] [--devices 100] [--interval 0.2] [--kills 10] [--outage 60]

Starts its own stack (RabbitMQ + influxd on free ports in a temporary directory), `python -m hub
run` as a child process and a fleet of simulated devices of both protocols (MQTT and STOMP,
100 devices at 0.2 s: 500 readings/s), then runs the drills in turn:

- hub SIGKILL × `--kills` (started again at once, as systemd's Restart= would);
- InfluxDB stopped for `--outage` seconds;
- RabbitMQ stopped with SIGTERM, then with SIGKILL, and started again on the same ports and data;
- the hub stopped (SIGTERM) for `--outage` seconds;
- device links cut: a tenth of the devices lose their connection for a few seconds.

During each outage it sends `ping` to a few devices (`hub.control.send`). After each drill it
waits until what the devices produced is stored, then counts per device by `seq`: missing,
stored twice; the dead-lettered; commands with exactly one `sent` and one outcome in `commands`;
offline rows in `device_status` of devices that were streaming (false offline). Time to recover
is measured from the fault's end (the server answering again, the hub started): until the hub
consumes, every device is online (from the MQTT and STOMP listeners answering), and a reading
taken after it is stored.

`--quick` (20 devices, 2 kills, 12 s outages) finishes in under 3 minutes. Exit code 1 if any
drill lost, doubled or misrecorded anything.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.chaos_audit import (
    ReadingTally,
    dead_lettered,
    fresh_reading_stored,
    missing_seqs,
    offline_rows,
    settle_commands,
    settle_readings,
)
from bench.harness import HubProcess, bench_stack
from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.clients.amqp import connect
from hub.control.audit import audit_seqs
from hub.control.identity import provision_into
from hub.control.send import CommandSender
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.errors import BrokerUnavailable
from hub.core.signals import interrupt_on_stop_signals
from hub.stack import Stack
from hub.stack.processes import port_open

#: Wide enough for the final table when the output is not a terminal (a log, CI).
TABLE_WIDTH = 170
console = Console(width=None if Console().is_terminal else TABLE_WIDTH)

SITE = "chaos"
#: Steady time between drills, and before the first (`--quick`: shorter).
CALM_S = 3.0
QUICK_CALM_S = 2.0
#: How long a cut device stays off the broker.
CUT_S = 5.0
#: Share of the fleet whose links are cut.
CUT_SHARE = 0.1
#: Commands sent during each outage, and how long each may wait for its ack.
COMMANDS_PER_DRILL = 4
COMMAND_TIMEOUT_S = 10.0
#: Bounds on waiting for the drill's effects to settle (they are not what is measured).
SETTLE_TIMEOUT_S = 120.0
RECOVER_TIMEOUT_S = 120.0
POLL_S = 0.05
PROGRESS_EVERY_S = 2.0


@dataclass
class Drill:
    """One drill's record: when it began, what it sent, whom it cut, how long recovery took."""

    name: str
    started_ms: int = field(default_factory=now_ms)
    command_ids: list[str] = field(default_factory=list)
    command_threads: list[threading.Thread] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)
    recovery: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DrillResult:
    name: str
    readings: ReadingTally
    dropped: int
    commands_sent: int
    commands_recorded: int
    recovery: dict[str, float]
    false_offline: int

    @property
    def clean(self) -> bool:
        r = self.readings
        return not (r.missing or r.duplicated or self.false_offline or self.commands_recorded < self.commands_sent)


class Chaos:
    """The stack, the hub, the fleet, and the drills run against them."""

    def __init__(self, settings: Settings, stack: Stack, hub: HubProcess, fleet: Fleet, calm_s: float) -> None:
        self.settings, self.stack, self.hub, self.fleet, self.calm_s = settings, stack, hub, fleet, calm_s
        self.rng = random.Random(13)
        self.previous = ReadingTally(0, 0, 0, 0)
        self.previous_dead = 0
        self.results: list[DrillResult] = []

    # --- what drills use ---------------------------------------------------------------------------

    def progress(self, drill: Drill, what: str) -> None:
        total = self.fleet.stats().total
        console.print(
            f"  [cyan]{drill.name}[/] {what}: online {total.online}/{total.devices}, produced {total.produced:,}, "
            f"confirmed {total.confirmed:,}, buffered {total.buffered:,}"
        )

    def wait(self, drill: Drill, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        next_report = time.monotonic()
        while (left := deadline - time.monotonic()) > 0:
            if time.monotonic() >= next_report:
                self.progress(drill, f"{what}, {left:.0f} s left")
                next_report += PROGRESS_EVERY_S
            time.sleep(min(left, 0.2))

    def send_commands(self, drill: Drill) -> None:
        """Ping a few devices from a thread of its own (it waits for their acks); ids kept for the audit."""
        devices = self.rng.sample([d.device_id for d in self.fleet.devices], COMMANDS_PER_DRILL)

        def send() -> None:
            deadline = time.monotonic() + RECOVER_TIMEOUT_S
            while True:
                try:
                    with CommandSender(self.settings) as sender:
                        outcomes = sender.send(devices, "ping", {}, timeout_s=COMMAND_TIMEOUT_S)
                    drill.command_ids.extend(o.id for o in outcomes if o.id)
                    return
                except BrokerUnavailable:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.2)

        thread = threading.Thread(target=send, name=f"commands-{drill.name}", daemon=True)
        thread.start()
        drill.command_threads.append(thread)

    def recovered(
        self,
        drill: Drill,
        since: float,
        since_ms: int,
        hub: bool,
        devices: bool = True,
        devices_since: float | None = None,
    ) -> None:
        """Seconds from `since` until the hub consumes (if restarted), all devices are online, a new reading stored."""
        waiting = {"stored"} | ({"hub"} if hub else set()) | ({"devices"} if devices else set())
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            now = time.monotonic()
            if "hub" in waiting and self.hub.consuming():
                drill.recovery["hub"] = now - since
                waiting.discard("hub")
            if "devices" in waiting and self.fleet.wait_online(timeout_s=0):
                drill.recovery["devices"] = now - (devices_since or since)
                waiting.discard("devices")
            if "stored" in waiting and fresh_reading_stored(self.settings, SITE, since_ms):
                drill.recovery["stored"] = time.monotonic() - since
                waiting.discard("stored")
            time.sleep(POLL_S)

    def broker_answers(self) -> tuple[float, int, float]:
        """Wait until the AMQP vhost accepts a connection and the MQTT and STOMP listeners answer.

        Returns the monotonic and wall-clock times of the first, and the monotonic time of the second
        (the hub needs only AMQP; devices need their listener, which the broker starts later).
        """
        amqp_at, amqp_ms, listeners_at = 0.0, 0, 0.0
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        while not (amqp_at and listeners_at) and time.monotonic() < deadline:
            if not amqp_at:
                try:
                    connect(self.settings, "chaos-probe").close()
                    amqp_at, amqp_ms = time.monotonic(), now_ms()
                except BrokerUnavailable:
                    pass
            ports = (self.settings.mqtt_port, self.settings.stomp_port)
            if not listeners_at and all(port_open("127.0.0.1", port, 0.2) for port in ports):
                listeners_at = time.monotonic()
            time.sleep(POLL_S)
        if not (amqp_at and listeners_at):
            raise SystemExit("the broker did not come back")
        return amqp_at, amqp_ms, listeners_at

    # --- the drills ----------------------------------------------------------------------------------

    def hub_kill(self, drill: Drill) -> None:
        self.hub.stop(signal.SIGKILL)
        self.send_commands(drill)
        since, since_ms = time.monotonic(), now_ms()
        self.hub.start(wait=False)
        self.recovered(drill, since, since_ms, hub=True, devices=False)

    def influx_down(self, drill: Drill, outage_s: float) -> None:
        self.stack.kill("InfluxDB", signal.SIGTERM)
        self.send_commands(drill)
        self.wait(drill, outage_s, "InfluxDB down")
        self.stack.up()
        self.recovered(drill, time.monotonic(), now_ms(), hub=False, devices=False)

    def broker_restart(self, drill: Drill, sig: signal.Signals) -> None:
        self.stack.kill("RabbitMQ", sig)
        self.progress(drill, "RabbitMQ stopped, starting it again")
        restart = threading.Thread(target=self.stack.up, daemon=True)
        restart.start()
        since, since_ms, listeners_at = self.broker_answers()
        self.send_commands(drill)
        self.recovered(drill, since, since_ms, hub=True, devices_since=listeners_at)
        restart.join(RECOVER_TIMEOUT_S)

    def hub_down(self, drill: Drill, outage_s: float) -> None:
        self.hub.stop(signal.SIGTERM)
        self.send_commands(drill)
        self.wait(drill, outage_s, "hub down")
        since, since_ms = time.monotonic(), now_ms()
        self.hub.start(wait=False)
        self.recovered(drill, since, since_ms, hub=True, devices=False)

    def links_cut(self, drill: Drill) -> None:
        count = max(1, round(len(self.fleet.devices) * CUT_SHARE))
        drill.cut = set(self.rng.sample([d.device_id for d in self.fleet.devices], count))
        for device in drill.cut:
            self.fleet.cut(device, for_s=CUT_S)
        self.send_commands(drill)
        self.wait(drill, CUT_S, f"{count} links cut")
        self.recovered(drill, time.monotonic(), now_ms(), hub=False)

    # --- one drill, judged ---------------------------------------------------------------------------

    def run(self, name: str, fault: Callable[[Drill], None]) -> DrillResult:
        drill = Drill(name)
        self.wait(drill, self.calm_s, "steady")
        drill.started_ms = now_ms()
        console.print(f"[bold]{name}[/]")
        fault(drill)
        for thread in drill.command_threads:
            thread.join(COMMAND_TIMEOUT_S + RECOVER_TIMEOUT_S)
        self.progress(drill, "recovered, checking")
        produced = {d.device_id: d.seq for d in self.fleet.devices}
        readings = settle_readings(self.settings, SITE, produced, SETTLE_TIMEOUT_S)
        recorded = settle_commands(self.settings, drill.command_ids, drill.started_ms - 60_000, SETTLE_TIMEOUT_S)
        offline = offline_rows(self.settings, SITE, drill.started_ms)
        dead = dead_lettered(self.settings)
        result = DrillResult(
            name,
            ReadingTally(
                readings.produced - self.previous.produced,
                readings.stored - self.previous.stored,
                readings.missing - self.previous.missing,
                readings.duplicated - self.previous.duplicated,
            ),
            dead - self.previous_dead,
            len(drill.command_ids),
            recorded,
            drill.recovery,
            sum(len(reasons) for device, reasons in offline.items() if device not in drill.cut),
        )
        if result.readings.missing:
            for device, seqs in missing_seqs(self.settings, SITE, produced, audit_seqs(self.settings, SITE)).items():
                protocol = self.fleet.device(device).protocol
                console.print(f"  [red]missing[/] {device} ({protocol}): seq {seqs[:20]}")
        false_rows = {d: reasons for d, reasons in offline.items() if d not in drill.cut}
        for device, reasons in sorted(false_rows.items())[:5]:
            console.print(f"  [red]false offline[/] {device} ({self.fleet.device(device).protocol}): {reasons}")
        self.previous, self.previous_dead = readings, dead
        self.results.append(result)
        console.print(
            f"  -> produced {result.readings.produced:,}, stored {result.readings.stored:,}, "
            f"missing {result.readings.missing}, duplicated {result.readings.duplicated}, "
            f"commands {recorded}/{len(drill.command_ids)}, false offline {result.false_offline}, "
            f"recovery {recovery_text(drill.recovery)}"
        )
        return result


def recovery_text(recovery: dict[str, float]) -> str:
    """E.g. `hub 1.3 s, devices 3.4 s, stored 2.0 s` (seconds after the fault ended), in a fixed order."""
    order = ("hub", "devices", "stored")
    return ", ".join(f"{name} {recovery[name]:.1f} s" for name in order if name in recovery) or "-"


def results_table(results: list[DrillResult], title: str) -> Table:
    table = Table(title=title)
    for column in ("drill", "produced", "stored", "missing", "duplicated", "dropped"):
        table.add_column(column, justify="left" if column == "drill" else "right")
    table.add_column("commands recorded correctly / sent", justify="right")
    table.add_column("time to recover")
    table.add_column("false offline", justify="right")
    for r in results:
        table.add_row(
            r.name,
            f"{r.readings.produced:,}",
            f"{r.readings.stored:,}",
            str(r.readings.missing),
            str(r.readings.duplicated),
            str(r.dropped),
            f"{r.commands_recorded}/{r.commands_sent}",
            recovery_text(r.recovery),
            str(r.false_offline),
        )
    return table


def main() -> int:
    # A `timeout` (SIGTERM) or a Ctrl-C runs the `finally` blocks: the stack stops with the benchmark.
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 devices, 2 hub kills, 12 s outages (< 3 minutes)")
    parser.add_argument("--devices", type=int, default=None, help="simulated devices, half MQTT, half STOMP (100)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between one device's readings")
    parser.add_argument("--kills", type=int, default=None, help="hub SIGKILLs (10)")
    parser.add_argument("--outage", type=float, default=None, help="seconds InfluxDB and the hub are down (60)")
    parser.add_argument(
        "--drills", default="hub-kill,influx,broker-term,broker-kill,hub-down,links", help="which, in order"
    )
    parser.add_argument("--hub-log", type=Path, default=None, help="keep the hub's log here (default: discarded)")
    args = parser.parse_args()
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)  # its reconnect chatter would drown the progress
    devices = args.devices or (20 if args.quick else 100)
    kills = args.kills if args.kills is not None else (2 if args.quick else 10)
    outage_s = args.outage if args.outage is not None else (12.0 if args.quick else 60.0)
    started = time.monotonic()

    with bench_stack("hub-chaos-", console.print) as bench:
        settings, stack = bench.settings, bench.stack
        hub = HubProcess(settings, args.hub_log or bench.root / "hub.log")
        try:
            provision_into(
                settings,
                [spec.device_id for spec in plan_fleet(devices, protocol="mixed", site=SITE)],
                settings.credentials_path,
            )
            hub.start()
            with Fleet(settings, count=devices, protocol="mixed", interval_s=args.interval, site=SITE, seed=7) as fleet:
                console.print(
                    f"{devices} devices (MQTT and STOMP) at {devices / args.interval:,.0f} readings/s; the hub consumes"
                )
                chaos = Chaos(settings, stack, hub, fleet, QUICK_CALM_S if args.quick else CALM_S)
                for drill in args.drills.split(","):
                    if drill == "hub-kill":
                        for n in range(1, kills + 1):
                            chaos.run(f"hub SIGKILL {n}/{kills}", chaos.hub_kill)
                    elif drill == "influx":
                        chaos.run(f"InfluxDB down {outage_s:.0f} s", lambda d: chaos.influx_down(d, outage_s))
                    elif drill == "broker-term":
                        chaos.run("RabbitMQ SIGTERM", lambda d: chaos.broker_restart(d, signal.SIGTERM))
                    elif drill == "broker-kill":
                        chaos.run("RabbitMQ SIGKILL", lambda d: chaos.broker_restart(d, signal.SIGKILL))
                    elif drill == "hub-down":
                        chaos.run(f"hub down {outage_s:.0f} s", lambda d: chaos.hub_down(d, outage_s))
                    elif drill == "links":
                        chaos.run("device links cut", chaos.links_cut)
                    else:
                        raise SystemExit(f"no drill {drill!r}")
        finally:
            hub.stop()

    results = chaos.results
    readings = sum(r.readings.produced for r in results)
    missing = sum(r.readings.missing for r in results)
    duplicated = sum(r.readings.duplicated for r in results)
    unrecorded = sum(r.commands_sent - r.commands_recorded for r in results)
    false_offline = sum(r.false_offline for r in results)
    console.print(
        results_table(
            results,
            f"chaos: {devices} devices at {devices / args.interval:,.0f} readings/s, "
            f"{time.monotonic() - started:.0f} s in all",
        )
    )
    console.print(
        f"chaos: {len(results)} drills, {readings:,} readings, {missing} missing, {duplicated} duplicated, "
        f"{unrecorded} commands unrecorded, {false_offline} false offline"
    )
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
