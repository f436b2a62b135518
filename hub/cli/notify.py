"""`python -m hub notify test CHANNEL`: send a test notification now and show what the receiver answered."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from hub.core.config import load_settings
from hub.core.contract import now_ms
from hub.core.errors import ConfigError
from hub.services.notify.config import load_notify, notify_path
from hub.services.notify.message import test_notification
from hub.services.notify.senders import sender_for

NOTIFY_EXIT_CODES_HELP = """\b
Exit codes:
  0  the receiver accepted it
  1  the receiver refused it or did not answer
  2  no notification file, a malformed one, or no such channel"""


@click.group("notify")
def notify() -> None:
    """Notifications of alarm transitions (the notification file, IOT_NOTIFY_FILE)."""


@notify.command("test", epilog=NOTIFY_EXIT_CODES_HELP)
@click.argument("channel")
@click.option("--notify-file", type=click.Path(path_type=Path), help="Notification file [IOT_NOTIFY_FILE]")
@click.option("--timeout", "timeout_s", type=float, help="Seconds the receiver may take [IOT_NOTIFY_TIMEOUT_S]")
@click.option("--json", "as_json", is_flag=True, help="print the outcome as JSON")
def test(channel: str, notify_file: Path | None, timeout_s: float | None, as_json: bool) -> int:
    """Send a test notification to CHANNEL at once (no broker, no retries) and print its answer.

    The body is a made-up critical alarm with `notice` "test" and its own idempotency key.
    """
    settings = load_settings(notify_file=notify_file, notify_timeout_s=timeout_s)
    path = notify_path(settings.notify_file)
    config = load_notify(path)
    if config is None:
        raise ConfigError(f"notification file {path} not found (IOT_NOTIFY_FILE or --notify-file)")
    if channel not in config.channels:
        known = ", ".join(sorted(config.channels)) or "none"
        raise ConfigError(f"{path}: no channel {channel!r} (channels: {known})")
    notification = test_notification(channel, now_ms())
    answer = sender_for(config.channels[channel], settings.notify_timeout_s).send(notification)
    if as_json:
        click.echo(json.dumps({"channel": channel, "ok": answer.ok, "answer": answer.text, "key": notification.key}))
    else:
        outcome = ("delivered", "green") if answer.ok else ("failed", "red")
        Console(highlight=False).print(Text.assemble(f"{channel}: ", outcome, f": {answer.text}"))
    return 0 if answer.ok else 1
