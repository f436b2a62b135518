"""A project-local `influxd` (InfluxDB 1.x) using influxdb/influxdb.conf, with logins.

The directories, bind addresses and authentication are set with INFLUXDB_* variables, so the
config file stays the same one docker compose mounts (where the image's own INFLUXDB_*
variables do the same). Authentication is on: a client without an account gets 401. The
stack makes three accounts (`ensure_accounts`): an admin, a writer for the hub (WRITE on the
database) and a reader for everything that only reads (READ). The admin also sets the
retention policies and the roll-ups' continuous queries (`ensure_retention`, hub/core/retention.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hub.clients.influx import InfluxHttp, server_version
from hub.core.config import PROJECT_ROOT, InfluxAccount, Settings, missing_secret
from hub.core.errors import NotPermitted, StackError, StorageUnavailable
from hub.core.retention import ROLLUP_1H_RP, RetentionPlan, Statement, go_duration_s, quote_identifier
from hub.stack.folders import private_folder
from hub.stack.packages import INFLUXD

INFLUX_CONFIG = PROJECT_ROOT / "influxdb" / "influxdb.conf"


class InfluxNode:
    def __init__(self, home: Path, http_port: int, rpc_port: int) -> None:
        self.home = home
        self.http_port = http_port
        self.rpc_port = rpc_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.home / "influxd.log"

    def prepare(self) -> None:
        """The data folders, private (also those made before)."""
        private_folder(self.home)
        for sub in ("meta", "data", "wal"):
            private_folder(self.home / sub)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        env.update(
            INFLUXDB_META_DIR=str(self.home / "meta"),
            INFLUXDB_DATA_DIR=str(self.home / "data"),
            INFLUXDB_DATA_WAL_DIR=str(self.home / "wal"),
            INFLUXDB_HTTP_BIND_ADDRESS=f"127.0.0.1:{self.http_port}",
            INFLUXDB_BIND_ADDRESS=f"127.0.0.1:{self.rpc_port}",
            INFLUXDB_HTTP_AUTH_ENABLED="true",
        )
        return env

    def argv(self) -> list[str]:
        return [str(INFLUXD), "-config", str(INFLUX_CONFIG), "-pidfile", str(self.home / "influxd.pid")]

    def problems(self) -> list[str]:
        return [] if server_version(self.url) is not None else [f"{self.url}/ping does not answer"]

    def ensure_accounts(self, settings: Settings, progress: Callable[[str], None] = lambda _m: None) -> None:
        """The database and the accounts of `settings` (admin, writer, reader), made or given their passwords.

        InfluxDB 1.x with authentication lets a client without credentials do one thing only, while
        no admin exists: create one. So a new influxd, or one of a stack from before logins, gets
        its admin that way; the admin then makes the database and the others. Safe to run at every start.
        """
        plan = account_plan(settings)
        anonymous = InfluxHttp(self.url, settings.influx_db)
        admin = InfluxHttp(self.url, settings.influx_db, user=plan.admin.user, password=plan.admin.password)
        try:
            # Refused (401) once an admin exists: it must be ours, which SHOW USERS tells.
            with contextlib.suppress(StorageUnavailable):
                anonymous.administer(create_user(plan.admin, admin=True))
            try:
                users = {row["user"] for series in admin.administer("SHOW USERS")[0] for row in series.rows}
            except NotPermitted:
                raise StackError(f"InfluxDB under {self.home}: {plan.admin.user!r} is no admin") from None
            except StorageUnavailable as exc:
                raise StackError(
                    f"InfluxDB under {self.home} refused its admin {plan.admin.user!r} ({exc}): its password is "
                    f"not the one in {settings.secrets_path} (nor IOT_INFLUX_ADMIN_PASSWORD). Restore that file, "
                    "or start afresh with `python -m hub stack down --purge` (deletes the data)"
                ) from None
            admin.create_database()
            ensure_log_retention(admin, settings)
            for account, privilege in plan.grants:
                if account.user in users:
                    admin.administer(f"SET PASSWORD FOR {_identifier(account.user)} = {_string(account.password)}")
                else:
                    admin.administer(create_user(account))
                admin.administer(
                    f"GRANT {privilege} ON {_identifier(settings.influx_db)} TO {_identifier(account.user)}"
                )
            ensure_retention(admin, settings.retention, progress)
        except StorageUnavailable as exc:
            raise StackError(str(exc)) from exc
        finally:
            anonymous.close()
            admin.close()


def ensure_retention(admin: InfluxHttp, plan: RetentionPlan, progress: Callable[[str], None] = lambda _m: None) -> None:
    """The plan's retention policies and continuous queries, created or altered (never duplicated).

    The statements are the ones docker compose runs (`influxdb/retention.sh`): each that may fail
    (a policy that exists, a query that does not yet) is followed by the one that does the work.
    The first time on a database that already holds points (no roll-up policy yet), and whenever
    the raw retention shrinks, its whole history is rolled up before the raw retention is set, so
    what the shorter retention will drop is kept as roll-ups. No point is deleted here; InfluxDB
    drops raw points older than the raw retention at its next check (every 30 minutes).
    """
    kept = _policy_durations(admin, plan.db)
    first_time = ROLLUP_1H_RP not in kept
    raw_kept = kept.get(plan.raw_rp)
    shrinking = plan.raw_s is not None and (raw_kept is None or raw_kept > plan.raw_s) and plan.raw_rp in kept
    _run(admin, plan.rollup_statements())
    if first_time or shrinking:
        oldest = oldest_raw_ms(admin, plan)
        if oldest is not None:
            now_ms = int(time.time() * 1000)
            backfill_rollups(
                admin, plan, oldest, now_ms, lambda done, total: progress(f"rolling up the history: {done}/{total}")
            )
    _run(admin, plan.raw_statements())


def _run(admin: InfluxHttp, statements: list[Statement]) -> None:
    for statement in statements:
        try:
            admin.administer(statement.text)
        except StorageUnavailable:
            if not statement.may_fail:
                raise


def _policy_durations(admin: InfluxHttp, db: str) -> dict[str, int | None]:
    """Each retention policy of `db` and how long it keeps points (seconds; None: forever)."""
    try:
        answer = admin.administer(f"SHOW RETENTION POLICIES ON {quote_identifier(db)}")
    except StorageUnavailable:
        return {}  # no database yet
    return {str(row["name"]): go_duration_s(str(row["duration"])) for series in answer[0] for row in series.rows}


def oldest_raw_ms(admin: InfluxHttp, plan: RetentionPlan) -> int | None:
    """The time of the oldest point in the raw policy (None: it holds none)."""
    db, rp = quote_identifier(plan.db), quote_identifier(plan.raw_rp)
    measurements = {str(row["name"]) for series in admin.query(f"SHOW MEASUREMENTS ON {db}")[0] for row in series.rows}
    oldest = None
    for name in sorted(measurements):
        for series in admin.query(f"SELECT * FROM {db}.{rp}.{quote_identifier(name)} LIMIT 1")[0]:
            for row in series.rows:
                oldest = row["time"] if oldest is None else min(oldest, row["time"])
    return None if oldest is None else int(oldest)


def apply_retention(url: str, settings: Settings, progress: Callable[[str], None] = lambda _m: None) -> None:
    """`ensure_retention` of `settings` on the InfluxDB at `url`, as the stack's admin."""
    login = account_plan(settings).admin
    admin = InfluxHttp(url, settings.influx_db, user=login.user, password=login.password)
    try:
        ensure_retention(admin, settings.retention, progress)
    except StorageUnavailable as exc:
        raise StackError(str(exc)) from exc
    finally:
        admin.close()


