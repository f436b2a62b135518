"""The stack's broker authorisation service (hub/brokerauth) as a process the stack starts, checks and stops."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from hub.brokerauth.policy import HEALTH_PATH
from hub.core.config import PROJECT_ROOT, Settings
from hub.stack.folders import private_folder

#: Seconds a readiness or counts request may take.
PROBE_TIMEOUT_S = 2.0


def operator_accounts(settings: Settings) -> tuple[str, ...]:
    """The accounts that are not devices: the hub's (IOT_AMQP_URL) and the admin's (IOT_ADMIN_USER)."""
    return tuple(dict.fromkeys((settings.amqp.user, settings.admin_user)))


class BrokerAuthService:
    """`python -m hub.brokerauth` on 127.0.0.1:`port`, its log under `home`."""

    def __init__(self, home: Path, port: int, operators: tuple[str, ...]) -> None:
        self.home = home
        self.port = port
        self.operators = operators

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "brokerauth.log"

    def prepare(self) -> None:
        private_folder(self.home)

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hub.brokerauth",
            "--port",
            str(self.port),
            "--operators",
            ",".join(self.operators),
            "--home",
            str(self.home),
        ]

    def environment(self) -> dict[str, str]:
        # The checkout first on the path: the service runs from the same code as the stack.
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path}

    def problems(self) -> list[str]:
        return [] if self.counts() is not None else [f"{self.url}{HEALTH_PATH} does not answer"]

    def counts(self) -> dict[str, int] | None:
        """The service's answers so far (`allowed`, `refused:<reason>`), or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}{HEALTH_PATH}", timeout=PROBE_TIMEOUT_S) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return {str(key): int(value) for key, value in answer.items()} if isinstance(answer, dict) else None
