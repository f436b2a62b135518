"""Notifications that arrive, on real receivers: a local webhook server, a local SMTP server
(aiosmtpd), the real broker. Alarm transitions are published here as the alarms side would."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from hub.core.config import Settings
from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_REASON_HEADER, EXCHANGE, now_ms
from hub.runtime.deadletter import DEAD_LETTER_DETAIL_HEADER, DEAD_LETTER_QUEUE_HEADER
from hub.runtime.middleware import default_middleware
from hub.runtime.runner import Runner
from hub.services import build_services
from hub.stack.certs import ensure_dev_tls
from hub.stack.processes import free_port
from tests.support import amqp_connection, collect, hub_cli, hub_process, wait_until

#: Retry delays of the tests: short, so four attempts take under two seconds.
TEST_DELAYS = "0.2s,0.5s,1s"
SECRET = "test-secret-not-used-anywhere"


# --- receivers -------------------------------------------------------------------------------------


class Webhook:
    """A local HTTP receiver: answers `fail_status` to the first `fail_first` POSTs (all of them
    when `fail_first` is None), then 200. Keeps every POST, and the keys it accepted."""

    def __init__(self, fail_first: int | None = 0, fail_status: int = 500, delay_s: float = 0.0) -> None:
        self.posts: list[tuple[dict[str, str], bytes, int]] = []
        self.accepted: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay_s)
                with receiver.lock:
                    failing = fail_first is None or len(receiver.posts) < fail_first
                    status = fail_status if failing else 200
                    receiver.posts.append((dict(self.headers), body, status))
                    if not failing:
                        receiver.accepted.append(self.headers["Idempotency-Key"])
                answer = b"down for maintenance" if failing else b"thanks"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _h, body, status in self.posts if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler: every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(message)
        return "250 Message accepted for delivery"


@pytest.fixture
def webhooks() -> Iterator[list[Webhook]]:
    made: list[Webhook] = []
    yield made
    for hook in made:
        hook.close()


# --- the hub's side ----------------------------------------------------------------------------------


def write_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    return path


@contextmanager
def notify_service(settings: Settings, notify_file: Path, workers: int = 1) -> Iterator[list[Runner]]:
    """The notify service in this process, as `hub run` builds it: its router and workers, each a runner in a thread."""
    configured = settings.model_copy(
        update={"notify_file": notify_file, "notify_retry_delays": TEST_DELAYS, "notify_workers": workers}
    )
    stop = threading.Event()
    runners = build_services(configured, ("notify",), stop, default_middleware())
    threads = [threading.Thread(target=runner.run, name=runner.name, daemon=True) for runner in runners]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(runner.snapshot.connected for runner in runners), 30)
        yield runners
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


def transition(
    alarm: str, kind: str, severity: str = "critical", site: str = "plant-n", device: str = "env-0001"
) -> tuple[str, bytes]:
    """(routing key, body) of an alarm transition as agreed with the alarms side."""
    body = {
        "v": 1,
        "key": f"{alarm}/{kind if kind != 'escalated' else 'escalated-' + severity}",
        "alarm_id": alarm,
        "transition": kind,
        "type": "too-hot",
        "rule": "too-hot",
        "device": device,
        "site": site,
        "kind": "environment",
        "severity": severity,
        "sensor": "temperature",
        "value": 41.5,
        "ts": now_ms(),
        "raised_at": now_ms(),
        "count": 1,
        "acked": kind == "acked",
        "acked_by": "ana" if kind == "acked" else None,
        "note": "on it" if kind == "acked" else None,
    }
    return f"alarms.{severity}.{site}.environment.{device}", json.dumps(body).encode()


def publish(settings: Settings, *messages: tuple[str, bytes]) -> None:
    connection = amqp_connection(settings)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for routing_key, body in messages:
            properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            channel.basic_publish(EXCHANGE, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()


def queue_state(settings: Settings, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of queue `name`."""
    connection = amqp_connection(settings)
    try:
        declared = connection.channel().queue_declare(name, passive=True).method
        return int(declared.message_count), int(declared.consumer_count)
    finally:
        connection.close()


def unique(prefix: str) -> str:
    return f"{prefix}:env-0001:{time.time_ns()}"


def valid_signature(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("X-Iot-Signature", ""), expected)


# --- the promises -----------------------------------------------------------------------------------


