"""Notifications without servers: the file, topic patterns, the router's and the workers' decisions."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pika.spec import Basic, BasicProperties

from hub.core.durations import duration_ms, durations_ms
from hub.core.errors import ConfigError, InvalidMessage
from hub.outputs.fanout import OutputSet
from hub.runtime.delivery import Delivery
from hub.runtime.runner import Runner
from hub.runtime.stub import FakeClock, MemoryOutput, StubConsumer
from hub.services.notify.config import EmailChannel, WebhookChannel, load_notify, parse_notify
from hub.services.notify.message import AlarmTransition, Notification, notification
from hub.services.notify.plan import NotifyPlan, RetrySchedule, channels_for
from hub.services.notify.queues import channel_queue, escalation_queue, retry_queue
from hub.services.notify.router import ATTEMPT_HEADER, KEY_HEADER, TIMER_ESCALATION, TIMER_HEADER, NotifyRouter
from hub.services.notify.senders import Answer, signature
from hub.services.notify.topic import matches
from hub.services.notify.worker import FAILED_REASON, REFUSED_REASON, DeliveryWorker

ROOT = Path(__file__).resolve().parents[2]

#: The file of issue 22, as written there.
ISSUE_FILE = """\
channels:
  ops-hook: {type: webhook, url: "https://ops.example/hook", secret: "change-me"}
  oncall-mail: {type: email, host: smtp.example, port: 587, starttls: true, from: hub@example, to: [oncall@example]}
routes:
  - match: "alarms.critical.#"
    to: [ops-hook, oncall-mail]
  - match: "alarms.*.plant-a.#"
    to: [ops-hook]
escalate:
  - match: "alarms.critical.#"
    after: 15m
    to: [oncall-mail]
