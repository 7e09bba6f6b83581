"""Closed tables on a Supabase-like PostgreSQL, the exposure warnings, and a least-privilege
runtime role running every runtime command, directly and through PgBouncer.

The database is set up as an auto-generated REST API sets it up: roles `anon` and
`authenticated`, and default privileges that give them ALL on every new table and
sequence in `public`, before `db upgrade` runs. Roles are cluster-wide and shared with
any other test run on the server: they are created when missing and never dropped. What
differs between runs (grants, policies, default privileges) lives in each test's own
database.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from followup_cli import migrate, schemacheck
from followup_cli.cli import app
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.schemacheck import Finding
from followup_cli.security import API_ROLES, RUNTIME_PRIVILEGES
from followup_cli.tables import APP_TABLES, TOOL_TABLES
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.helpers import (
    APP_DDL,
    INSUFFICIENT_PRIVILEGE,
    RUNTIME_ROLE,
    SECURITY_DOC,
    TOKEN_A,
    TOKEN_B,
    Runtime,
    apns_env,
    app_row,
    ensure_role,
    fcm_env,
    fcm_token,
    followups,
    libpq,
    messages,
    row,
    run_sql,
    runtime_url,
)

runner = CliRunner()
pytestmark = pytest.mark.postgres


@pytest.fixture
def supabase_url(empty_pg_url: str) -> str:
    """A fresh database whose default privileges open every new table to the API roles."""
    for role in API_ROLES:
        ensure_role(empty_pg_url, role, login=False)
    run_sql(
        empty_pg_url,
        "GRANT USAGE ON SCHEMA public TO anon, authenticated;"
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated;"
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated;",
    )
    return empty_pg_url


def upgrade(url: str) -> Any:
    result = runner.invoke(app, ["--database-url", url, "db", "upgrade"])
    assert result.exit_code == 0, result.output
    return result


def tables_in_public(url: str) -> set[str]:
    found = run_sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in found}


def assert_closed_to(url: str, role: str, tables: set[str]) -> None:
    """`role` can neither read a row of nor write to any of `tables` (or their sequences)."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        secured = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%s) AND c.relrowsecurity "
            "AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)",
            (list(tables),),
        ).fetchall()
        assert {name for (name,) in secured} == tables, "row level security, no policy"
        sequences = conn.execute(
            "SELECT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid "
            "JOIN pg_class t ON t.oid = d.refobjid WHERE s.relkind = 'S' AND t.relname = ANY(%s)",
            (list(tables),),
        ).fetchall()
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for table in sorted(tables):
            name = sql.Identifier(table)
            first_column = sql.Identifier(_first_column(conn, table))
            for statement in (
                sql.SQL("SELECT * FROM {}").format(name),
                sql.SQL("INSERT INTO {} DEFAULT VALUES").format(name),
                sql.SQL("UPDATE {} SET {} = {}").format(name, first_column, first_column),
                sql.SQL("DELETE FROM {}").format(name),
                sql.SQL("TRUNCATE {}").format(name),
            ):
                with pytest.raises(psycopg.Error) as refused:
                    conn.execute(statement)
                assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE, (role, table, statement)
        for (sequence,) in sequences:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(sql.SQL("SELECT setval({}, 1)").format(sql.Literal(sequence)))
            assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE, (role, sequence)
        conn.execute("RESET ROLE")


def _first_column(conn: psycopg.Connection[Any], table: str) -> str:
    [(column,)] = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum = 1",
        (table,),
    ).fetchall()
    return str(column)


