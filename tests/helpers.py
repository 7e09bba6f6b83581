"""Helpers for tests: the PostgreSQL server they run on, rows written the way the iOS app
writes them, readers and checks, and the tool run as cron runs it.

Fixtures live in conftest.py; everything a test module shares with another lives here,
so that no test module imports another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, func, insert, select, text, update
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from followup_cli.alerts import LogAlerter, WebhookAlerter
from followup_cli.cli import app
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_attempts, follow_up_messages, follow_up_requests

if TYPE_CHECKING:
    from followup_cli.report import RunReport
    from followup_cli.settings import Settings
    from tests.fakes.apns import FakeAPNs
    from tests.fakes.fcm import FakeFCM
    from tests.fakes.webhook import FakeWebhook

# -- the PostgreSQL server --------------------------------------------------------------

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("FOLLOWUPS_TEST_DATABASE_URL", DEFAULT_PG)
REQUIRE_PG = os.environ.get("FOLLOWUPS_TEST_REQUIRE_POSTGRES") == "1"
# Through PgBouncer (transaction pooling) when set: same server, another port.
PGBOUNCER_URL = os.environ.get("FOLLOWUPS_TEST_PGBOUNCER_URL")

# The tests' runtime role; .ci/pgbouncer.sh lists it so that PgBouncer admits it.
RUNTIME_ROLE = "followups_test_runtime"
INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE of a permission refusal
# docs/security.md: tests hold its quotes of what the tool prints to the real output.
SECURITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def admin_engine() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def _pg_problem() -> str | None:
    try:
        engine = admin_engine()
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def require_pg() -> None:
    """Skip without a server, or fail when .ci/run said PostgreSQL is required."""
    problem = _pg_problem()
    if problem is not None:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable at {PG_URL}: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({problem})")


def require_pgbouncer() -> str:
    """PgBouncer's URL; skip without one, or fail when PostgreSQL is required."""
    if not PGBOUNCER_URL:
        reason = "FOLLOWUPS_TEST_PGBOUNCER_URL is not set (start one: .ci/pgbouncer.sh start)"
        if REQUIRE_PG:
            pytest.fail(f"{reason}; FOLLOWUPS_TEST_REQUIRE_POSTGRES=1 requires it")
        pytest.skip(reason)
    return PGBOUNCER_URL


def new_pg_database(template: str | None = None) -> str:
    """Create an empty (or template-cloned) database; return its name."""
    name = f"followups_t_{uuid.uuid4().hex[:12]}"
    admin = admin_engine()
    with admin.connect() as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    admin.dispose()
    return name


def drop_pg_database(name: str) -> None:
    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pg_url(name: str, base: str = PG_URL) -> str:
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg and libpq take it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def run_sql(url: str, statement: str | sql.Composable, params: Any = None) -> list[Any]:
    """One statement (or a whole script without parameters), autocommit, as the URL's user;
    the rows it returned."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def ensure_role(admin_url: str, role: str, login: bool) -> None:
    """Create a cluster-wide role unless it exists; concurrent runs may race to it."""
    attributes = "LOGIN" if login else "NOLOGIN"
    run_sql(
        admin_url,
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} " + attributes + "; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ).format(sql.Identifier(role)),
    )
    [(can_login, bypass, superuser)] = run_sql(
        admin_url,
        "SELECT rolcanlogin, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = %s",
        (role,),
    )
    assert not bypass and not superuser, f"role {role} must not bypass row level security"
    assert not login or can_login, f"role {role} exists without LOGIN"


@dataclass
class Runtime:
    """A database set up for the least-privilege runtime role."""

    owner_url: str  # the role that ran db upgrade and owns the tables
    url: str  # the runtime role, directly or through PgBouncer
    grants: str  # the output of `followups db grants`


def runtime_url(owner_url: str, via: str) -> str:
    """The owner's database as RUNTIME_ROLE, "direct" or through "pgbouncer"."""
    base = make_url(owner_url)
    if via == "pgbouncer":
        bouncer = make_url(require_pgbouncer())
        base = base.set(host=bouncer.host, port=bouncer.port)
    return base.set(username=RUNTIME_ROLE, password=None).render_as_string(hide_password=False)