"""


def transition(kind: str = "raised", severity: str = "critical", alarm: str = "a1", site: str = "plant-a") -> bytes:
    return json.dumps(
        {
            "v": 1,
            "key": f"{alarm}/{kind}",
            "alarm_id": alarm,
            "transition": kind,
            "type": "too-hot",
            "rule": "too-hot",
            "device": "env-0001",
            "site": site,
            "kind": "environment",
            "severity": severity,
            "sensor": "temperature",
            "value": 41.5,
            "ts": 1_700_000_000_000,
            "raised_at": 1_700_000_000_000,
            "count": 3,
            "acked": kind == "acked",
            "acked_by": "ana" if kind == "acked" else None,
            "note": None,
            "extra": "tolerated",
        }
    ).encode()


def key_of(severity: str = "critical", site: str = "plant-a") -> str:
    return f"alarms.{severity}.{site}.environment.env-0001"


def delivery(body: bytes, routing_key: str, tag: int, headers: dict[str, object] | None = None) -> Delivery:
    method = Basic.Deliver(delivery_tag=tag, routing_key=routing_key)
    return Delivery(method, BasicProperties(headers=headers), body, "hub.notify")


# --- the file ------------------------------------------------------------------------------------


def test_the_issue_file_works_as_written() -> None:
    config = parse_notify(ISSUE_FILE)
    assert config.channels["ops-hook"] == WebhookChannel(url="https://ops.example/hook", secret="change-me")
    mail = config.channels["oncall-mail"]
    assert isinstance(mail, EmailChannel)
    assert (mail.host, mail.port, mail.starttls, mail.from_, mail.to) == (
        "smtp.example",
        587,
        True,
        "hub@example",
        ["oncall@example"],
    )
    assert [r.match for r in config.routes] == ["alarms.critical.#", "alarms.*.plant-a.#"]
    assert config.escalate[0].after_ms == 15 * 60_000
    assert config.escalate[0].to == ["oncall-mail"]


def test_the_example_file_is_valid_and_holds_no_working_secret() -> None:
    config = load_notify(ROOT / "notify.example.yaml")
    assert config is not None and config.channels
    hook = config.channels["ops-hook"]
    assert isinstance(hook, WebhookChannel) and hook.secret == "change-me"
    assert config.placeholder_secrets() == ["ops-hook"], "the hub warns about the example's secret"


def test_no_file_means_no_notifications(tmp_path: Path) -> None:
    assert load_notify(tmp_path / "notify.yaml") is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port: 587", "port: x"), "line 3: channels.oncall-mail.port: Expected `int`, got `str`"),
        (("to: [ops-hook]\n", "to: [opshook]\n"), "line 8: routes[1].to[0]: no channel named 'opshook'"),
        (("15m", "15y"), "line 11: escalate[0].after: '15y' is not a duration"),
        (("secret:", "sekret:"), "line 2: channels.ops-hook.sekret: Object contains unknown field `sekret`"),
        (("from: hub@example, ", ""), "line 3: channels.oncall-mail: Object missing required field `from`"),
        (("type: webhook", "type: sms"), "line 2: channels.ops-hook.type: Invalid value 'sms'"),
        (('"alarms.*.plant-a.#"', '"alarms.*x.plant-a.#"'), "line 7: routes[1].match: 'alarms.*x.plant-a.#' is not"),
        (("https://ops", "ftp://ops"), "line 2: channels.ops-hook: url 'ftp://ops.example/hook' must start with"),
        (("routes:", "routs:"), "line 4: routs: unknown section"),
        (("  - match", "  -- match"), "line 6: not valid YAML"),
    ],
)
def test_a_malformed_file_is_refused_with_file_line_and_field(change: tuple[str, str], expected: str) -> None:
    text = ISSUE_FILE.replace(*change, 1)
    assert text != ISSUE_FILE
    with pytest.raises(ConfigError) as refused:
        parse_notify(text, "conf/notify.yaml")
    assert str(refused.value).startswith(f"conf/notify.yaml {expected}"), str(refused.value)


def test_durations() -> None:
    assert [duration_ms(v) for v in ("15m", "10s", "0.2s", "500ms", "1h", 30, "2")] == [
        900_000,
        10_000,
        200,
        500,
        3_600_000,
        30_000,
        2_000,
    ]
    assert durations_ms("10s, 1m,5m,30m") == (10_000, 60_000, 300_000, 1_800_000)
    for bad in ("0s", "5 minutes", "-1s", ""):
        with pytest.raises(ValueError):
            duration_ms(bad)


# --- topic patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("alarms.critical.#", "alarms.critical.plant-a.environment.env-1", True),
        ("alarms.critical.#", "alarms.warning.plant-a.environment.env-1", False),
        ("alarms.*.plant-a.#", "alarms.info.plant-a.environment.env-1", True),
        ("alarms.*.plant-a.#", "alarms.info.plant-b.environment.env-1", False),
        ("alarms.#", "alarms", True),
        ("#", "alarms.info.a.b.c", True),
        ("alarms.*.*.*.env-1", "alarms.info.a.b.env-1", True),
        ("alarms.*.*.*.env-1", "alarms.info.a.b.env-2", False),
        ("alarms.*", "alarms.info.a", False),
        ("alarms.#.env-1", "alarms.info.a.b.env-1", True),
        ("alarms.#.b.#", "alarms.info.a.b.env-1", True),
    ],
)
def test_patterns_have_amqp_topic_semantics(pattern: str, key: str, expected: bool) -> None:
    assert matches(pattern, key) is expected


# --- the router's plan ---------------------------------------------------------------------------


def parsed(body: bytes) -> AlarmTransition:
    return msgspec.json.decode(body, type=AlarmTransition)


def test_a_transition_goes_to_every_channel_of_every_matching_route_once() -> None:
    config = parse_notify(ISSUE_FILE)
    assert channels_for(config, key_of("critical", "plant-a")) == ["ops-hook", "oncall-mail"]
    assert channels_for(config, key_of("warning", "plant-a")) == ["ops-hook"]
    assert channels_for(config, key_of("warning", "plant-b")) == []


def test_an_escalation_fires_only_while_the_alarm_is_active_and_unacked() -> None:
    plan = NotifyPlan(parse_notify(ISSUE_FILE))
    raised = plan.on_transition(parsed(transition("raised")), key_of(), tag=1)
    assert raised.hold and [e.after_ms for e in raised.timers] == [900_000]
    again = plan.on_transition(parsed(transition("raised")), key_of(), tag=2)  # a replay starts nothing new
    assert not again.hold and not again.timers
    due = plan.on_due("a1", raised.timers[0].id)
    assert [s.channel for s in due.sends] == ["oncall-mail"] and due.release == (1,)
    [send] = due.sends
    assert send.notification.notice == "unacked" and send.notification.key == "a1/unacked-900s"
    assert plan.on_due("a1", raised.timers[0].id).sends == ()  # fired once


@pytest.mark.parametrize("settling", ["acked", "cleared"])
def test_acked_or_cleared_cancels_the_escalation_and_releases_what_it_held(settling: str) -> None:
    plan = NotifyPlan(parse_notify(ISSUE_FILE))
    raised = plan.on_transition(parsed(transition("raised")), key_of(), tag=7)
    settled = plan.on_transition(parsed(transition(settling)), key_of(), tag=8)
    assert settled.release == (7,) and not settled.hold
    assert [s.notification.key for s in settled.sends] == [f"a1/{settling}"] * 2
    assert plan.on_due("a1", raised.timers[0].id).sends == ()


def test_an_alarm_no_escalation_matches_is_not_held() -> None:
    plan = NotifyPlan(parse_notify(ISSUE_FILE))
    decision = plan.on_transition(parsed(transition("raised", "warning")), key_of("warning"), tag=1)
    assert not decision.hold and not decision.timers and [s.channel for s in decision.sends] == ["ops-hook"]
    assert plan.pending == {}


def test_the_retry_schedule_tries_once_more_after_each_delay() -> None:
    schedule = RetrySchedule((200, 500, 1000))
    assert schedule.attempts == 4
    assert [schedule.after_failure(n) for n in (1, 2, 3, 4)] == [200, 500, 1000, None]


# --- the handlers ----------------------------------------------------------------------------------


def test_the_router_queues_one_delivery_per_channel_and_a_timer() -> None:
    router = NotifyRouter(parse_notify(ISSUE_FILE))
    names = {q.name for q in router.declaration.declare_also}
    assert names == {"hub.notify.ops-hook", "hub.notify.oncall-mail", "hub.notify.escalate.900000"}
    effects = router.handle(delivery(transition("raised"), key_of(), 1))
    assert effects.hold
    routed = {p.routing_key: p for p in effects.publishes}
    assert set(routed) == {"hub.notify.ops-hook", "hub.notify.oncall-mail", "hub.notify.escalate.900000"}
    hook = routed["hub.notify.ops-hook"]
    assert (hook.exchange, hook.mandatory, hook.properties.delivery_mode) == ("", True, 2)
    assert hook.properties.headers == {KEY_HEADER: "a1/raised", ATTEMPT_HEADER: 1}
    body = json.loads(hook.body)
    for field in ("alarm_id", "transition", "rule", "device", "site", "kind", "severity", "value", "ts"):
        assert field in body
    timer = routed["hub.notify.escalate.900000"]
    due = router.handle(delivery(timer.body, "hub.notify", 2, timer.properties.headers))
    assert due.release == (1,) and [p.routing_key for p in due.publishes] == ["hub.notify.oncall-mail"]


def test_the_router_refuses_what_is_not_a_transition() -> None:
    router = NotifyRouter(parse_notify(ISSUE_FILE))
    with pytest.raises(InvalidMessage) as refused:
        router.handle(delivery(b"{nope", key_of(), 1))
    assert refused.value.reason == "bad_json"
    with pytest.raises(InvalidMessage) as mismatched:
        router.handle(delivery(transition("raised"), key_of("warning"), 1))
    assert mismatched.value.reason == "routing_mismatch"
    with pytest.raises(InvalidMessage) as timer:
        router.handle(delivery(b"{}", "hub.notify", 1, {TIMER_HEADER: TIMER_ESCALATION}))
    assert timer.value.reason == "schema"


class Scripted:
    """A sender that answers what it is told, in order (our own adapter's stand-in, not a server's)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> Answer:
        self.sent.append(notification)
        return self.answers.pop(0)