def backfill_rollups(
    admin: InfluxHttp, plan: RetentionPlan, start_ms: int, end_ms: int, progress: Callable[[int, int], None]
) -> int:
    """Run the roll-ups' SELECT INTO over [start, end) now, a day at a time; returns the points written.

    What the continuous queries would have written (the same buckets, tags and fields), so it is
    safe to repeat: a bucket's point overwrites itself.
    """
    selects = plan.backfill_selects(start_ms, end_ms)
    written = 0
    for done, select in enumerate(selects, start=1):
        for series in admin.administer(select)[0]:
            written += sum(int(row.get("written") or 0) for row in series.rows)
        progress(done, len(selects))
    return written


@dataclass(frozen=True)
class Login:
    """An InfluxDB account with both its name and its password known."""

    user: str
    password: str


@dataclass(frozen=True)
class AccountPlan:
    """The stack's InfluxDB accounts: the admin, and the others with the privilege each gets on the database."""

    admin: Login
    grants: list[tuple[Login, str]]


def account_plan(settings: Settings) -> AccountPlan:
    """Who gets which right: the writer WRITE, the reader READ (one account for both: ALL)."""
    admin = _complete(settings, settings.influx_admin, "InfluxDB's admin account", "IOT_INFLUX_ADMIN_PASSWORD")
    writer = _complete(settings, settings.influx_writer, "the hub's InfluxDB account", "IOT_INFLUX_PASSWORD")
    reader = _complete(settings, settings.influx_reader, "InfluxDB's reader account", "IOT_INFLUX_READER_PASSWORD")
    if reader.user == writer.user:
        return AccountPlan(admin, [(writer, "ALL")])
    return AccountPlan(admin, [(writer, "WRITE"), (reader, "READ")])


def _complete(settings: Settings, account: InfluxAccount, what: str, variable: str) -> Login:
    if not account.user or not account.password:
        raise missing_secret(settings, what, variable)
    return Login(account.user, account.password)


def log_retention_statement(settings: Settings, exists: bool) -> str:
    """CREATE (or ALTER) the retention policy of `device_logs` (IOT_LOG_RETENTION), never the default one."""
    verb = "ALTER" if exists else "CREATE"
    replication = "" if exists else " REPLICATION 1"
    return (
        f"{verb} RETENTION POLICY {_identifier(settings.log_rp)} ON {_identifier(settings.influx_db)}"
        f" DURATION {settings.log_retention}{replication}"
    )


def ensure_log_retention(admin: InfluxHttp, settings: Settings) -> None:
    """The logs' own retention policy, made or given IOT_LOG_RETENTION's duration; nothing when it is empty."""
    if not settings.log_rp:
        return
    [series] = admin.administer(f"SHOW RETENTION POLICIES ON {_identifier(settings.influx_db)}")
    exists = any(row.get("name") == settings.log_rp for one in series for row in one.rows)
    admin.administer(log_retention_statement(settings, exists))


def create_user(account: Login, admin: bool = False) -> str:
    privileges = " WITH ALL PRIVILEGES" if admin else ""
    return f"CREATE USER {_identifier(account.user)} WITH PASSWORD {_string(account.password)}{privileges}"


def _identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
