"""The notification file (IOT_NOTIFY_FILE, `notify.yaml`): channels, routes, escalations.

Read once at start; every problem is a `ConfigError` naming the file, the line and the field
(`notify.yaml line 4: channels.oncall-mail.port: Expected `int`, got `str``). Each entry is
validated on its own (msgspec), and its path is looked up in the YAML node tree for the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

from hub.core.config import PROJECT_ROOT
from hub.core.contract import IDENTIFIER_PATTERN
from hub.core.durations import duration_ms
from hub.core.errors import ConfigError
from hub.services.notify.topic import check_pattern

ChannelName = Annotated[str, msgspec.Meta(pattern=IDENTIFIER_PATTERN)]
#: SMTP's own default port (plain, or upgraded with STARTTLS on 587).
SMTP_PORT = 25


class WebhookChannel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="webhook", tag_field="type"):
    """POSTs the notification's JSON body to `url`; with `secret`, signed (`X-Iot-Signature`)."""

    url: str
    secret: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        if self.secret is not None and not self.secret:
            raise ValueError("secret must not be empty (leave it out for unsigned bodies)")


class EmailChannel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="email", tag_field="type"):
    """Sends the notification as a plain-text mail over SMTP (STARTTLS first when `starttls`)."""

    host: str
    from_: str = msgspec.field(name="from")
    to: list[str] = msgspec.field(default_factory=list)
    port: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = SMTP_PORT
    starttls: bool = False
    #: With `starttls`: the CA (PEM) the server's certificate is verified against instead of the
    #: system's trust store (a relay with a private CA). Never unverified.
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if not self.to:
            raise ValueError("to must name at least one address")


Channel = WebhookChannel | EmailChannel


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    match: str
    to: list[ChannelName]


class Escalation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    match: str
    after: str | float
    to: list[ChannelName]

    @property
    def after_ms(self) -> int:
        return duration_ms(self.after)

    @property
    def id(self) -> str:
        """Names it in a timer message (`alarms.critical.#@900000`): stable while the file says the same."""
        return f"{self.match}@{self.after_ms}"


#: Webhook secrets of examples (ours and the issue's): they work, so everyone knows them.
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "secret"})


@dataclass(frozen=True)
class NotifyConfig:
    channels: dict[str, Channel]
    routes: tuple[Route, ...]
    escalate: tuple[Escalation, ...]
    source: str = "notify.yaml"

    def placeholder_secrets(self) -> list[str]:
        """Webhook channels signing with an example's secret (the hub warns at start)."""
        return [
            name
            for name, channel in self.channels.items()
            if isinstance(channel, WebhookChannel) and channel.secret in PLACEHOLDER_SECRETS
        ]


_SECTIONS = ("channels", "routes", "escalate")


def parse_notify(text: str, source: str = "notify.yaml") -> NotifyConfig:
    """The file's text as a `NotifyConfig`; `ConfigError` naming `source`, the line and the field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return NotifyConfig({}, (), (), source)

    def fail(path: list[str | int], message: str) -> ConfigError:
        dotted = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
        return ConfigError(f"{source} line {_line(root, path)}: {dotted or '(top)'}: {message}")

    if not isinstance(raw, dict):
        raise fail([], "expected a mapping with channels, routes and escalate")
    for key in raw:
        if key not in _SECTIONS:
            raise fail([str(key)], f"unknown section (expected {', '.join(_SECTIONS)})")
    channels: dict[str, Channel] = {}
    raw_channels = raw.get("channels") or {}
    if not isinstance(raw_channels, dict):
        raise fail(["channels"], "expected a mapping of channel names to channels")
    for name, entry in raw_channels.items():
        if not isinstance(name, str) or not re.match(IDENTIFIER_PATTERN, name):
            raise fail(["channels", str(name)], f"channel name must match {IDENTIFIER_PATTERN}")
        channels[name] = _convert(entry, Channel, ["channels", name], fail)
    routes = tuple(_convert(e, Route, ["routes", i], fail) for i, e in enumerate(_list(raw, "routes", fail)))
    escalate = tuple(_convert(e, Escalation, ["escalate", i], fail) for i, e in enumerate(_list(raw, "escalate", fail)))
    for section, entries in (("routes", routes), ("escalate", escalate)):
        for index, entry in enumerate(entries):
            try:
                check_pattern(entry.match)
                if not entry.match.startswith(("alarms.", "#", "*")):
                    raise ConfigError(f"{entry.match!r} matches no alarm: patterns are over alarms.<severity>.…")
            except ConfigError as exc:
                raise fail([section, index, "match"], str(exc)) from None
            for position, channel in enumerate(entry.to):
                if channel not in channels:
                    raise fail([section, index, "to", position], f"no channel named {channel!r} under channels")
            if isinstance(entry, Escalation):
                try:
                    entry.after_ms  # noqa: B018 - validated here, once
                except ValueError as exc:
                    raise fail([section, index, "after"], str(exc)) from None
    return NotifyConfig(channels, routes, escalate, source)


def _list(raw: dict[str, Any], key: str, fail: Any) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise fail([key], "expected a list")
    return value


def _convert(entry: Any, cls: Any, path: list[str | int], fail: Any) -> Any:
    try:
        return msgspec.convert(entry, cls)
    except (msgspec.ValidationError, ValueError) as exc:
        message, where = _split(str(exc))
        field = re.search(r"(?:unknown|missing required) field `([^`]+)`", message)
        if field is not None and "unknown" in message:
            where = [*where, field.group(1)]
        raise fail([*path, *where], message) from None


def _split(message: str) -> tuple[str, list[str | int]]:
    """msgspec's `Expected ... - at `$.port`` as the message and the path below the entry."""
    found = re.match(r"^(.*) - at `\$(.*)`$", message, re.DOTALL)
    if found is None:
        return message, []
    path: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", found.group(2)):
        path.append(int(index) if index else name)
    return found.group(1), path


def _line(node: yaml.Node | None, path: list[str | int]) -> int:
    """The 1-based line naming the deepest node along `path` (the entry itself if the field is missing)."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for step in path:
        child: yaml.Node | None = None
        named: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == step:
                    child, named = value, key  # the line is the key's: where the field is named
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            child = named = node.value[step]
        if child is None or named is None:
            break
        node, line = child, named.start_mark.line + 1
    return line


#: IOT_NOTIFY_FILE's default: looked for where the hub starts, then at the checkout's root.
DEFAULT_NOTIFY = Path("notify.yaml")


def notify_path(configured: Path) -> Path:
    """The file IOT_NOTIFY_FILE names; its default is also looked for at the project root."""
    if configured == DEFAULT_NOTIFY and not configured.exists():
        return PROJECT_ROOT / DEFAULT_NOTIFY
    return configured


def load_notify(path: Path) -> NotifyConfig | None:
    """The file at `path`, or None when there is none (no notifications)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"notification file {path}: {exc.strerror} (IOT_NOTIFY_FILE)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"notification file {path}: not UTF-8 text (byte {exc.start})") from None
    return parse_notify(text, str(path))
