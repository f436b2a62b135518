"""Safe on a network: no published password logs in anywhere, each stack has its own, InfluxDB
wants an account, and a stack from before generated secrets is refused or migrated.

127.0.0.2 stands in for an address other than loopback's own: the TLS listeners bind every
interface, the plain ones 127.0.0.1 (and ::1) only.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pika
import pika.exceptions
import pytest

from devices.fleet import Fleet
from hub.core.config import InfluxAccount, Settings, load_settings
from hub.core.exit_codes import ExitCode
from hub.core.secrets import SECRETS_FILE_MODE, read_secrets
from hub.core.tls import settings_context
from hub.stack import Stack
from hub.stack.influx import InfluxNode
from hub.stack.processes import free_port, port_open, start_detached, stop
from hub.stack.stack import settings_on_free_ports
from tests.support import hub_cli, hub_process, influx_query, influx_request, run_module, wait_until

#: What the README, the docs and the demo banner once printed: they must log in nowhere.
PUBLISHED = [("hub", "hub-dev-password"), ("admin", "admin-dev-password")]
#: An address of this machine that is not 127.0.0.1 (the whole 127/8 is loopback on Linux).
OTHER_ADDRESS = "127.0.0.2"
SITE = "secrets-site"


def amqp_login(settings: Settings, host: str, port: int, user: str, password: str, tls: bool) -> str:
    """ "accepted", "refused" (the broker turned the login down) or "closed" (nothing listens at host:port)."""
    if not port_open(host, port):
        return "closed"
    # The node's certificate names localhost: verified against that name whichever address is dialled.
    ssl_options = pika.SSLOptions(settings_context(settings), server_hostname="localhost") if tls else None
    parameters = pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host="iot",
        credentials=pika.PlainCredentials(user, password),
        ssl_options=ssl_options,
        connection_attempts=1,
        socket_timeout=5,
    )
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.ProbableAuthenticationError:
        return "refused"
    return "accepted"


def management_status(settings: Settings, user: str, password: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{settings.management_port}/api/whoami")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def without_passwords(settings: Settings) -> Settings:
    """The settings a user has with no password variable at all: only the stack folder tells them."""
    return settings.model_copy(
        update={
            "amqp_url": settings.amqp_url.replace(f":{settings.amqp.password}@", "@"),
            "admin_password": None,
            "influx_user": None,
            "influx_password": None,
            "influx_reader_user": None,
            "influx_reader_password": None,
            "influx_admin_user": None,
            "influx_admin_password": None,
        }
    )


def assert_published_passwords_refused(settings: Settings) -> None:
    listeners = [
        ("AMQP", "127.0.0.1", settings.amqp.port, False),
        ("AMQP", OTHER_ADDRESS, settings.amqp.port, False),
        ("AMQPS", "127.0.0.1", settings.amqps_port, True),
        ("AMQPS", OTHER_ADDRESS, settings.amqps_port, True),
    ]
    for name, host, port, tls in listeners:
        for user, password in PUBLISHED:
            outcome = amqp_login(settings, host, port, user, password, tls)
            # The plain listener binds loopback's 127.0.0.1 only: elsewhere nothing answers at all.
            allowed = {"refused", "closed"} if (name, host) == ("AMQP", OTHER_ADDRESS) else {"refused"}
            assert outcome in allowed, f"{user}:{password} on {name} {host}:{port}: {outcome}"
        assert management_status(settings, *PUBLISHED[1]) == 401
        assert management_status(settings, *PUBLISHED[0]) == 401


# --- the session's stack ------------------------------------------------------------------------


def test_no_published_password_logs_in_on_any_listener_but_the_stacks_own_do(stack: Settings) -> None:
    assert_published_passwords_refused(stack)
    amqp = stack.amqp
    # The same dial with the generated password gets in: the refusals above are the passwords', not the dial's.
    assert amqp_login(stack, OTHER_ADDRESS, stack.amqps_port, amqp.user, amqp.password, tls=True) == "accepted"
    assert amqp_login(stack, "127.0.0.1", amqp.port, amqp.user, amqp.password, tls=False) == "accepted"
    assert amqp_login(stack, OTHER_ADDRESS, amqp.port, amqp.user, amqp.password, tls=False) == "closed"
    assert management_status(stack, stack.admin_user, stack.admin_password or "") == 200


def test_the_secrets_file_is_the_owners_alone_and_holds_the_passwords_in_use(stack: Settings) -> None:
    assert stack.secrets_path.stat().st_mode & 0o777 == SECRETS_FILE_MODE
    secrets = read_secrets(stack.secrets_path)
    assert secrets is not None
    assert stack.amqp.password == secrets.hub_password and stack.admin_password == secrets.admin_password
    assert stack.influx_reader.password == secrets.influx_reader_password


def test_influxdb_wants_an_account_and_each_account_has_only_its_right(stack: Settings) -> None:
    nobody = InfluxAccount(None, None)
    line = b"forged,device=x,site=y,protocol=mqtt seq=1i"
    write = {"db": stack.influx_db, "precision": "ms"}
    select = {"db": stack.influx_db, "q": "SHOW MEASUREMENTS"}
    drop = {"q": f'DROP DATABASE "{stack.influx_db}"'}
    assert influx_request(stack, "GET", "/query", select, None, nobody)[0] == 401
    assert influx_request(stack, "POST", "/write", write, line, nobody)[0] == 401
    assert influx_request(stack, "POST", "/query", drop, None, nobody)[0] == 401
    assert influx_request(stack, "POST", "/write", write, line, stack.influx_reader)[0] == 403
    assert influx_request(stack, "POST", "/query", drop, None, stack.influx_writer)[0] == 403
    assert influx_request(stack, "POST", "/query", drop, None, stack.influx_reader)[0] == 403
    assert influx_request(stack, "GET", "/query", select, None, stack.influx_reader)[0] == 200
    assert influx_query(stack, "SELECT * FROM forged") == [], "nothing was written"


def test_the_hub_and_the_cli_need_no_password_variable(stack: Settings, tmp_path: Path) -> None:
    """Only IOT_STACK_DIR (and the ports): the hub writes, the CLI reads and provisions, as the stack's accounts."""
    bare = without_passwords(stack)
    assert not any("password" in name for name in bare.model_dump(exclude_none=True))
    assert bare.amqp.password == ""
    out = tmp_path / "provisioned.json"
    provisioned = hub_cli(bare, "provision", "secrets-0001", "--out", str(out))
    assert provisioned.returncode == 0, provisioned.stderr
    assert out.stat().st_mode & 0o777 == 0o600 and "secrets-0001" in json.loads(out.read_text())
    with (
        hub_process(bare, tmp_path),
        Fleet(stack, count=2, interval_s=0.2, site=SITE, seed=3) as fleet,
    ):
        assert fleet.wait_online(timeout_s=30)

        def listed() -> list[dict[str, object]] | None:
            shown = hub_cli(bare, "devices", "--site", SITE, "--state", "online", "--json")
            assert shown.returncode == 0, shown.stderr
            devices: list[dict[str, object]] = json.loads(shown.stdout)
            return devices if len(devices) == 2 else None

        wait_until(listed, 30, 0.5)
        wait_until(lambda: influx_query(stack, f"SELECT count(seq) FROM environment WHERE site = '{SITE}'"), 30)