def channel_delivery(attempt: int) -> Delivery:
    body = msgspec.json.encode(notification(parsed(transition("raised"))))
    return delivery(body, "hub.notify.ops-hook", 1, {KEY_HEADER: "a1/raised", ATTEMPT_HEADER: attempt})


def test_a_failed_attempt_goes_to_the_next_retry_queue_with_the_attempt_counted() -> None:
    worker = DeliveryWorker(
        "ops-hook", Scripted(Answer(False, "HTTP 500 Internal Server Error")), RetrySchedule((200, 500))
    )
    assert [q.name for q in worker.declaration.queues] == ["hub.notify.ops-hook"]
    assert worker.declaration.queues[0].prefetch == 1 and not worker.declaration.queues[0].single_active
    effects = worker.handle(channel_delivery(2))
    [retry] = effects.publishes
    assert retry.routing_key == retry_queue("ops-hook", 500).name == "hub.notify.ops-hook.retry.500"
    assert retry.properties.headers[ATTEMPT_HEADER] == 3
    assert retry.properties.headers["x-iot-last-answer"] == "HTTP 500 Internal Server Error"


def test_after_the_last_attempt_the_delivery_is_dead_lettered_with_the_last_answer() -> None:
    worker = DeliveryWorker(
        "ops-hook", Scripted(Answer(False, "HTTP 503 Service Unavailable: busy")), RetrySchedule((200, 500))
    )
    with pytest.raises(InvalidMessage) as failed:
        worker.handle(channel_delivery(3))
    assert failed.value.reason == FAILED_REASON
    assert failed.value.detail == "ops-hook: attempt 3 of 3; last answer: HTTP 503 Service Unavailable: busy"