def count_rows(url: str, table: str) -> int:
    [(n,)] = run_sql(url, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return int(n)


def old_sent_row(db: Database) -> str:
    """A follow-up sent 30 days ago: cleanup's work."""
    old = utcnow() - timedelta(days=30)
    return app_row(db, status="sent", scheduled_for=old, sent_at=old, created_at=old)


# -- closed to the API roles ------------------------------------------------------------


def exposure(db: Database) -> list[Finding]:
    return schemacheck.run(db, schemacheck.ACCESS_CHECKS)


def test_api_roles_reach_no_row_of_the_tools_tables_after_real_runs(
    supabase_url: str, apns: FakeAPNs, fcm: FakeFCM
) -> None:
    """After db upgrade, send-due and cleanup --archive, anon and authenticated can neither
    read nor write any table the tool owns, nor the app's tables the upgrade created."""
    result = upgrade(supabase_url)
    assert "every row" not in result.stdout and "error" not in result.stdout

    db = Database(supabase_url)
    for _ in range(3):
        app_row(db)
    app_row(db, device_token=fcm_token(1))  # fills followups_push_credentials
    old_sent_row(db)
    env = {
        **fcm_env(fcm),
        **apns_env(apns),
        "FOLLOWUPS_PUSH": "apns,fcm",
        "FOLLOWUPS_CHECK_MIN_ATTEMPTS": "1",
    }
    sent = runner.invoke(app, ["--database-url", supabase_url, "send-due"], env=env)
    assert sent.exit_code == 0, sent.output
    archived = runner.invoke(
        app, ["--database-url", supabase_url, "cleanup", "--archive", "--older-than", "7d"]
    )
    assert archived.exit_code == 0, archived.output
    db.close()

    tool_tables = tables_in_public(supabase_url) - set(APP_TABLES)
    assert tool_tables == set(TOOL_TABLES)
    for table in tool_tables:  # there is something to hide in each
        assert count_rows(supabase_url, table) > 0, table
    for role in API_ROLES:
        assert_closed_to(supabase_url, role, tool_tables | set(APP_TABLES))


def test_upgrade_closes_an_existing_install(supabase_url: str) -> None:
    """A database upgraded before the closing had its tables open; the upgrade closes them."""
    db = Database(supabase_url)
    migrate.upgrade(db, to="0003")
    run_sql(
        supabase_url,
        "INSERT INTO follow_up_runs (id, started_at) VALUES ('forged', now())",
    )
    with psycopg.connect(libpq(supabase_url), autocommit=True) as conn:
        conn.execute("SET ROLE anon")
        assert conn.execute("SELECT id FROM follow_up_runs").fetchall() == [("forged",)]
    assert len(exposure(db)) > 2  # the tool's tables are reported open

    migrate.upgrade(db)
    tool_tables = tables_in_public(supabase_url) - set(APP_TABLES)
    for role in API_ROLES:
        assert_closed_to(supabase_url, role, tool_tables)
    assert exposure(db) == []
    db.close()


def test_db_check_reports_what_the_api_roles_and_public_can_read(supabase_url: str) -> None:
    """`db check`, read-only, calls it an error when anon, authenticated or PUBLIC can
    read every row of the app's follow-ups or messages (row level security off), and is
    quiet once they are protected."""
    upgrade(supabase_url)
    run_sql(
        supabase_url,
        "ALTER TABLE follow_up_requests DISABLE ROW LEVEL SECURITY;"
        "GRANT SELECT ON follow_up_requests TO anon;"
        "ALTER TABLE follow_up_messages DISABLE ROW LEVEL SECURITY;"
        "GRANT SELECT ON follow_up_messages TO PUBLIC;",
    )
    result = runner.invoke(app, ["--database-url", supabase_url, "db", "check"])
    assert result.exit_code == 1, result.output
    exposed = [line for line in result.stdout.splitlines() if "every row" in line]
    assert exposed == [
        "error: follow_up_requests: anon can SELECT every row (row level security is off), "
        "so anyone with the app's public key can read children's names and ages and "
        'clinicians\' messages. Fix: ALTER TABLE "public"."follow_up_requests" ENABLE ROW '
        "LEVEL SECURITY; then give the app's users policies that admit their own rows only "
        "(docs/security.md)",
        "error: follow_up_messages: anon, authenticated, PUBLIC can SELECT every row (row "
        "level security is off), so anyone with the app's public key can read parents' "
        'conversations. Fix: ALTER TABLE "public"."follow_up_messages" ENABLE ROW LEVEL '
        "SECURITY; then give the app's users policies that admit their own rows only "
        "(docs/security.md)",
    ]
    run_sql(
        supabase_url,
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE follow_up_messages ENABLE ROW LEVEL SECURITY;",
    )
    again = runner.invoke(app, ["--database-url", supabase_url, "db", "check"])
    assert again.exit_code == 0, again.output
    assert "every row" not in again.stdout


def test_sql_output_closes_the_tables_too(supabase_url: str) -> None:
    """The DBA's path: db upgrade --sql, applied by hand, closes the tables the same way,
    the app's tables it creates included; applied to a database whose app tables exist,
    it leaves their grants alone."""
    out = io.StringIO()
    migrate.upgrade_sql(supabase_url, out)
    script = out.getvalue()
    assert "ENABLE ROW LEVEL SECURITY" in script and "%%" not in script
    run_sql(supabase_url, script)
    tool_tables = tables_in_public(supabase_url) - set(APP_TABLES)
    assert tool_tables == set(TOOL_TABLES)
    for role in API_ROLES:
        assert_closed_to(supabase_url, role, tool_tables | set(APP_TABLES))


def test_sql_output_leaves_the_apps_own_tables_alone(empty_pg_url: str) -> None:
    """The app's tables made before the script (grants of the app's own): untouched."""
    for statement in APP_DDL:
        run_sql(empty_pg_url, statement)
    run_sql(empty_pg_url, "GRANT SELECT ON follow_up_messages TO PUBLIC")
    out = io.StringIO()
    migrate.upgrade_sql(empty_pg_url, out)
    run_sql(empty_pg_url, out.getvalue())
    [(secured, public)] = run_sql(
        empty_pg_url,
        "SELECT relrowsecurity, EXISTS (SELECT 1 FROM aclexplode(relacl) a WHERE a.grantee = 0) "
        "FROM pg_class WHERE relname = 'follow_up_messages'",
    )
    assert (secured, public) == (False, True)


def test_no_warning_when_the_app_tables_are_protected(supabase_url: str) -> None:
    """Row level security on the app's tables (or no API roles able to read) is quiet."""
    upgrade(supabase_url)
    run_sql(
        supabase_url,
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "REVOKE ALL ON follow_up_messages FROM anon, authenticated;",
    )
    again = upgrade(supabase_url)
    assert again.stderr == ""


def test_every_table_has_a_decided_runtime_access() -> None:
    """A new table must say what the runtime role may do with it (possibly nothing)."""
    assert set(RUNTIME_PRIVILEGES) == set(APP_TABLES) | set(TOOL_TABLES)


# -- a least-privilege runtime role -----------------------------------------------------


@pytest.fixture(params=["direct", "pgbouncer"])
def runtime(request: pytest.FixtureRequest, supabase_url: str) -> Runtime:
    """The Supabase-like database, upgraded, with the app's tables under row level security
    as a careful app has them, and the runtime role's grants applied."""
    ensure_role(supabase_url, RUNTIME_ROLE, login=True)
    upgrade(supabase_url)
    run_sql(
        supabase_url,
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE follow_up_messages ENABLE ROW LEVEL SECURITY;",
    )
    result = runner.invoke(app, ["--database-url", supabase_url, "db", "grants", RUNTIME_ROLE])
    assert result.exit_code == 0, result.output
    run_sql(supabase_url, result.stdout)
    url = runtime_url(supabase_url, str(request.param))
    try:
        run_sql(url, "SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"cannot connect as {RUNTIME_ROLE} ({request.param}): {exc}; "
            "run .ci/pgbouncer.sh start to reload PgBouncer's user list"
        )
    return Runtime(owner_url=supabase_url, url=url, grants=result.stdout)


def test_runtime_role_runs_every_runtime_command(
    runtime: Runtime, apns: FakeAPNs, fcm: FakeFCM
) -> None:
    """send-due (busy and idle), retry-failed, stats, cleanup --archive and test-send all
    work as the runtime role, and do what they do as the owner; so does FCM's shared
    access token (read, renewal claimed, stored)."""
    owner = Database(runtime.owner_url)
    due = [app_row(owner, device_token=TOKEN_A) for _ in range(2)]
    due.append(app_row(owner, device_token=fcm_token(1)))
    failed = app_row(owner, status="failed", failure_reason="ServiceUnavailable")
    old = old_sent_row(owner)
    spare = app_row(owner, scheduled_for=utcnow() + timedelta(days=1))
    env = {
        **fcm_env(fcm),
        **apns_env(apns),
        "FOLLOWUPS_PUSH": "apns,fcm",
        "FOLLOWUPS_CHECK_MIN_ATTEMPTS": "1",
    }

    busy = followups(runtime.url, "send-due", env=env)
    assert busy.returncode == 0, busy.stderr
    assert "sent 3 (3 pushed" in busy.stdout
    assert len(fcm.accepted()) == 1 and fcm.tokens_issued == 1
    assert count_rows(runtime.owner_url, "followups_push_credentials") == 1
    assert all(row(owner, fid).status == "sent" and messages(owner, fid) for fid in due)
    idle = followups(runtime.url, "send-due", env=env)  # the fast path's own statements
    assert idle.returncode == 0, idle.stderr
    assert "claimed 0" in idle.stdout

    retried = followups(runtime.url, "retry-failed", "--id", failed)
    assert retried.returncode == 0, retried.stderr
    assert row(owner, failed).status == "scheduled"

    stats = followups(runtime.url, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["sent"] == 3

    cleaned = followups(runtime.url, "cleanup", "--archive", "--older-than", "7d")
    assert cleaned.returncode == 0, cleaned.stderr
    assert count_rows(runtime.owner_url, "follow_up_requests_archive") == 1
    assert run_sql(runtime.owner_url, "SELECT id::text FROM follow_up_requests_archive") == [(old,)]

    tested = followups(runtime.url, "test-send", spare, "--to", TOKEN_B, "--mark-sent", env=env)
    assert tested.returncode == 0, tested.stderr
    assert row(owner, spare).status == "sent"
    assert [r.token for r in apns.requests].count(TOKEN_B) == 1
    owner.close()

    assert_least_privilege(runtime.url)


def assert_least_privilege(url: str) -> None:
    """What the runtime role must not do, even though it runs everything above."""
    refused = (
        "SELECT * FROM follow_up_requests_archive",
        "SELECT * FROM followups_schema_version",
        "SELECT * FROM follow_up_messages",
        "UPDATE follow_up_requests SET display_text = 'x'",
        "UPDATE follow_up_requests SET device_token = 'x'",
        "TRUNCATE follow_up_runs",
        "DELETE FROM follow_up_messages",
        "INSERT INTO provider_review_requests (id) VALUES (gen_random_uuid())",
    )
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        for statement in refused:
            with pytest.raises(psycopg.Error) as denied:
                conn.execute(statement)
            assert denied.value.sqlstate == INSUFFICIENT_PRIVILEGE, statement


@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
def test_a_missing_grant_is_one_error_line_and_exit_1(
    supabase_url: str, apns: FakeAPNs, via: str
) -> None:
    """Each runtime command, short of one grant or policy it needs: one `Error:` line
    naming the table, with the hint, exit 1, no traceback."""
    ensure_role(supabase_url, RUNTIME_ROLE, login=True)
    upgrade(supabase_url)
    grants = runner.invoke(app, ["--database-url", supabase_url, "db", "grants", RUNTIME_ROLE])
    url = runtime_url(supabase_url, via)
    owner = Database(supabase_url)
    env = apns_env(apns)
    cases: list[tuple[list[str], str, str]] = [
        (
            ["send-due"],
            "REVOKE UPDATE ON follow_up_requests FROM {role}",
            "permission denied for table follow_up_requests",
        ),
        (
            ["send-due"],
            "DROP POLICY {role} ON follow_up_runs",
            'new row violates row-level security policy for table "follow_up_runs"',
        ),
        (
            ["retry-failed"],
            "REVOKE SELECT ON follow_up_requests FROM {role}",
            "permission denied for table follow_up_requests",
        ),
        (
            ["stats"],
            "REVOKE SELECT ON follow_up_runs FROM {role}",
            "permission denied for table follow_up_runs",
        ),
        (
            ["cleanup", "--archive", "--older-than", "7d"],
            "REVOKE INSERT ON follow_up_requests_archive FROM {role}",
            "permission denied for table follow_up_requests_archive",
        ),
        (
            ["test-send", "{spare}", "--to", TOKEN_B],
            "REVOKE INSERT ON follow_up_attempts FROM {role}",
            "permission denied for table follow_up_attempts",
        ),
    ]
    for args, revoke, expected in cases:
        app_row(owner)  # something due for send-due
        old_sent_row(owner)  # something to archive
        spare = app_row(owner, scheduled_for=utcnow() + timedelta(days=1))
        run_sql(supabase_url, grants.stdout)
        run_sql(supabase_url, revoke.format(role=f'"{RUNTIME_ROLE}"'))
        result = followups(url, *[a.format(spare=spare) for a in args], env=env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        where = make_url(url)
        assert errors == [
            f"Error: database error (PostgreSQL {where.host}:{where.port}/{where.database}): "
            f"{expected} (this database role lacks a grant or policy; "
            "`followups db grants ROLE` prints what a runtime role needs)"
        ], (args, result.stderr)
        assert "Traceback" not in result.stderr
    owner.close()


# -- db grants --------------------------------------------------------------------------


def test_db_grants_quotes_the_role_and_refuses_bad_names(pg_db_url: str, tmp_path: Path) -> None:
    """Odd role names are quoted, never spliced; PUBLIC, empty and SQLite are usage errors."""
    odd = 'runtime"; DROP TABLE follow_up_requests; --'
    result = runner.invoke(app, ["--database-url", pg_db_url, "db", "grants", odd, "--create"])
    assert result.exit_code == 0, result.output
    assert 'CREATE ROLE "runtime""; DROP TABLE follow_up_requests; --" LOGIN' in result.stdout
    assert 'TO "runtime""; DROP TABLE follow_up_requests; --";' in result.stdout
    for bad, message in (
        ("public", "refusing to grant to 'public'"),
        (odd, "does not exist; create it first"),
        ("", "must not be empty"),
        ("x" * 64, "at most 63 bytes"),
    ):
        refused = runner.invoke(app, ["--database-url", pg_db_url, "db", "grants", bad])
        assert refused.exit_code == 2, bad
        [line] = refused.stderr.splitlines()
        assert line.startswith("Error: ") and message in line
    (tmp_path / "x.db").touch()
    sqlite = runner.invoke(
        app, ["--database-url", f"sqlite:///{tmp_path / 'x.db'}", "db", "grants", "r"]
    )
    assert sqlite.exit_code == 2 and "needs a PostgreSQL database" in sqlite.stderr


def test_db_grants_before_db_upgrade_says_so(empty_pg_url: str) -> None:
    """Without the tables there is nothing to grant: exit 1 and what to run first."""
    result = runner.invoke(app, ["--database-url", empty_pg_url, "db", "grants", "r"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: table follow_up_requests not found; run")


def test_db_grants_follows_the_schema_the_tables_are_in(empty_pg_url: str) -> None:
    """Tables in another schema (search_path) get grants there, the sequence too."""
    schema = f"clinic_{uuid.uuid4().hex[:6]}"
    run_sql(empty_pg_url, f'CREATE SCHEMA "{schema}"')
    dbname = make_url(empty_pg_url).database
    run_sql(empty_pg_url, f'ALTER DATABASE "{dbname}" SET search_path = "{schema}"')
    upgrade(empty_pg_url)
    result = runner.invoke(app, ["--database-url", empty_pg_url, "db", "grants", "r", "--create"])
    assert result.exit_code == 0, result.output
    assert f'GRANT USAGE ON SCHEMA "{schema}" TO "r";' in result.stdout
    assert f'ON SEQUENCE "{schema}"."follow_up_attempts_id_seq"' in result.stdout
    assert '"public"' not in result.stdout


def test_security_page_shows_the_grants_db_grants_prints(pg_db_url: str) -> None:
    """docs/security.md gives exactly what `followups db grants followups_runtime` prints."""
    ensure_role(pg_db_url, "followups_runtime", login=True)
    result = runner.invoke(app, ["--database-url", pg_db_url, "db", "grants", "followups_runtime"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() in SECURITY_DOC.read_text()
