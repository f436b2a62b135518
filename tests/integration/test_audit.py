"""`python -m hub audit` on the real stack: nothing found on the default stack, and each finding injected
is found (exit 1), named in its row, and gone again once undone.

The TLS listeners are dialled on 127.0.0.2 as well as 127.0.0.1: Linux routes all of 127/8 to
loopback, so it stands in for an address beyond this machine without leaving it.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.cli.audit import CLEAN, FINDINGS
from hub.clients.management import ManagementAdmin
from hub.control.identity import provision, revoke
from hub.core.config import Settings
from hub.core.contract import VHOST
from hub.stack.stack import BROKER_AUTH, Stack
from tests.support import hub_cli, start_influxd_without_auth

STAND_IN_ADDRESS = "127.0.0.2"


def audit(settings: Settings) -> tuple[int, list[dict[str, str]]]:
    """The audit's exit code and its rows."""
    done = hub_cli(settings, "audit", "--json", "--address", STAND_IN_ADDRESS, timeout_s=120)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert rows, done.stderr
    return done.returncode, rows


def findings(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(row["check"], row["subject"]) for row in rows if row["verdict"] == "finding"]


def test_the_default_stack_has_no_finding_and_every_check_ran(stack: Settings) -> None:
    code, rows = audit(stack)
    assert (code, findings(rows)) == (CLEAN, []), [r for r in rows if r["verdict"] == "finding"]
    checks = {row["check"] for row in rows}
    assert {"listeners", "broker auth", "secrets", "TLS versions", "InfluxDB authentication"} <= checks
    assert {"file modes", "device accounts", "impostors"} <= checks
    tls = [row for row in rows if row["check"] == "TLS versions"]
    assert {row["subject"].split()[1].rsplit(":", 1)[0] for row in tls} == {"127.0.0.1", STAND_IN_ADDRESS}
    assert all(row["detail"] == "offers TLS 1.2, TLS 1.3" for row in tls)


@pytest.fixture
def hub_password_published(stack: Settings) -> Iterator[None]:
    """The hub's account with the password the README once printed; its own secret again afterwards."""
    admin = ManagementAdmin(stack)
    admin.set_password(stack.amqp.user, "hub-dev-password")
    try:
        yield
    finally:
        admin.set_password(stack.amqp.user, stack.amqp.password)


def test_a_published_password_that_logs_in_is_found(stack: Settings, hub_password_published: None) -> None:
    code, rows = audit(stack)
    [row] = [r for r in rows if r["check"] == "secrets" and r["subject"].startswith("hub:")]
    assert code == FINDINGS and row["verdict"] == "finding"
    assert "AMQP at 127.0.0.1" in row["detail"] and f"AMQPS at {STAND_IN_ADDRESS}" in row["detail"]


def test_an_open_stack_folder_and_a_readable_secret_are_found(stack: Settings) -> None:
    root = stack.stack_path
    secret = next(root.rglob("*.key"))
    mode = secret.stat().st_mode & 0o777
    root.chmod(0o755)
    secret.chmod(0o644)
    try:
        code, rows = audit(stack)
    finally:
        root.chmod(0o700)
        secret.chmod(mode)
    assert code == FINDINGS
    details = " ".join(r["detail"] for r in rows if r["check"] == "file modes")
    assert "others may enter" in details and f"{secret.relative_to(root)} (-rw-r--r--)" in details


def test_a_device_with_wider_permissions_than_its_own_is_found(stack: Settings) -> None:
    device = f"audit-{uuid.uuid4().hex[:8]}"
    provision(stack, [device])
    try:
        ManagementAdmin(stack).set_permissions(device, VHOST, configure=".*", write=".*", read=".*")
        code, rows = audit(stack)
    finally:
        revoke(stack, [device])
    assert code == FINDINGS
    assert ("device accounts", device) in findings(rows)


def test_the_auth_service_down_is_found_and_logins_are_refused_meanwhile(stack: Settings) -> None:
    the_stack = Stack(stack)
    assert the_stack.kill(BROKER_AUTH, signal.SIGKILL)
    try:
        code, rows = audit(stack)
    finally:
        the_stack.up()
    assert code == FINDINGS
    assert ("broker auth", "the stack's service") in findings(rows)
    # The admin account cannot log in either while it is down: the checks that need it say so.
    assert ("device accounts", "could not check") in findings(rows)


def test_an_influxdb_without_logins_is_found(stack: Settings, tmp_path: Path) -> None:
    url, stop = start_influxd_without_auth(tmp_path)
    try:
        code, rows = audit(stack.model_copy(update={"influx_url": url}))
    finally:
        stop()
    assert code == FINDINGS
    assert ("InfluxDB authentication", "write without a login") in findings(rows)