def test_a_permanent_refusal_is_dead_lettered_at_once_and_success_settles() -> None:
    worker = DeliveryWorker(
        "ops-hook", Scripted(Answer(False, "HTTP 400 Bad Request", permanent=True)), RetrySchedule((200,))
    )
    with pytest.raises(InvalidMessage) as refused:
        worker.handle(channel_delivery(1))
    assert refused.value.reason == REFUSED_REASON
    ok = DeliveryWorker("ops-hook", Scripted(Answer(True, "HTTP 200 OK")), RetrySchedule((200,)))
    assert not ok.handle(channel_delivery(1)).publishes


def test_delay_queues_move_their_messages_back_where_they_belong() -> None:
    from hub.runtime.topology import queue_arguments

    assert queue_arguments(retry_queue("ops-hook", 200)) == {
        "x-message-ttl": 200,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": channel_queue("ops-hook").name,
    }
    assert queue_arguments(escalation_queue(900_000))["x-dead-letter-routing-key"] == "hub.notify"
    assert queue_arguments(channel_queue("ops-hook"))["x-queue-type"] == "quorum"


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"alarm_id":"a1"}'
    assert signature("s3cret", body) == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


def test_a_batch_as_large_as_the_prefetch_window_is_due_at_once() -> None:
    """A worker's window is one delivery: its batch waits for no second one (no 0.2 s per notification)."""
    from hub.runtime.batch import Batch

    batch = Batch(max_deliveries=1)
    batch.open(now=10.0)
    batch.settle(1, object())
    assert batch.due(now=10.0)
    wide = Batch()
    wide.open(now=10.0)
    wide.settle(1, object())
    assert not wide.due(now=10.0, idle=True), "acks alone wait for the timer when more may come"


# --- the router under its runner (StubConsumer: acks, holds, a lost connection) ----------------------


def router_rig(until: Any) -> tuple[StubConsumer, Runner]:
    stop = threading.Event()
    clock = FakeClock()
    broker = StubConsumer(stop, clock)
    broker.stop_when = lambda: until(broker)
    runner = Runner(NotifyRouter(parse_notify(ISSUE_FILE)), broker, OutputSet.of(MemoryOutput()), [], stop, clock=clock)
    return broker, runner


def test_the_router_holds_what_an_escalation_waits_on_across_a_lost_connection_and_fires_it_once() -> None:
    phase = {"n": 0}

    def until(broker: StubConsumer) -> bool:
        held = [m.routing_key for m in broker.unacked.values()]
        if phase["n"] == 0 and held == [key_of()] and not broker.ready["hub.notify"]:
            phase["n"] = 1  # the raised transition is held, the warning one acked: the connection breaks
            broker.drop()
            return False
        if phase["n"] == 1 and broker.connects == 2 and held == [key_of()]:
            phase["n"] = 2  # held again after the reconnect: now its timer comes back
            timer = next(p for p in broker.published if p.routing_key.startswith("hub.notify.escalate."))
            broker.put("hub.notify", "hub.notify", timer.body, dict(timer.properties.headers or {}))
            return False
        return phase["n"] == 2 and broker.idle

    broker, runner = router_rig(until)
    broker.put("hub.notify", key_of(), transition("raised"))
    broker.put("hub.notify", key_of("warning"), transition("raised", "warning", alarm="a2"))
    runner.run()
    assert phase["n"] == 2 and broker.idle
    pages = [p for p in broker.published if p.routing_key == "hub.notify.oncall-mail"]
    assert [json.loads(p.body)["key"] for p in pages] == ["a1/raised", "a1/raised", "a1/unacked-900s"]
    assert [m.routing_key for m in broker.acked].count(key_of()) == 1
