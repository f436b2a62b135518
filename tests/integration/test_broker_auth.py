"""The broker auth service on the real stack: no device can knock another offline, none speaks AMQP,
and while the service is down no login succeeds and nothing is lost.

RabbitMQ 3.10's internal backend cannot refuse an MQTT client id that is not the login's own: such
a CONNECT took over the named device's session, disconnecting it. The stack's nodes now ask the
service (hub/brokerauth) at every login, before the client is registered.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import stomp.exception

from devices.fleet import Fleet
from hub.clients.amqp import connect
from hub.clients.management import ManagementAdmin
from hub.control.audit import audit_seqs
from hub.control.identity import impostors, provision, revoke
from hub.core.config import Settings, over_tls
from hub.core.contract import command_key
from hub.core.errors import BrokerUnavailable, HubError
from hub.core.tls import DeviceCert
from hub.stack.stack import BROKER_AUTH, Stack
from tests.device_clients import MqttDevice, StompDevice, refused
from tests.support import fleet_credentials, hub_cli, hub_process, wait_until

#: How many times the impostor tries.
IMPOSTOR_TRIES = 10
SITE = "plant-authz"
DEVICES = 4
INTERVAL_S = 0.2
#: The fleet's readings that pile up while the service is down.
OUTAGE_S = 3.0


@pytest.fixture
def pair(stack: Settings) -> Iterator[dict[str, str]]:
    """Two fresh password devices A and B; revoked afterwards."""
    nonce = uuid.uuid4().hex[:8]
    devices = [f"az-{nonce}-a", f"az-{nonce}-b"]
    issued = provision(stack, devices).issued
    yield {device: credential.password for device, credential in issued.items()}
    revoke(stack, devices)


def _tls(stack: Settings) -> Settings:
    return over_tls(stack).model_copy(update={"tls_ca": stack.stack_path / "tls" / "ca.pem"})


@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
@pytest.mark.parametrize("listener", ["mqtt", "mqtts"])
def test_an_impostor_tried_ten_times_never_disconnects_the_device_it_names(
    stack: Settings, pair: dict[str, str], listener: str, clean_session: bool
) -> None:
    settings = _tls(stack) if listener == "mqtts" else stack
    (a, a_secret), (b, b_secret) = pair.items()
    victim = MqttDevice(settings, b, b_secret, clean_session=clean_session)
    try:
        assert victim.accepted, victim.connack
        victim.subscribe(command_key(b))
        wait_until(lambda: victim.subacks, 10)
        for _ in range(IMPOSTOR_TRIES):
            impostor = MqttDevice(settings, a, a_secret, client_id=b, clean_session=clean_session)
            impostor.close()
            assert not impostor.accepted, "a client id that is not the login's own is refused"
        assert victim.client.is_connected()
        assert victim.disconnects == 0
        assert not [i for i in impostors(stack) if i.user == a]
    finally:
        victim.close()


@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
def test_a_certificate_impostor_never_disconnects_the_device_it_names(
    stack: Settings, tmp_path: Path, clean_session: bool
) -> None:
    nonce = uuid.uuid4().hex[:8]
    a, b = f"azc-{nonce}-a", f"azc-{nonce}-b"
    done = hub_cli(stack, "provision", "--cert", "--cert-dir", str(tmp_path), a, b)
    assert done.returncode == 0, done.stderr
    settings = _tls(stack)
    try:
        victim = MqttDevice(settings, b, cert=DeviceCert(tmp_path, b), clean_session=clean_session)
        try:
            assert victim.accepted, victim.connack
            for _ in range(IMPOSTOR_TRIES):
                impostor = MqttDevice(
                    settings, a, cert=DeviceCert(tmp_path, a), client_id=b, clean_session=clean_session
                )
                impostor.close()
                assert not impostor.accepted
            assert victim.client.is_connected()
            assert victim.disconnects == 0
        finally:
            victim.close()
    finally:
        revoke(stack, [a, b])


def test_a_device_account_cannot_open_an_amqp_connection_nor_use_the_management_api(
    stack: Settings, pair: dict[str, str]
) -> None:
    (a, a_secret), _ = pair.items()
    as_device = stack.model_copy(update={"amqp_url": f"amqp://{a}:{a_secret}@{stack.amqp.host}:{stack.amqp.port}/iot"})
    with pytest.raises(BrokerUnavailable):
        connect(as_device, "device over amqp")
    with pytest.raises(HubError):
        ManagementAdmin(stack.model_copy(update={"admin_user": a, "admin_password": a_secret})).user_names()
    # The same account over MQTT and STOMP, under its own name, is welcome.
    assert not refused(stack, "mqtt", a, a_secret)
    assert not refused(stack, "stomp", a, a_secret)


def test_with_the_auth_service_down_no_login_succeeds_the_hub_keeps_its_connection_and_nothing_is_lost(
    stack: Settings, tmp_path: Path
) -> None:
    the_stack = Stack(stack)
    credentials = fleet_credentials(stack, DEVICES, protocol="mixed", site=SITE)
    early_id, early = next(iter(credentials.items()))
    with hub_process(stack, tmp_path):
        [log] = tmp_path.glob("hub-*.log")
        consuming = log.read_text().count("event=consuming")
        fleet = Fleet(stack, count=DEVICES, protocol="mixed", interval_s=INTERVAL_S, site=SITE, seed=29)
        try:
            assert the_stack.kill(BROKER_AUTH, signal.SIGKILL)
            # No login: a device's over MQTT and STOMP, the hub's over AMQP.
            assert refused(stack, "mqtt", early_id, early.password)
            with pytest.raises((stomp.exception.ConnectFailedException, AssertionError)):
                StompDevice(stack, early_id, early.password).close()
            with pytest.raises(BrokerUnavailable):
                connect(stack, "login while the auth service is down")
            # The fleet starts now: every device is refused, and buffers its readings.
            fleet.start(wait_s=None)
            wait_until(lambda: fleet.stats().total.refused == DEVICES, 15)
            time.sleep(OUTAGE_S)
            assert fleet.stats().total.online == 0
        finally:
            the_stack.up()
        try:
            assert fleet.wait_online(timeout_s=30), [fleet.describe(d.device_id) for d in fleet.devices]
            time.sleep(1.0)
        finally:
            fleet.close()
        assert log.read_text().count("event=consuming") == consuming, "the hub never had to reconnect"
        produced = {d.device_id: d.seq for d in fleet.devices}
        assert all(seq >= OUTAGE_S / INTERVAL_S for seq in produced.values()), produced

        def all_stored() -> bool:
            audits = audit_seqs(stack, SITE)
            return all(d in audits and audits[d].distinct >= n for d, n in produced.items())

        wait_until(all_stored, 60, 0.5)
    audits = audit_seqs(stack, SITE)
    for device, n in produced.items():
        assert (audits[device].count, audits[device].distinct, audits[device].first) == (n, n, 1), device


def test_the_service_counts_what_it_refused_by_reason(stack: Settings, pair: dict[str, str]) -> None:
    (a, a_secret), (b, _) = pair.items()
    service = Stack(stack).broker_auth()
    assert service is not None
    before = service.counts() or {}
    MqttDevice(stack, a, a_secret, client_id=b).close()
    after = service.counts() or {}
    assert after.get("refused:foreign_client_id", 0) == before.get("refused:foreign_client_id", 0) + 1
