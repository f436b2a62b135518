"""`python -m hub run` as a child process the fault drills can kill and start again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hub.core.config import Settings

REPO = Path(__file__).resolve().parents[1]
#: `hub run` logs `event=consuming` once per service (telemetry, presence, commands) per connect.
SERVICES = 3
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def hub_environment(settings: Settings) -> dict[str, str]:
    """The environment a user would have: every IOT_* variable from `settings`, none of the caller's."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            environment[f"IOT_{name.upper()}"] = str(value)
    environment.update(IOT_METRICS_PORT="off", IOT_RULES_FILE=str(REPO / "rules.yaml"))
    return environment


class HubProcess:
    """One `hub run` at a time, its output appended to `log`."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        self.process: subprocess.Popen[bytes] | None = None

    def consuming(self) -> int:
        """How many times a service has started consuming, over every hub process of this run."""
        return self.log.read_text(errors="replace").count("event=consuming") if self.log.exists() else 0

    def start(self, wait: bool = True) -> None:
        before = self.consuming()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "run"],
                cwd=REPO,
                env=hub_environment(self.settings),
                stdout=out,
                stderr=out,
            )
        if wait:
            self.wait_consuming(before)

    def wait_consuming(self, before: int, timeout_s: float = START_TIMEOUT_S) -> float:
        """Wait until every service consumes again (counted from `before`); the time it took."""
        started = time.monotonic()
        while self.consuming() < before + SERVICES:
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"the hub exited ({self.process.returncode}); see {self.log}")
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"the hub did not consume within {timeout_s:.0f} s; see {self.log}")
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