# -- device tokens and the fakes --------------------------------------------------------

TOKEN_A = "a" * 64
TOKEN_B = "b" * 64


def apns_token(n: int) -> str:
    """A distinct, well-formed APNs device token for each n."""
    return f"{n:064x}"


def fcm_token(n: int) -> str:
    """An FCM registration token's shape: instance id, colon, APA91b and URL-safe base64."""
    return f"c{n:021d}:APA91b{n:08d}" + "Xy_9-Ab" * 20


def apns_env(apns: FakeAPNs) -> dict[str, str]:
    """The environment a subprocess needs to push to the fake APNs."""
    return {
        "FOLLOWUPS_PUSH": "apns",
        "FOLLOWUPS_APNS_KEY_FILE": str(apns.key_file),
        "FOLLOWUPS_APNS_KEY_ID": apns.key_id,
        "FOLLOWUPS_APNS_TEAM_ID": apns.team_id,
        "FOLLOWUPS_APNS_TOPIC": apns.topic,
        "FOLLOWUPS_APNS_URL": apns.url,
        "FOLLOWUPS_APNS_CA_FILE": str(apns.ca_file),
        "FOLLOWUPS_RETRY_BASE_SECONDS": "0",
    }


def fcm_env(fcm: FakeFCM) -> dict[str, str]:
    """The environment a subprocess needs to push to the fake FCM."""
    return {
        "FOLLOWUPS_PUSH": "fcm",
        "FOLLOWUPS_FCM_CREDENTIALS_FILE": str(fcm.credentials_file),
        "FOLLOWUPS_FCM_URL": fcm.url,
        "FOLLOWUPS_FCM_CA_FILE": str(fcm.ca_file),
        "FOLLOWUPS_RETRY_BASE_SECONDS": "0",
    }


# -- the tool ---------------------------------------------------------------------------

runner = CliRunner()


def cli(db_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """One command in this process, through the Typer app."""
    return runner.invoke(app, ["--database-url", db_url, *args], env=env)


def followups(
    url: str | None,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The real command, as cron runs it: a process, settings (the URL too, unless None:
    then FOLLOWUPS_DATABASE_URL is unset) from the environment, run in `cwd`."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUPS_") or "_TEST_" in k
    }
    environment.update(env or {})
    if url is not None:
        environment["FOLLOWUPS_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "followup_cli", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def due_again(db: Database) -> None:
    """Moves every retry time into the past: what the passage of the pause does to them."""
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.retry_at.is_not(None))
            .values(retry_at=utcnow() - timedelta(seconds=1))
        )


def failed_row(db: Database, reason: str, ago: timedelta = timedelta(hours=1), **kw: Any) -> str:
    """A follow-up that send-due failed `ago` ago with `reason`, its token kept."""
    token = kw.pop("device_token", TOKEN_A)
    fid = app_row(db, device_token=token, **kw)
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.id == fid)
            .values(
                status="failed",
                failure_reason=reason,
                failed_at=utcnow() - ago,
                failed_device_token=token,
            )
        )
    return fid


def deliver(db: Database, settings: Settings, webhook: FakeWebhook | None = None) -> RunReport:
    """One send-due run in this process, as the CLI runs it, with alerts to `webhook`."""
    from followup_cli.delivery import send_due
    from followup_cli.push.factory import make_pusher

    pusher = make_pusher(settings, db)
    alerter = WebhookAlerter(webhook.url) if webhook else LogAlerter()
    try:
        return send_due(db, pusher, settings, alerter)
    finally:
        pusher.close()


