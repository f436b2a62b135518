"""The stack the demo runs on: docker compose where a Docker engine answers, else the native
stack, and whether the demo started it (then, and only then, the demo stops it again)."""

from __future__ import annotations

import os
import shutil
import subprocess

from rich.console import Console

from hub.core.config import PROJECT_ROOT, Settings, with_stack_secrets
from hub.core.errors import StackError
from hub.core.secrets import read_secrets
from hub.stack import Stack
from hub.stack.certs import DOCKER_RABBITMQ_UID, ensure_compose_tls
from hub.stack.compose import ensure_compose_secrets
from hub.stack.stack import stack_root

DOCKER_PROBE_TIMEOUT_S = 10.0


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
    """The stack the demo uses, and whether the demo is the one to stop it.

    `settings` hold the stack's secrets once `up` returns (its first start makes them).
    """

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
            ensure_compose_tls(PROJECT_ROOT)
            # As root, definitions.json goes to the image's rabbitmq user, as server.key does.
            ensure_compose_secrets(self.settings, DOCKER_RABBITMQ_UID if os.geteuid() == 0 else None)
            self.settings = with_stack_secrets(self.settings, read_secrets(self.settings.secrets_path))
            self.console.print("a Docker engine answers: starting the stack with `docker compose up -d --wait`")
            done = subprocess.run(["docker", "compose", "up", "-d", "--wait"], cwd=PROJECT_ROOT, check=False)
            if done.returncode != 0:
                raise StackError("`docker compose up -d --wait` failed; see `docker compose logs`")
            self.started_by_us = not running
            return
        stack = Stack(self.settings)
        with self.console.status("starting the native stack (RabbitMQ, its auth service, InfluxDB)") as spinner:
            status = stack.up(progress=lambda message: spinner.update(message))
        self.settings = stack.settings
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
