"""`python -m hub demo` (what `make demo` runs): the whole system, live, in one terminal.

It brings the stack up (docker compose where an engine answers, else the native stack),
starts the hub and the simulator as child processes, sends a few commands with the CLI so
their effect shows, and displays what InfluxDB says is happening every second. It stops on
Ctrl-C, SIGTERM or after `--duration` seconds, and stops exactly what it started: its
children always, the stack too unless it was already running or `--keep-stack` is given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from hub.core.config import METRICS_OFF, PROJECT_ROOT, Settings, load_settings
from hub.core.contract import now_ms
from hub.core.credentials import read_credentials
from hub.core.errors import HubError, StackError, StorageUnavailable
from hub.core.exit_codes import ExitCode
from hub.core.secrets import read_secrets
from hub.core.signals import STOP_SIGNALS, handling, raise_interrupt
from hub.demo.activity import RateWindow, Snapshot, read_activity
from hub.demo.children import Child, start_child
from hub.demo.readiness import (
    DEVICES_ONLINE_TIMEOUT_S,
    HUB_READY_TIMEOUT_S,
    hub_consuming,
    hub_queue_names,
    wait_for,
)
from hub.demo.scenario import CommandRunner, plan_commands
from hub.demo.stack_handle import StackHandle
from hub.demo.view import final_report, plain_line, render, where_to_look
from hub.stack.processes import free_port, port_open
from hub.stack.stack import stack_root

DEFAULT_COUNT = 50
#: The simulator's faults (spikes, stuck sensors, dropouts) per reading: enough for the rules to
#: raise alarms that clear by themselves within a minute, few enough to leave most readings sane.
DEMO_FAULT_RATE = 0.02
#: How often the live view asks InfluxDB what happened.
REFRESH_S = 1.0
#: Without a terminal (CI, a pipe) the view is a status line this often instead.
PLAIN_REPORT_S = 5.0
#: Line width when the output is not a terminal (CI logs, a pipe).
PIPE_WIDTH = 160
#: Ctrl-C, SIGTERM and a closed terminal (SIGHUP) all stop the demo the same clean way.
DEMO_STOP_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)

#: How long the demo shows `hub logs -f --level warning` before its live view, and lines shown at most.
LOGS_VIEW_S = 6.0
LOGS_VIEW_MAX_LINES = 12

T = TypeVar("T")


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
        with handling(DEMO_STOP_SIGNALS, raise_interrupt):
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
                with handling(DEMO_STOP_SIGNALS, signal.SIG_IGN):
                    self._stop()
        return int(exit_code)

    # --- steps -------------------------------------------------------------------------------------

    def _start(self) -> None:
        self.stack.up()
        self.settings = self.stack.settings
        env = dict(os.environ, PYTHONUNBUFFERED="1", IOT_STACK_DIR=str(stack_root(self.settings)))
        if self.metrics_port == 0:  # any free port: the demo picks it, to say where
            self.metrics_port = free_port()
        elif self.metrics_port is not None and port_open("127.0.0.1", self.metrics_port):
            taken, self.metrics_port = self.metrics_port, free_port()
            self.console.print(f"port {taken} (IOT_METRICS_PORT) is taken: the hub's metrics go to {self.metrics_port}")
        env["IOT_METRICS_PORT"] = METRICS_OFF if self.metrics_port is None else str(self.metrics_port)
        self._spawn("hub", [sys.executable, "-m", "hub", "run"], env)
        self._wait_for(
            "waiting for the hub to consume its queues", lambda: hub_consuming(self.settings), HUB_READY_TIMEOUT_S
        )
        self.console.print(f"the hub consumes {', '.join(hub_queue_names(self.settings))}")
        fault_rate = str(DEMO_FAULT_RATE)
        self._spawn(
            "simulator",
            [sys.executable, "-m", "devices.sim", "--count", str(self.count), "--fault-rate", fault_rate],
            env,
        )
        secrets = read_secrets(self.settings.secrets_path)
        for line in where_to_look(self.settings, secrets, self.stack.docker, self.logs, self.metrics_port):
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
        credentials = read_credentials(self.settings.credentials_path)
        online = [view.device for view in self.snapshot.fleet if view.online]
        own = sum(device in credentials for device in online)
        self.console.print(f"{own} devices, each with its own credential ({self.settings.credentials_path})")
        by_kind: dict[str, list[str]] = {}
        for view in self.snapshot.fleet:
            if view.online:
                by_kind.setdefault(view.kind, []).append(view.device)
        self.runner = CommandRunner(plan_commands(by_kind), env, threading.Event())
        self.runner.start()
        self._show_logs(env)

    def _show_logs(self, env: dict[str, str]) -> None:
        """A few seconds of what devices log at warning and above, live, with the real CLI: the
        commands just started include one they refuse, which they log."""
        argv = [sys.executable, "-m", "hub", "logs", "-f", "--level", "warning", "--for", f"{LOGS_VIEW_S:g}"]
        self.console.print(f"$ iot-hub logs -f --level warning   (for {LOGS_VIEW_S:g} s)")
        shown = 0
        with subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        ) as follower:
            assert follower.stdout is not None
            for line in follower.stdout:  # already escaped by `hub logs`; printed as text, no markup read
                if shown < LOGS_VIEW_MAX_LINES:
                    self.console.print(Text(f"  {line.rstrip()}"))
                shown += 1
        if shown > LOGS_VIEW_MAX_LINES:
            self.console.print(f"  … {shown - LOGS_VIEW_MAX_LINES} more")
        if not shown:
            self.console.print("  (no warning in that time)")

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
            for line in where_to_look(
                self.settings, read_secrets(self.settings.secrets_path), self.stack.docker, self.logs
            )[:5]:
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

    def _wait_for(self, what: str, check: Callable[[], T | None], timeout_s: float) -> T:
        return wait_for(self.console, what, check, timeout_s, self._check_children, self.logs)

    def _all_online(self) -> Snapshot | None:
        found, _ = self._activity()
        return found if found is not None and found.online >= self.count else None

    def _activity(self) -> tuple[Snapshot | None, str]:
        try:
            return read_activity(self.settings, self.started_ms, self.rates), ""
        except StorageUnavailable as exc:
            return None, str(exc)


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