def test_with_no_secrets_and_no_password_a_command_says_in_one_line_where_they_come_from(
    stack: Settings, tmp_path: Path
) -> None:
    elsewhere = without_passwords(stack).model_copy(update={"stack_dir": tmp_path / "never-started"})
    sent = hub_cli(elsewhere, "send", "env-0001", "ping")
    assert sent.returncode == ExitCode.USAGE, sent.stderr
    assert f"{tmp_path / 'never-started' / 'secrets.json'}" in sent.stderr and "stack up" in sent.stderr
    listed = hub_cli(elsewhere, "devices")
    assert listed.returncode == ExitCode.INFLUX_UNREACHABLE, listed.stderr
    assert "refused a client without credentials (401)" in listed.stderr
    for result in (sent, listed):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- the simulator's own credentials file -----------------------------------------------------------

MODELS = """\
kinds:
  lockbox:
    prefix: lockbox
    description: a device only this module simulates (no other test shares its accounts)
    sensors:
      level: {unit: "%", type: number, range: [0, 100]}
"""


def _sim(settings: Settings, tmp_path: Path, credentials: Path, **env: str) -> tuple[int, str]:
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    args = ("--models-file", str(models), "--kinds", "lockbox", "--count", "2", "--interval", "0.2")
    done = run_module(
        settings, "devices.sim", *args, "--duration", "1", "--credentials", str(credentials), timeout_s=120, **env
    )
    return done.returncode, done.stdout + done.stderr


def _made_elsewhere(path: Path) -> None:
    """A credentials file made on another broker: secrets this one never issued."""
    path.write_text(json.dumps({d: {"username": d, "password": "issued-by-another-broker"} for d in LOCKBOXES}))


LOCKBOXES = ("lockbox-0001", "lockbox-0002")


