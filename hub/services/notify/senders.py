"""The channels' adapters: they move one notification to its receiver and say what it answered.

A webhook POSTs the JSON body with `Idempotency-Key` (the notification's key) and, with a secret,
`X-Iot-Signature: sha256=<hex HMAC-SHA256 of the raw body>`; a 2xx is delivered. An email goes
over SMTP (STARTTLS first when asked); the SMTP server accepting the message is delivered. Each
call has a timeout; nothing is retried here (the worker's retries go through the broker).
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from hub.services.notify.config import Channel, EmailChannel, WebhookChannel
from hub.services.notify.message import Notification, encode_notification

#: A webhook receiver's answer kept for the dead-letter detail and the CLI, at most this long.
ANSWER_MAX_CHARS = 300
SIGNATURE_HEADER = "X-Iot-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: 4xx answers that may pass by themselves (timeout, too many requests): retried like a 5xx.
RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Answer:
    """What the receiver said: `ok` delivered; else `permanent` when trying again cannot help
    (a 4xx, a mail refused for good)."""

    ok: bool
    text: str
    permanent: bool = False


class Sender(Protocol):
    def send(self, notification: Notification) -> Answer: ...


def signature(secret: str, body: bytes) -> str:
    """The `X-Iot-Signature` value of `body` under `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class WebhookSender:
    channel: WebhookChannel
    timeout_s: float

    def send(self, notification: Notification) -> Answer:
        body = encode_notification(notification)
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: notification.key, "User-Agent": "iot-hub"}
        if self.channel.secret:
            headers[SIGNATURE_HEADER] = signature(self.channel.secret, body)
        request = urllib.request.Request(self.channel.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return Answer(True, _answer(response.status, response.reason, response.read(ANSWER_MAX_CHARS)))
        except urllib.error.HTTPError as exc:
            text = _answer(exc.code, exc.reason, exc.read(ANSWER_MAX_CHARS) if exc.fp else b"")
            return Answer(False, text, permanent=400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX)
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return Answer(False, f"no answer: {reason}")


def _answer(status: int, reason: str, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return f"HTTP {status} {reason}" + (f": {text}" if text else "")


@dataclass(frozen=True)
class EmailSender:
    channel: EmailChannel
    timeout_s: float

    def send(self, notification: Notification) -> Answer:
        channel = self.channel
        mail = EmailMessage()
        mail["From"] = channel.from_
        mail["To"] = ", ".join(channel.to)
        mail["Subject"] = subject(notification)
        mail["Message-ID"] = f"<{notification.key.replace('/', '.')}@iot-hub>"
        mail[IDEMPOTENCY_HEADER] = notification.key
        mail.set_content(text(notification))
        try:
            with smtplib.SMTP(channel.host, channel.port, timeout=self.timeout_s) as smtp:
                if channel.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=channel.ca_file))
                refused = smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            return Answer(False, f"SMTP refused every recipient: {exc.recipients}", permanent=True)
        except smtplib.SMTPResponseException as exc:
            message = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            return Answer(False, f"SMTP {exc.smtp_code} {message}", permanent=500 <= exc.smtp_code < 600)
        except (smtplib.SMTPException, OSError) as exc:
            return Answer(False, f"no answer: {exc!r}")
        accepted = len(channel.to) - len(refused)
        return Answer(True, f"SMTP accepted the message for {accepted} of {len(channel.to)} recipients")


def subject(notification: Notification) -> str:
    what: str = "still unacked" if notification.notice == "unacked" else notification.transition
    if notification.notice == "test":
        what = "test"
    return f"[{notification.severity}] {notification.type} on {notification.device} ({notification.site}): {what}"


def text(notification: Notification) -> str:
    lines = [subject(notification), ""]
    for name in ("alarm_id", "transition", "rule", "device", "site", "kind", "severity", "sensor", "value", "ts"):
        lines.append(f"{name}: {getattr(notification, name)}")
    if notification.unacked_after_s is not None:
        lines.append(f"unacked after: {notification.unacked_after_s:g} s")
    if notification.acked_by:
        lines.append(f"acked by: {notification.acked_by} ({notification.note or 'no note'})")
    lines.append(f"idempotency key: {notification.key}")
    return "\n".join(lines) + "\n"


def sender_for(channel: Channel, timeout_s: float) -> Sender:
    if isinstance(channel, WebhookChannel):
        return WebhookSender(channel, timeout_s)
    return EmailSender(channel, timeout_s)