def test_a_webhook_failing_with_500_gets_the_transition_once_after_the_retries_signed(
    stack: Settings, tmp_path: Path, webhooks: list[Webhook]
) -> None:
    hook = Webhook(fail_first=2)
    webhooks.append(hook)
    path = write_file(
        tmp_path,
        f'channels:\n  retry-hook: {{type: webhook, url: "{hook.url}", secret: "{SECRET}"}}\n'
        'routes:\n  - match: "alarms.critical.#"\n    to: [retry-hook]\n',
    )
    alarm = unique("too-hot")
    with hub_process(
        stack, tmp_path, "--only", "notify", IOT_NOTIFY_FILE=str(path), IOT_NOTIFY_RETRY_DELAYS=TEST_DELAYS
    ):
        publish(stack, transition(alarm, "raised"))
        wait_until(lambda: hook.accepted, 60)
        publish(stack, transition(alarm, "cleared"))
        wait_until(lambda: len(hook.accepted) >= 2, 60)
        wait_until(lambda: queue_state(stack, "hub.notify.retry-hook") == (0, 2), 30)
    assert hook.accepted == [f"{alarm}/raised", f"{alarm}/cleared"]
    assert [status for _h, _b, status in hook.posts] == [500, 500, 200, 200]
    for headers, body, _status in hook.posts:
        assert valid_signature(headers, body)
        assert headers["Idempotency-Key"] == json.loads(body)["key"]
        assert headers["Content-Type"] == "application/json"
    raised = hook.bodies()[0]
    assert {k: raised[k] for k in ("alarm_id", "transition", "rule", "device", "site", "kind", "severity")} == {
        "alarm_id": alarm,
        "transition": "raised",
        "rule": "too-hot",
        "device": "env-0001",
        "site": "plant-n",
        "kind": "environment",
        "severity": "critical",
    }
    assert raised["value"] == 41.5 and isinstance(raised["ts"], int)


def test_a_receiver_down_longer_than_the_retries_is_dead_lettered_with_its_last_answer_and_nothing_else_stops(
    stack: Settings, tmp_path: Path, webhooks: list[Webhook]
) -> None:
    down, up = Webhook(fail_first=None, fail_status=503), Webhook()
    webhooks.extend([down, up])
    path = write_file(
        tmp_path,
        f'channels:\n  down-hook: {{type: webhook, url: "{down.url}"}}\n  up-hook: {{type: webhook, url: "{up.url}"}}\n'
        'routes:\n  - match: "alarms.critical.#"\n    to: [down-hook, up-hook]\n',
    )
    connection = amqp_connection(stack)
    channel = connection.channel()
    dead = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(dead, DEAD_LETTER_EXCHANGE)
    first, second = unique("too-hot"), unique("too-hot")
    try:
        with notify_service(stack, path) as runners:
            publish(stack, transition(first, "raised"))
            [(_key, body, properties)] = collect(connection, channel, dead, 1, timeout_s=60)
            publish(stack, transition(second, "raised"))
            wait_until(lambda: len(up.accepted) >= 2, 60)
            wait_until(lambda: len(down.posts) >= 5, 60)  # the second's first attempt: the worker goes on
            assert all(runner.snapshot.connected for runner in runners)
    finally:
        connection.close()
    headers = properties.headers
    assert headers[DEAD_LETTER_REASON_HEADER] == "notify_failed"
    assert headers[DEAD_LETTER_QUEUE_HEADER] == "hub.notify.down-hook"
    assert headers[DEAD_LETTER_DETAIL_HEADER] == (
        "down-hook: attempt 4 of 4; last answer: HTTP 503 Service Unavailable: down for maintenance"
    )
    assert json.loads(body)["key"] == f"{first}/raised"
    assert [json.loads(b)["key"] for _h, b, _s in down.posts[:4]] == [f"{first}/raised"] * 4
    assert up.accepted == [f"{first}/raised", f"{second}/raised"]


def test_email_arrives_through_a_real_smtp_server_and_notify_test_reports_the_answer(
    stack: Settings, tmp_path: Path
) -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    path = write_file(
        tmp_path,
        f"channels:\n  mail: {{type: email, host: 127.0.0.1, port: {port}, starttls: false, from: hub@example.test,"
        " to: [oncall@example.test, ops@example.test]}\n"
        'routes:\n  - match: "alarms.*.plant-n.#"\n    to: [mail]\n',
    )
    alarm = unique("too-hot")
    try:
        with notify_service(stack, path):
            publish(stack, transition(alarm, "raised", severity="warning"))
            wait_until(lambda: mailbox.messages, 60)
        tested = hub_cli(stack, "notify", "test", "mail", "--notify-file", str(path))
        wait_until(lambda: len(mailbox.messages) >= 2, 30)
    finally:
        controller.stop()
    mail = mailbox.messages[0]
    assert mail["To"] == "oncall@example.test, ops@example.test"
    assert mail["From"] == "hub@example.test"
    assert mail["Subject"] == "[warning] too-hot on env-0001 (plant-n): raised"
    assert mail["Idempotency-Key"] == f"{alarm}/raised"
    assert f"alarm_id: {alarm}" in mail.get_content()
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.startswith("mail: delivered: SMTP accepted the message for 2 of 2 recipients")
    assert mailbox.messages[1]["Subject"].endswith(": test")


