"""`python -m hub demo` (what `make demo` runs): the whole system, live, in one terminal.

It brings the stack up (docker compose where an engine answers, else the native stack),
starts the hub and the simulator as child processes, sends a few commands with the CLI so
their effect shows, and displays what InfluxDB says is happening every second. It stops on
Ctrl-C, SIGTERM or after `--duration` seconds, and stops exactly what it started: its
children always, the stack too unless it was already running or `--keep-stack` is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hub.clients.management import management_url, read_queue_names
from hub.core.config import DEV_AMQP_URL, PROJECT_ROOT, AmqpParts, Settings, load_settings
from hub.core.contract import now_ms
from hub.core.errors import HubError, StackError, StorageUnavailable
from hub.core.exit_codes import ExitCode
from hub.demo.activity import RateWindow, Snapshot, read_activity
from hub.demo.children import Child, start_child
from hub.stack import Stack
from hub.stack.processes import free_port, port_open
from hub.stack.stack import stack_root

DEV_HUB_PASSWORD = AmqpParts.parse(DEV_AMQP_URL).password
DEFAULT_COUNT = 50
#: How long the hub may take to declare its queues, and the devices to come online.
HUB_READY_TIMEOUT_S = 60.0
DEVICES_ONLINE_TIMEOUT_S = 60.0
#: How often the live view asks InfluxDB what happened.
REFRESH_S = 1.0
#: Without a terminal (CI, a pipe) the view is a status line this often instead.
PLAIN_REPORT_S = 5.0
#: Pause between two demo commands, so each one's effect can be seen.
COMMAND_GAP_S = 1.5
#: Timeout of each demo command (`send --timeout`).
COMMAND_TIMEOUT_S = 5.0
DOCKER_PROBE_TIMEOUT_S = 10.0
#: Line width when the output is not a terminal (CI logs, a pipe).
PIPE_WIDTH = 160
CHRONOGRAF_URL = "http://localhost:8888"


# --- the scenario: which commands the demo sends ----------------------------------------------


@dataclass(frozen=True)
class DemoCommand:
    argv: tuple[str, ...]
    why: str

    @property
    def shown(self) -> str:
        return "iot-hub send " + " ".join(shlex.quote(a) for a in self.argv)


def plan_commands(devices_by_kind: dict[str, list[str]]) -> list[DemoCommand]:
    """A few commands that show what the CLI does, for the devices that are there."""
    plan: list[DemoCommand] = []
    first = {kind: sorted(names)[0] for kind, names in devices_by_kind.items() if names}
    if not first:
        return plan
    any_device = first.get("environment") or sorted(first.values())[0]
    plan.append(DemoCommand((any_device, "ping"), "round trip to one device"))
    plan.append(DemoCommand((any_device, "set_interval", "ms=5000"), "this device now reports every 5 s"))
    if "thermostat" in first:
        plan.append(DemoCommand((first["thermostat"], "set_setpoint", "value=26.5"), "its temperature follows"))
    if "power_meter" in first:
        plan.append(DemoCommand((first["power_meter"], "set_relay", "on=false"), "its power drops to ~0 W"))
    if "air_quality" in first:
        plan.append(DemoCommand((first["air_quality"], "set_ventilation", "on=true"), "co2 and voc fall"))
    plan.append(DemoCommand((any_device, "self_destruct"), "a command devices do not support"))
    plan.append(DemoCommand(("--all", "ping"), "every online device at once"))
    return plan


@dataclass
class CommandResult:
    command: DemoCommand
    exit_code: int
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def summary(self) -> str:
        if self.error:
            return self.error
        if len(self.outcomes) == 1:
            o = self.outcomes[0]
            rtt = f" {o['rtt_ms']:.0f} ms" if o.get("rtt_ms") is not None else ""
            state = " ".join(f"{k}={json.dumps(v)}" for k, v in (o.get("state") or {}).items())
            return f"{o['status']}{rtt}" + (f" · {state}" if state and o["status"] == "ok" else "")
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o["status"]] = counts.get(o["status"], 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o["status"] == "ok" for o in self.outcomes)


class CommandRunner(threading.Thread):
    """Runs the scenario with the real CLI (`python -m hub send ... --json`) in the background."""

    def __init__(self, plan: list[DemoCommand], env: dict[str, str], stop: threading.Event) -> None:
        super().__init__(name="demo-commands", daemon=True)
        self.plan = plan
        self.env = env
        self.stop_event = stop
        self.results: list[CommandResult] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None

    def run(self) -> None:
        for command in self.plan:
            if self.stop_event.wait(COMMAND_GAP_S):
                return
            argv = [sys.executable, "-m", "hub", "send", *command.argv, "--json", "--timeout", str(COMMAND_TIMEOUT_S)]
            with self._lock:
                if self.stop_event.is_set():
                    return
                self._process = subprocess.Popen(
                    argv, cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            out, err = self._process.communicate()
            if self.stop_event.is_set():
                return  # cut short by the demo's end: not an outcome to report
            result = CommandResult(command, self._process.returncode)
            try:
                parsed = json.loads(out) if out.strip() else None
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                result.outcomes = [parsed]
            elif isinstance(parsed, list):
                result.outcomes = parsed
            else:
                result.error = (err.strip().splitlines() or [f"exit {self._process.returncode}"])[-1]
            with self._lock:
                self.results.append(result)
                self._process = None

    def halt(self) -> None:
        self.stop_event.set()
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
        self.join(COMMAND_TIMEOUT_S + 5)

    def snapshot(self) -> list[CommandResult]:
        with self._lock:
            return list(self.results)


# --- the stack ---------------------------------------------------------------------------------


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=DOCKER_PROBE_TIMEOUT_S, check=False, cwd=PROJECT_ROOT
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class StackHandle:
    """The stack the demo uses, and whether the demo is the one to stop it."""

    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.docker = False
        self.started_by_us = False
        self.pids: dict[str, int] = {}

    def up(self) -> None:
        if docker_engine_available():
            self.docker = True
            running = subprocess.run(
                ["docker", "compose", "ps", "-q"], capture_output=True, text=True, cwd=PROJECT_ROOT, check=False
            ).stdout.strip()
            self.console.print("a Docker engine answers: starting the stack with `docker compose up -d --wait`")
            done = subprocess.run(["docker", "compose", "up", "-d", "--wait"], cwd=PROJECT_ROOT, check=False)
            if done.returncode != 0:
                raise StackError("`docker compose up -d --wait` failed; see `docker compose logs`")
            self.started_by_us = not running
            return
        stack = Stack(self.settings)
        with self.console.status("starting the native stack (RabbitMQ, InfluxDB)") as spinner:
            status = stack.up(progress=lambda message: spinner.update(message))
        self.started_by_us = not status.already_running
        self.pids = {service.name: service.pid for service in status.services}
        pids = ", ".join(f"{name} pid {pid}" for name, pid in self.pids.items())
        if self.started_by_us:
            self.console.print(f"stack started under {status.root}: {pids}")
        else:
            self.console.print(f"the stack under {status.root} was already running ({pids}); the demo leaves it so")

    def down(self, keep: bool) -> str:
        """Stop the stack if the demo started it and `keep` is off; say what became of it."""
        if not self.started_by_us:
            return "the stack was running before the demo and is left running"
        if keep:
            return "the stack is left running (--keep-stack): stop it with " + (
                "`docker compose stop`" if self.docker else "`python -m hub stack down`"
            )
        if self.docker:
            subprocess.run(["docker", "compose", "stop"], cwd=PROJECT_ROOT, check=False, capture_output=True)
            return "the stack was stopped (`docker compose stop`); its data is kept in the Docker volumes"
        stopped = Stack(self.settings).down()
        return (
            f"stopped the stack the demo started ({', '.join(stopped) or 'nothing was left'}); its data stays "
            f"under {stack_root(self.settings)}: `python -m hub stack up` brings it back, `make demo KEEP_STACK=1` "
            "keeps it running after the demo"
        )


# --- what to show --------------------------------------------------------------------------------


def where_to_look(settings: Settings, docker: bool, logs: Path, metrics_port: int = 0) -> list[str]:
    user = settings.amqp.user
    password = DEV_HUB_PASSWORD if settings.amqp.password == DEV_HUB_PASSWORD else "the one in IOT_AMQP_URL"
    query = "SELECT * FROM thermostat WHERE time > now() - 1m"
    lines = [
        f"InfluxDB     {settings.influx_url}  database {settings.influx_db}, e.g.",
        f"             curl -G {settings.influx_url}/query --data-urlencode db={settings.influx_db} "
        f"--data-urlencode {shlex.quote('q=' + query)}",
        f"RabbitMQ UI  {management_url(settings).replace('127.0.0.1', 'localhost')}/  user {user}, password {password}",
        "the CLI      python -m hub devices · python -m hub tail 'alerts.#' · python -m hub send --help",
        f"logs         {logs}/hub.log, {logs}/sim.log",
    ]
    if metrics_port:
        lines.insert(3, f"hub metrics  http://localhost:{metrics_port}/metrics  (Prometheus; /health too)")
    if docker:
        lines.insert(3, f"Chronograf   {CHRONOGRAF_URL}  (dashboards over InfluxDB)")
    return lines


def _clock(at_ms: Any) -> str:
    return datetime.fromtimestamp(int(at_ms) / 1000).strftime("%H:%M:%S") if at_ms else "--:--:--"


def render(
    snapshot: Snapshot, results: list[CommandResult], count: int, elapsed_s: float, duration_s: float, error: str
) -> Group:
    ends = f"stops in {max(0, duration_s - elapsed_s):.0f} s" if duration_s else "runs until Ctrl-C"
    head = Text(f"IoT hub demo · {count} simulated devices · {elapsed_s:.0f} s · {ends} · Ctrl-C stops", "bold")
    protocols = ", ".join(f"{p} {n}" for p, n in sorted(snapshot.by_protocol().items()))
    alerts = sum(snapshot.alerts_by_severity.values())
    alert_text = ", ".join(f"{s} {n}" for s, n in sorted(snapshot.alerts_by_severity.items())) or "none"
    figures = Table.grid(padding=(0, 3))
    figures.add_row(
        f"readings stored [bold]{snapshot.stored:,}[/]",
        f"[bold]{snapshot.rate_per_s:.1f}[/]/s",
        f"devices online [bold]{snapshot.online}[/]/{len(snapshot.fleet)}" + (f" ({protocols})" if protocols else ""),
        f"alerts [bold]{alerts}[/] ({alert_text})",
        f"dead-lettered [bold]{snapshot.dead_lettered}[/]",
    )
    sent = Table(title="commands sent by the demo with the CLI", title_justify="left", expand=True)
    for column in ("command", "outcome", "why"):
        sent.add_column(column)
    for result in results[-8:]:
        style = "green" if result.ok else "yellow" if result.exit_code == ExitCode.DEVICE_REFUSED else "red"
        sent.add_row(result.command.shown, Text(result.summary(), style=style), result.command.why)
    recorded = Table(title="commands recorded by the hub (InfluxDB `commands`)", title_justify="left", expand=True)
    for column in ("time", "device", "command", "status", "origin", "rtt ms"):
        recorded.add_column(column)
    for row in snapshot.recent_commands:
        rtt = row.get("rtt_ms")
        recorded.add_row(
            _clock(row.get("time")),
            str(row.get("device", "")),
            str(row.get("command", "")),
            str(row.get("status", "")),
            str(row.get("origin", "")),
            f"{rtt:.1f}" if isinstance(rtt, int | float) else "",
        )
    alert_table = Table(title="latest alerts (InfluxDB `alerts`)", title_justify="left", expand=True)
    for column in ("time", "severity", "device", "message"):
        alert_table.add_column(column)
    for row in snapshot.recent_alerts:
        alert_table.add_row(
            _clock(row.get("time")),
            str(row.get("severity", "")),
            str(row.get("device", "")),
            str(row.get("message", "")),
        )
    parts: list[Any] = [head, figures, sent, recorded, alert_table]
    if error:
        parts.append(Text(error, style="red"))
    return Group(*parts)


def plain_line(snapshot: Snapshot, results: list[CommandResult], elapsed_s: float) -> str:
    ok = sum(result.ok for result in results)
    return (
        f"[{elapsed_s:5.0f} s] stored {snapshot.stored} readings ({snapshot.rate_per_s:.1f}/s), "
        f"{snapshot.online}/{len(snapshot.fleet)} devices online, "
        f"{sum(snapshot.alerts_by_severity.values())} alerts, {len(results)} commands sent ({ok} all ok)"
    )


# --- the run -----------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    """Ctrl-C, SIGTERM and a closed terminal (SIGHUP) all mean: stop cleanly."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals(handler: Any) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _exit_code(code: int) -> ExitCode:
    try:
        return ExitCode(code)
    except ValueError:
        return ExitCode.STACK