def test_devices_the_broker_refuses_get_new_credentials_or_the_error_names_the_file(
    stack: Settings, tmp_path: Path
) -> None:
    credentials = tmp_path / "devices.json"
    _made_elsewhere(credentials)
    code, output = _sim(stack, tmp_path, credentials, IOT_ADMIN_PASSWORD="not-the-admins")
    assert code == ExitCode.USAGE, output
    assert f"delete {credentials}" in output and "Traceback" not in output

    code, output = _sim(stack, tmp_path, credentials)
    assert code == 0, output
    assert f"the broker refused 2 devices their credentials in {credentials}" in output
    assert "all 2 devices online" in output
    renewed = json.loads(credentials.read_text())
    assert all(renewed[d]["password"] != "issued-by-another-broker" for d in LOCKBOXES)


# --- a stack of its own: from before generated secrets ---------------------------------------------


def _legacy_influxdb(home: Path, port: int) -> None:
    """InfluxDB as a stack before logins left it: no account at all, and data in the database."""
    shutil.rmtree(home, ignore_errors=True)
    node = InfluxNode(home, port, free_port())
    node.prepare()
    environment = {**node.environment(), "INFLUXDB_HTTP_AUTH_ENABLED": "false"}
    process = start_detached(node.argv(), environment, node.log_path, home)

    def call(path: str, params: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        request = urllib.request.Request(f"{node.url}{path}?{urllib.parse.urlencode(params)}", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        wait_until(lambda: not node.problems(), 60, 0.2)
        assert process.poll() is None, "this influxd answers /ping, not another one on its port"
        # /query answers 200 with the error in its body; the write needs the database to be there.
        created = call("/query", {"q": 'CREATE DATABASE "telemetry"'})
        assert created[0] == 200 and b'"error"' not in created[1], created
        line = b"environment,device=legacy-1,site=old,protocol=mqtt seq=1i 1700000000000000000"
        written = call("/write", {"db": "telemetry"}, line)
        assert written[0] == 204, written
    finally:
        assert stop(process.pid, str(home))


@pytest.mark.slow
def test_a_stack_from_before_secrets_is_refused_while_it_runs_and_migrated_by_its_next_start(tmp_path: Path) -> None:
    root = tmp_path / "old"
    fresh = settings_on_free_ports(root)
    (root / "secrets.json").unlink()
    hub_url = fresh.amqp_url.replace(f"hub:{fresh.amqp.password}@", "hub:hub-dev-password@")
    old = load_settings(
        **{**without_passwords(fresh).model_dump(exclude_none=True), "amqp_url": hub_url},
        admin_password="admin-dev-password",
    )
    bare = without_passwords(fresh)
    stack = Stack(old)
    try:
        stack.up()
        assert amqp_login(old, "127.0.0.1", old.amqp.port, *PUBLISHED[0], tls=False) == "accepted", "an old stack"
        (root / "secrets.json").unlink()
        refused = hub_cli(bare, "stack", "up", timeout_s=120)
        assert refused.returncode == ExitCode.STACK, refused.stdout + refused.stderr
        assert "runs without its own secrets" in refused.stderr
        assert "`python -m hub stack down`, then `python -m hub stack up`" in refused.stderr
        assert not (root / "secrets.json").exists()
        assert hub_cli(bare, "stack", "down", timeout_s=120).returncode == 0
        _legacy_influxdb(root / "influxdb", fresh.influx_port)

        migrated = hub_cli(bare, "stack", "up", timeout_s=300)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert (root / "secrets.json").stat().st_mode & 0o777 == SECRETS_FILE_MODE
        now = load_settings(**bare.model_dump(exclude_none=True))
        assert_published_passwords_refused(now)
        assert amqp_login(now, "127.0.0.1", now.amqp.port, now.amqp.user, now.amqp.password, tls=False) == "accepted"
        [legacy] = influx_query(now, "SELECT seq FROM environment WHERE device = 'legacy-1'")
        assert legacy["values"][0][1] == 1, "the data from before logins is kept, and the reader reads it"
        nobody = InfluxAccount(None, None)
        assert influx_request(now, "GET", "/query", {"q": "SHOW DATABASES"}, None, nobody)[0] == 401
    finally:
        Stack(old).down()


def test_hub_audit_finds_no_published_secret_and_no_influxdb_without_a_login(stack: Settings) -> None:
    """`python -m hub audit` with only the stack folder to go by: its secrets and InfluxDB checks pass."""
    audited = hub_cli(without_passwords(stack), "audit", "--json", timeout_s=120)
    rows = [json.loads(line) for line in audited.stdout.splitlines() if line.startswith("{")]
    checked = [row for row in rows if row["check"] in ("secrets", "InfluxDB authentication")]
    assert len(checked) >= 5, audited.stdout + audited.stderr
    assert all(row["verdict"] == "ok" for row in checked), checked