def test_notify_test_exits_non_zero_with_the_receivers_answer(
    tmp_path: Path, stack: Settings, webhooks: list[Webhook]
) -> None:
    hook = Webhook(fail_first=None, fail_status=500)
    webhooks.append(hook)
    path = write_file(tmp_path, f'channels:\n  hook: {{type: webhook, url: "{hook.url}", secret: "{SECRET}"}}\n')
    failed = hub_cli(stack, "notify", "test", "hook", "--notify-file", str(path), "--json")
    assert failed.returncode == 1
    answer = json.loads(failed.stdout)
    assert answer["ok"] is False and answer["answer"] == "HTTP 500 Internal Server Error: down for maintenance"
    [(headers, body, _status)] = hook.posts
    assert valid_signature(headers, body) and json.loads(body)["notice"] == "test"


def test_hub_run_refuses_a_malformed_notification_file_naming_file_line_and_field(
    stack: Settings, tmp_path: Path
) -> None:
    path = write_file(
        tmp_path, "channels:\n  hook: {type: webhook, url: 'http://x/'}\n  mail: {type: email, host: h, port: many}\n"
    )
    refused = hub_cli(stack, "run", "--only", "notify", IOT_NOTIFY_FILE=str(path))
    assert refused.returncode == 2
    assert f"{path} line 3: channels.mail.port: Expected `int`, got `str`" in refused.stderr


def test_two_workers_handle_each_delivery_once(stack: Settings, tmp_path: Path, webhooks: list[Webhook]) -> None:
    hook = Webhook(delay_s=0.05)
    webhooks.append(hook)
    path = write_file(
        tmp_path,
        f'channels:\n  shared-hook: {{type: webhook, url: "{hook.url}"}}\n'
        'routes:\n  - match: "alarms.#"\n    to: [shared-hook]\n',
    )
    alarms = [unique(f"a{n}") for n in range(30)]
    with notify_service(stack, path, workers=2) as runners:
        assert [r.name for r in runners] == ["notify", "notify.shared-hook.1", "notify.shared-hook.2"]
        wait_until(lambda: queue_state(stack, "hub.notify.shared-hook")[1] == 2, 30)
        publish(stack, *(transition(alarm, "raised", severity="info") for alarm in alarms))
        wait_until(lambda: len(hook.accepted) >= len(alarms), 90)
        wait_until(lambda: queue_state(stack, "hub.notify.shared-hook")[0] == 0, 30)
    assert sorted(hook.accepted) == sorted(f"{alarm}/raised" for alarm in alarms)
    assert len(hook.posts) == len(alarms)


def escalations(outcome: str) -> float:
    return REGISTRY.get_sample_value("hub_notify_escalations_total", {"outcome": outcome}) or 0.0


def test_ack_clear_and_escalation_each_produce_their_notification_once(
    stack: Settings, tmp_path: Path, webhooks: list[Webhook]
) -> None:
    hook, pager = Webhook(), Webhook()
    webhooks.extend([hook, pager])
    path = write_file(
        tmp_path,
        f'channels:\n  all-hook: {{type: webhook, url: "{hook.url}"}}\n  pager: {{type: webhook, url: "{pager.url}"}}\n'
        'routes:\n  - match: "alarms.#"\n    to: [all-hook]\n'
        'escalate:\n  - match: "alarms.critical.#"\n    after: 2s\n    to: [pager]\n',
    )
    escalating, acked, cleared = unique("esc"), unique("ack"), unique("clr")
    fired, cancelled = escalations("fired"), escalations("cancelled")
    with notify_service(stack, path):
        publish(
            stack,
            transition(escalating, "raised", severity="warning"),
            transition(escalating, "escalated", severity="critical"),
            transition(acked, "raised"),
            transition(acked, "acked"),
            transition(cleared, "raised"),
            transition(cleared, "cleared"),
        )
        wait_until(lambda: escalations("fired") >= fired + 1 and escalations("cancelled") >= cancelled + 2, 60)
        wait_until(lambda: len(hook.accepted) >= 6 and pager.accepted, 30)
    assert sorted(hook.accepted) == sorted(
        [
            f"{escalating}/raised",
            f"{escalating}/escalated-critical",
            f"{acked}/raised",
            f"{acked}/acked",
            f"{cleared}/raised",
            f"{cleared}/cleared",
        ]
    )
    assert pager.accepted == [f"{escalating}/unacked-2s"]
    [unacked] = pager.bodies()
    assert (unacked["notice"], unacked["transition"], unacked["severity"]) == ("unacked", "escalated", "critical")
    assert escalations("fired") == fired + 1