def start_send_due(url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`followups send-due` as its own process (a cron run), with only `env`'s settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUPS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "followup_cli", "--database-url", url, "send-due"],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_apns_run(url: str, apns: FakeAPNs, **env: str) -> subprocess.Popen[str]:
    """`followups send-due` as cron starts it, pushing to the fake APNs."""
    return start_send_due(url, {**apns_env(apns), **env})


def finish_run(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str, str]:
    """Wait for a run started above: (exit code, stdout, stderr); killed if it hangs."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"send-due did not finish within {timeout}s: {err}") from None
    return proc.returncode, out, err


# -- rows as the app writes them --------------------------------------------------------

APP_DDL = [
    # The app's own tables as a production database (e.g. Supabase) already has them.
    """CREATE TABLE follow_up_requests (
        id uuid PRIMARY KEY, conversation_id uuid NOT NULL, user_id text NOT NULL,
        scheduled_for timestamptz NOT NULL, urgency text NOT NULL DEFAULT 'routine',
        display_text text NOT NULL, original_message text, status text NOT NULL,
        child_name text, child_age text, device_token text,
        follow_up_days integer, follow_up_hours integer, follow_up_minutes integer,
        created_at timestamptz DEFAULT now(), sent_at timestamptz)""",
    """CREATE TABLE provider_review_requests (
        id uuid PRIMARY KEY, conversation_id uuid, schedule_followup boolean DEFAULT false,
        reviewer text)""",
    """CREATE TABLE follow_up_messages (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(), conversation_id uuid, user_id text,
        message_content text, is_from_user boolean, follow_up_id uuid,
        timestamp timestamptz DEFAULT now())""",
    """INSERT INTO follow_up_requests (id, conversation_id, user_id, scheduled_for,
        display_text, status) VALUES ('11111111-1111-1111-1111-111111111111',
        '22222222-2222-2222-2222-222222222222', 'parent', now(), 'kept', 'scheduled')""",
]


def execute(db: Database, *statements: str) -> None:
    """The app's DBA at work: statements the tool did not write, in one transaction."""
    with db.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def app_row(
    db: Database,
    *,
    scheduled_for: datetime | None = None,
    status: str = "scheduled",
    display_text: str | None = "How is Maya's fever today?",
    device_token: str | None = TOKEN_A,
    conversation_id: str | None = None,
    user_id: str | None = "parent-1",
    urgency: str | None = "routine",
    child_name: str | None = "Maya",
    **extra: Any,
) -> str:
    """Insert a follow-up with only the app's columns (plus `extra`); return its id."""
    follow_up_id = str(uuid.uuid4())
    values = {
        "id": follow_up_id,
        "conversation_id": conversation_id or str(uuid.uuid4()),
        "user_id": user_id,
        "scheduled_for": scheduled_for or utcnow() - timedelta(minutes=1),
        "urgency": urgency,
        "display_text": display_text,
        "original_message": display_text,
        "status": status,
        "child_name": child_name,
        "child_age": "4",
        "device_token": device_token,
        "follow_up_days": 0,
        "follow_up_hours": 1,
        "follow_up_minutes": 0,
        **extra,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(follow_up_requests).values(**values))
    return follow_up_id


def due_rows(db: Database, n: int, **per_row: dict[int, Any]) -> list[str]:
    """n due follow-ups, row i with device token apns_token(i); per_row[column][i]
    overrides a column of row i."""
    start = utcnow() - timedelta(hours=1)
    ids = []
    for i in range(n):
        extra = {column: values[i] for column, values in per_row.items() if i in values}
        extra.setdefault("display_text", f"How is Maya today? ({i})")
        ids.append(
            app_row(
                db, scheduled_for=start + timedelta(seconds=i), device_token=apns_token(i), **extra
            )
        )
    return ids


@dataclass(frozen=True)
class Seeded:
    """A follow-up `seed` inserted."""

    id: str
    conversation_id: str
    scheduled_for: datetime
    device_token: str | None


def seed(
    engine: Engine, rows: int, conversations: int, *, tokenless_every: int = 0
) -> list[Seeded]:
    """Insert `rows` due follow-ups with only the app's columns, in one multi-row INSERT.

    Row i belongs to conversation i % conversations and is due i seconds after the first
    (so each conversation has several, at distinct times). Every `tokenless_every`-th row
    has no device token (0: all have one); the tokens all differ (apns_token(i)).
    """
    start = utcnow() - timedelta(hours=1)
    convs = [str(uuid.uuid4()) for _ in range(conversations)]
    seeded: list[Seeded] = []
    values: list[dict[str, Any]] = []
    for i in range(rows):
        no_token = tokenless_every > 0 and i % tokenless_every == tokenless_every - 1
        token = None if no_token else apns_token(i)
        item = Seeded(
            str(uuid.uuid4()), convs[i % conversations], start + timedelta(seconds=i), token
        )
        seeded.append(item)
        values.append(
            {
                "id": item.id,
                "conversation_id": item.conversation_id,
                "user_id": f"parent-{i % conversations}",
                "scheduled_for": item.scheduled_for,
                "urgency": "urgent" if i % 3 == 0 else "routine",
                "display_text": f"How is your child feeling today? ({i})",
                "original_message": f"How is your child feeling today? ({i})",
                "status": "scheduled",
                "child_name": "Maya",
                "child_age": "4",
                "device_token": token,
                "follow_up_days": 0,
                "follow_up_hours": 1,
                "follow_up_minutes": 0,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(follow_up_requests).values(values))
    return seeded


# -- readers and checks -----------------------------------------------------------------


def row(db: Database, follow_up_id: str) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(
            select(follow_up_requests).where(follow_up_requests.c.id == follow_up_id)
        ).one()


def messages(db: Database, follow_up_id: str | None = None) -> list[Any]:
    query = select(follow_up_messages).order_by(follow_up_messages.c.timestamp)
    if follow_up_id is not None:
        query = query.where(follow_up_messages.c.follow_up_id == follow_up_id)
    with db.engine.connect() as conn:
        return list(conn.execute(query))


def attempts(db: Database, follow_up_id: str) -> list[tuple[int, str, str | None]]:
    """(attempt number, outcome, reason) of every recorded attempt, in order."""
    a = follow_up_attempts.c
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(a.attempt, a.outcome, a.reason)
            .where(a.follow_up_id == follow_up_id)
            .order_by(a.attempt)
        ).all()
    return [(r.attempt, r.outcome, r.reason) for r in rows]


def open_engine(url: str) -> Engine:
    """The test's own connection, under an application_name that the termination queries
    and the dead-backend checks of the crash tests do not match."""
    if url.startswith("postgresql"):
        return create_engine(url, connect_args={"application_name": "followups-test"})
    return create_engine(url)


def expire_leases(engine: Engine) -> int:
    """Move every held lease's end into the past, which is what the passage of time does to
    a dead run's leases (the claim only compares `claim_expires_at <= now`); return how
    many."""
    r = follow_up_requests.c
    with engine.begin() as conn:
        return conn.execute(
            update(follow_up_requests)
            .where(r.claimed_by.is_not(None))
            .values(claim_expires_at=utcnow() - timedelta(seconds=1))
        ).rowcount


def check_each_delivered_once(engine: Engine, seeded: list[Seeded]) -> None:
    """Every row sent, none still leased, exactly one in-app message each."""
    r, m = follow_up_requests.c, follow_up_messages.c
    with engine.connect() as conn:
        statuses = Counter(conn.scalars(select(r.status)))
        still_claimed = conn.scalar(select(func.count()).where(r.claimed_by.is_not(None)))
        per_follow_up = Counter(conn.scalars(select(m.follow_up_id)))
    assert statuses == {"sent": len(seeded)}
    assert still_claimed == 0
    assert set(per_follow_up) == {s.id for s in seeded}
    assert set(per_follow_up.values()) == {1}


def check_in_order(engine: Engine, seeded: list[Seeded]) -> None:
    """Per conversation, message timestamps strictly increase in scheduled order."""
    m = follow_up_messages.c
    with engine.connect() as conn:
        stamps = dict(conn.execute(select(m.follow_up_id, m.timestamp)).all())
    by_conversation: dict[str, list[Seeded]] = {}
    for item in sorted(seeded, key=lambda x: x.scheduled_for):
        by_conversation.setdefault(item.conversation_id, []).append(item)
    for conversation, items in by_conversation.items():
        times = [stamps[item.id] for item in items]
        assert all(a < b for a, b in pairwise(times)), conversation