class Demo:
    """One run of the demo: `run()` returns the exit code after stopping what it started."""

    def __init__(self, settings: Settings, count: int, duration_s: float, keep_stack: bool, console: Console) -> None:
        self.settings = settings
        self.count = count
        self.duration_s = duration_s
        self.keep_stack = keep_stack
        self.console = console
        self.stack = StackHandle(settings, console)
        self.children: list[Child] = []
        self.runner: CommandRunner | None = None
        self.logs = stack_root(settings) / "demo"
        self.started_ms = now_ms()
        self.rates = RateWindow()
        self.snapshot = Snapshot()
        self.live_started = time.monotonic()
        self.metrics_port = settings.metrics_port

    def run(self) -> int:
        exit_code = ExitCode.OK
        with _signals(_raise_interrupt):
            try:
                self._start()
                self._watch()
            except KeyboardInterrupt:
                self.console.print("stopping (interrupted)")
            except HubError as exc:
                self.console.print(f"[red]error:[/] {exc}")
                exit_code = _exit_code(exc.exit_code)
            finally:
                # A second Ctrl-C while cleaning up must not leave half the children running.
                with _signals(signal.SIG_IGN):
                    self._stop()
        return int(exit_code)

    # --- steps -------------------------------------------------------------------------------------

    def _start(self) -> None:
        self.stack.up()
        env = dict(os.environ, PYTHONUNBUFFERED="1", IOT_STACK_DIR=str(stack_root(self.settings)))
        if self.metrics_port and port_open("127.0.0.1", self.metrics_port):
            taken, self.metrics_port = self.metrics_port, free_port()
            self.console.print(f"port {taken} (IOT_METRICS_PORT) is taken: the hub's metrics go to {self.metrics_port}")
        env["IOT_METRICS_PORT"] = str(self.metrics_port)
        self._spawn("hub", [sys.executable, "-m", "hub", "run"], env)
        self._wait_for("waiting for the hub to declare its queues", self._hub_ready, HUB_READY_TIMEOUT_S)
        self._spawn("simulator", [sys.executable, "-m", "devices.sim", "--count", str(self.count)], env)
        for line in where_to_look(self.settings, self.stack.docker, self.logs, self.metrics_port):
            self.console.print(f"  {line}")
        try:
            self.snapshot = self._wait_for(
                f"waiting for {self.count} devices to come online", self._all_online, DEVICES_ONLINE_TIMEOUT_S
            )
        except StackError:
            if any(not child.running() for child in self.children):
                raise
            self.console.print(f"[yellow]not all {self.count} devices came online in time; going on[/]")
            self.snapshot = self._activity()[0] or self.snapshot
        by_kind: dict[str, list[str]] = {}
        for view in self.snapshot.fleet:
            if view.online:
                by_kind.setdefault(view.kind, []).append(view.device)
        self.runner = CommandRunner(plan_commands(by_kind), env, threading.Event())
        self.runner.start()

    def _watch(self) -> None:
        self.live_started = time.monotonic()
        live = Live(console=self.console, refresh_per_second=4) if self.console.is_terminal else None
        reported = printed = 0
        with live or contextlib.nullcontext():
            while True:
                elapsed = time.monotonic() - self.live_started
                if self.duration_s and elapsed >= self.duration_s:
                    return
                self._check_children()
                fresh, error = self._activity()
                self.snapshot = fresh or self.snapshot
                results = self.runner.snapshot() if self.runner is not None else []
                if live is not None:
                    live.update(render(self.snapshot, results, self.count, elapsed, self.duration_s, error))
                else:
                    for result in results[printed:]:
                        self.console.print(
                            f"  $ {result.command.shown}  ->  {result.summary()}  ({result.command.why})"
                        )
                    printed = len(results)
                    if elapsed >= reported * PLAIN_REPORT_S:
                        self.console.print(
                            plain_line(self.snapshot, results, elapsed) + (f" · {error}" if error else "")
                        )
                        reported += 1
                time.sleep(REFRESH_S)

    def _stop(self) -> None:
        if self.runner is not None:
            self.runner.halt()
        elapsed = time.monotonic() - self.live_started
        for child in reversed(self.children):
            code = child.stop()
            self._say(f"stopped the {child.name} (pid {child.pid}, exit {code})")
        if self.children:
            self.snapshot = self._activity()[0] or self.snapshot
            results = self.runner.snapshot() if self.runner is not None else []
            self._say(final_report(self.snapshot, results, elapsed))
        self._say(self.stack.down(self.keep_stack))
        if not self.stack.started_by_us or self.keep_stack:
            for line in where_to_look(self.settings, self.stack.docker, self.logs)[:4]:
                self._say(f"  {line}")

    def _say(self, text: str) -> None:
        """Print while stopping; a terminal that is gone must not stop the cleanup."""
        with contextlib.suppress(OSError, ValueError):
            self.console.print(text)

    # --- helpers -----------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = start_child(name, argv, self.logs / f"{'sim' if name == 'simulator' else name}.log", PROJECT_ROOT, env)
        self.children.append(child)
        self.console.print(f"{name} started (pid {child.pid}): {' '.join(argv[1:])}, log {child.log_path}")
        return child

    def _check_children(self) -> None:
        for child in self.children:
            if not child.running():
                raise StackError(
                    f"the {child.name} exited ({child.process.returncode}); "
                    f"last lines of {child.log_path}:\n{child.log_tail()}"
                )

    def _wait_for(self, what: str, check: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        with self.console.status(what):
            while True:
                self._check_children()
                value = check()
                if value:
                    return value
                if time.monotonic() > deadline:
                    raise StackError(f"gave up after {timeout_s:.0f} s {what}; see the logs under {self.logs}")
                time.sleep(0.5)

    def _hub_ready(self) -> bool:
        names = read_queue_names(self.settings)
        return names is not None and {"hub.store", "hub.presence", "hub.commands"} <= names

    def _all_online(self) -> Snapshot | None:
        found, _ = self._activity()
        return found if found is not None and found.online >= self.count else None

    def _activity(self) -> tuple[Snapshot | None, str]:
        try:
            return read_activity(self.settings, self.started_ms, self.rates), ""
        except StorageUnavailable as exc:
            return None, str(exc)


def final_report(snapshot: Snapshot, results: list[CommandResult], elapsed_s: float) -> str:
    outcomes = [o for result in results for o in result.outcomes]
    answered = [o for o in outcomes if o.get("status") not in ("timeout", "unknown_device")]
    ok = sum(o.get("status") == "ok" for o in answered)
    recorded = ", ".join(f"{s} {n}" for s, n in sorted(snapshot.commands_by_status.items())) or "none"
    rate = snapshot.stored / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"demo summary: {snapshot.stored} readings stored from {len(snapshot.fleet)} devices "
        f"({rate:.1f}/s over {elapsed_s:.0f} s); {len(results)} CLI commands, {len(answered)} answered "
        f"({ok} ok); {sum(snapshot.alerts_by_severity.values())} alerts; hub recorded commands: {recorded}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--count", type=click.IntRange(min=1), default=DEFAULT_COUNT, show_default=True, help="simulated devices")
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="seconds of live view before stopping by itself; 0 = until Ctrl-C",
)
@click.option("--keep-stack", is_flag=True, help="leave a stack the demo started running afterwards (default: stop it)")
def demo(count: int, duration_s: float, keep_stack: bool) -> None:
    """The whole system, live: stack, hub, simulated devices, commands, and what happens.

    Brings the stack up (docker compose where a Docker engine answers, else the native stack),
    starts the hub (`python -m hub run`) and COUNT devices (`python -m devices.sim`) as child
    processes, sends a few commands with the CLI, and shows every second what InfluxDB holds:
    readings stored and per second, devices online, alerts, command outcomes. Ctrl-C (or
    --duration) stops the simulator, then the hub, then the stack if the demo started it.

    \b
    Examples:
      make demo                        # 50 devices until Ctrl-C
      make demo COUNT=10 DURATION=60   # the same through make
      python -m hub demo --count 10 --duration 60 --keep-stack

    \b
    Exit codes:
      0  ran and stopped cleanly (also after Ctrl-C)
      3  the stack, the hub or the simulator could not start or died
      4  RabbitMQ unreachable
      5  InfluxDB unreachable
    """
    console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
    raise SystemExit(Demo(load_settings(), count, duration_s, keep_stack, console).run())