@pytest.mark.parametrize("acked_meanwhile", [False, True], ids=["still-unacked", "acked-meanwhile"])
def test_an_escalation_due_while_the_router_was_down_fires_once_unless_acked_meanwhile(
    stack: Settings, tmp_path: Path, webhooks: list[Webhook], acked_meanwhile: bool
) -> None:
    hook, pager = Webhook(), Webhook()
    webhooks.extend([hook, pager])
    path = write_file(
        tmp_path,
        f'channels:\n  restart-hook: {{type: webhook, url: "{hook.url}"}}\n'
        f'  restart-pager: {{type: webhook, url: "{pager.url}"}}\n'
        'routes:\n  - match: "alarms.#"\n    to: [restart-hook]\n'
        'escalate:\n  - match: "alarms.critical.#"\n    after: 1s\n    to: [restart-pager]\n',
    )
    alarm = unique("restart")
    with notify_service(stack, path):
        publish(stack, transition(alarm, "raised"))
        wait_until(lambda: hook.accepted, 60)
    # The router is gone, holding the raised transition: the broker takes it back.
    if acked_meanwhile:
        publish(stack, transition(alarm, "acked"))
    waiting = 3 if acked_meanwhile else 2  # the raised transition, the ack, and the timer once due
    wait_until(lambda: queue_state(stack, "hub.notify") == (waiting, 0), 60)
    cancelled = escalations("cancelled")
    with notify_service(stack, path):
        wait_until(lambda: queue_state(stack, "hub.notify")[0] == 0, 60)
        if acked_meanwhile:
            wait_until(lambda: f"{alarm}/acked" in hook.accepted and escalations("cancelled") > cancelled, 60)
        else:
            wait_until(lambda: pager.accepted, 60)
        wait_until(lambda: queue_state(stack, "hub.notify.restart-pager")[0] == 0, 30)
    assert pager.accepted == ([] if acked_meanwhile else [f"{alarm}/unacked-1s"])
    expected = {f"{alarm}/raised", f"{alarm}/acked"} if acked_meanwhile else {f"{alarm}/raised"}
    assert set(hook.accepted) == expected  # the raised one may come twice (sent again by the next router), same key


def test_hub_run_starts_the_notify_service_when_the_notification_file_exists(
    stack: Settings, tmp_path: Path, webhooks: list[Webhook]
) -> None:
    hook = Webhook()
    webhooks.append(hook)
    path = write_file(
        tmp_path,
        f'channels:\n  run-hook: {{type: webhook, url: "{hook.url}"}}\n'
        'routes:\n  - match: "alarms.#"\n    to: [run-hook]\n',
    )
    alarm = unique("run")
    with hub_process(stack, tmp_path, IOT_NOTIFY_FILE=str(path), IOT_NOTIFY_WORKERS="1"):
        publish(stack, transition(alarm, "raised", severity="info"))
        wait_until(lambda: hook.accepted, 60)
    [log] = tmp_path.glob("hub-*.log")
    consuming = {
        line.split("service=")[1].split()[0] for line in log.read_text().splitlines() if "event=consuming" in line
    }
    assert consuming == {"telemetry", "presence", "commands", "logs", "twin", "notify", "notify.run-hook.1"}
    assert hook.accepted == [f"{alarm}/raised"]


def test_email_with_starttls_is_sent_encrypted_and_a_server_demanding_it_refuses_plain(
    stack: Settings, tmp_path: Path
) -> None:
    files = ensure_dev_tls(tmp_path / "tls", ["127.0.0.1"])
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(files.server_cert, files.server_key)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True)
    controller.start()
    common = f"host: 127.0.0.1, port: {port}, from: hub@example.test, to: [oncall@example.test]"
    path = write_file(
        tmp_path,
        f'channels:\n  tls-mail: {{type: email, {common}, starttls: true, ca_file: "{files.ca_cert}"}}\n'
        f"  plain-mail: {{type: email, {common}, starttls: false}}\n",
    )
    try:
        sent = hub_cli(stack, "notify", "test", "tls-mail", "--notify-file", str(path))
        refused = hub_cli(stack, "notify", "test", "plain-mail", "--notify-file", str(path))
    finally:
        controller.stop()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(mailbox.messages) == 1 and mailbox.messages[0]["Subject"].endswith(": test")
    assert refused.returncode == 1
    assert "530" in refused.stdout and "STARTTLS" in refused.stdout
