"""The demo's command scenario: which commands it sends with the real CLI, and what came back.

`plan_commands` is pure; `CommandRunner` runs the plan in the background, one
`python -m hub send ... --json` at a time, and keeps each outcome for the view.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from hub.core.config import PROJECT_ROOT

#: Pause between two demo commands, so each one's effect can be seen.
COMMAND_GAP_S = 1.5
#: Timeout of each demo command (`send --timeout`).
COMMAND_TIMEOUT_S = 5.0


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
    plan.append(DemoCommand((any_device, "self_destruct"), "a command devices do not support"))
    if "thermostat" in first:
        plan.append(DemoCommand((first["thermostat"], "set_setpoint", "value=26.5"), "its temperature follows"))
    if "power_meter" in first:
        plan.append(DemoCommand((first["power_meter"], "set_relay", "on=false"), "its power drops to ~0 W"))
    if "air_quality" in first:
        plan.append(DemoCommand((first["air_quality"], "set_ventilation", "on=true"), "co2 and voc fall"))
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
