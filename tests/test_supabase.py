"""The tool on a database set up as Supabase sets one up (tests/supabase): `postgres` is
not a superuser, the API roles get ALL on every new table in `public` by default, and
the app's rows arrive through PostgREST (`authenticator`, SET LOCAL ROLE, the JWT's
claims in request.jwt.claims).

`db upgrade` runs as `postgres`, the runtime commands as a least-privilege role made as
docs/security.md says. Each test gets its own database in one cluster per session.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from followup_cli.cli import app
from followup_cli.clock import utcnow
from tests import supabase
from tests.fakes.apns import FakeAPNs
from tests.helpers import INSUFFICIENT_PRIVILEGE, REQUIRE_PG, SECURITY_DOC, apns_env, apns_token
from tests.supabase import OWNER, RUNTIME, SUPERUSER, Supabase

pytestmark = pytest.mark.postgres
runner = CliRunner()
CLINICIAN = str(uuid.uuid4())
CLINICIAN_CLAIMS = {"sub": CLINICIAN, "app_metadata": {"role": "clinician"}}
PARENT_CLAIMS = {"sub": str(uuid.uuid4()), "app_metadata": {}}

# The app's tables as the app makes them on Supabase (the SQL editor runs as postgres,
# so the default privileges give the API roles ALL on each), with the RLS owner column.
APP_DDL = """
CREATE TABLE follow_up_requests (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid,
    user_id text,
    scheduled_for timestamptz,
    urgency text DEFAULT 'routine',
    display_text text,
    original_message text,
    status text NOT NULL DEFAULT 'scheduled',
    child_name text,
    child_age text,
    device_token text,
    follow_up_days integer,
    follow_up_hours integer,
    follow_up_minutes integer,
    created_at timestamptz DEFAULT now(),
    sent_at timestamptz,
    provider_id uuid DEFAULT auth.uid()
);
CREATE TABLE follow_up_messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid,
    user_id text,
    message_content text,
    is_from_user boolean NOT NULL DEFAULT false,
    follow_up_id uuid,
    "timestamp" timestamptz DEFAULT now()
);
CREATE TABLE provider_review_requests (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid,
    schedule_followup boolean NOT NULL DEFAULT false,
    created_at timestamptz DEFAULT now()
);
"""


@pytest.fixture(scope="session")
def supabase_cluster() -> Iterator[Supabase]:
    problem = supabase.unavailable()
    if problem is not None:
        if REQUIRE_PG:
            pytest.fail(f"a Supabase-like cluster is required but cannot be made: {problem}")
        pytest.skip(f"cannot make a private PostgreSQL cluster: {problem}")
    cluster = supabase.cluster()
    yield cluster
    supabase.remove()


class Project:
    """One Supabase project's database, and the tool's commands run against it."""

    def __init__(self, cluster: Supabase, name: str) -> None:
        self.cluster = cluster
        self.name = name

    def url(self, user: str = OWNER) -> str:
        return self.cluster.url(self.name, user)

    def execute(
        self, statement: str | sql.Composable, params: Any = None, *, user: str = OWNER
    ) -> list[Any]:
        return self.cluster.execute(self.name, statement, params, user=user)

    def followups(self, *args: str, user: str = OWNER, env: dict[str, str] | None = None) -> Any:
        return runner.invoke(app, ["--database-url", self.url(user), *args], env=env)

    def api(self, role: str, claims: dict[str, Any] | None = None) -> Any:
        return self.cluster.as_api(self.name, role, claims)

    def insert_as(self, role: str, claims: dict[str, Any] | None, **values: Any) -> str:
        """A follow-up written through the REST API as `role` (PostgREST's transaction)."""
        row = {
            "id": str(uuid.uuid4()),
            "conversation_id": str(uuid.uuid4()),
            "user_id": "parent-1",
            "scheduled_for": utcnow() - timedelta(minutes=1),
            "display_text": "How is Maya's fever today?",
            "child_name": "Maya",
            "device_token": apns_token(1),
            **values,
        }
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in row)
        marks = sql.SQL(", ").join(sql.Placeholder() for _ in row)
        with self.api(role, claims) as conn:
            [(new_id,)] = conn.execute(
                sql.SQL("INSERT INTO follow_up_requests ({}) VALUES ({}) RETURNING id").format(
                    columns, marks
                ),
                list(row.values()),
            ).fetchall()
        return str(new_id)

    def grant_runtime(self) -> str:
        """`db grants followups_runtime`, applied by the owner as the docs say."""
        result = self.followups("db", "grants", RUNTIME)
        assert result.exit_code == 0, result.output
        self.execute(result.stdout)
        return str(result.stdout)


@pytest.fixture
def project(supabase_cluster: Supabase) -> Iterator[Project]:
    name = supabase_cluster.new_database()
    yield Project(supabase_cluster, name)
    supabase_cluster.drop_database(name)


def app_policies() -> str:
    """The policies docs/security.md gives the app team, as written there."""
    text = SECURITY_DOC.read_text()
    found = re.search(r"```sql\n(-- The app's own policies.*?)```", text, re.S)
    assert found, "docs/security.md has the app's policies"
    return found.group(1)


def refused(call: Any) -> None:
    with pytest.raises(psycopg.Error) as denied:
        call()
    assert denied.value.sqlstate == INSUFFICIENT_PRIVILEGE


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# -- no push that the app's public key can forge -----------------------------------------


def test_tables_db_upgrade_creates_come_closed_and_the_public_key_forges_nothing(
    project: Project, apns: FakeAPNs
) -> None:
    """A new Supabase database: `db upgrade` as the non-superuser postgres creates the
    app's tables closed to anon and authenticated. A forged follow-up through the app's
    public key is refused, and send-due pushes only what a clinician scheduled once the
    app's documented policies are in place."""
    [(superuser,)] = project.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert superuser is False
    upgraded = project.followups("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert "error:" not in upgraded.output and "every row" not in upgraded.output

    for role in ("anon", "authenticated"):
        refused(lambda role=role: project.insert_as(role, None, provider_name="Evil"))
        with project.api(role) as conn:
            refused(lambda conn=conn: conn.execute("SELECT * FROM follow_up_requests"))
    secured = project.execute(
        "SELECT relname FROM pg_class WHERE relname IN "
        "('follow_up_requests', 'follow_up_messages', 'provider_review_requests') "
        "AND relrowsecurity ORDER BY 1"
    )
    assert [name for (name,) in secured] == [
        "follow_up_messages",
        "follow_up_requests",
        "provider_review_requests",
    ]

    project.execute(app_policies())
    checked = project.followups("db", "check")
    assert checked.exit_code == 0, checked.output
    mine = project.insert_as("authenticated", CLINICIAN_CLAIMS, device_token=apns_token(7))
    refused(lambda: project.insert_as("anon", None, provider_name="Evil"))
    with pytest.raises(psycopg.Error) as parent:  # signed in, but not a clinician
        project.insert_as("authenticated", PARENT_CLAIMS, provider_name="Evil")
    assert parent.value.sqlstate == "42501"  # new row violates row-level security policy

    project.grant_runtime()
    sent = project.followups("send-due", user=RUNTIME, env=apns_env(apns))
    assert sent.exit_code == 0, sent.output
    assert [r.token for r in apns.requests] == [apns_token(7)]
    assert project.execute("SELECT id::text, status FROM follow_up_requests") == [(mine, "sent")]


def test_tables_the_app_made_that_the_public_key_can_write_are_an_error(
    project: Project, apns: FakeAPNs
) -> None:
    """The app made its tables in the SQL editor (default privileges: anon ALL, row level
    security off). Through the public key anyone inserts a follow-up of their own, and
    send-due would push it: `db check` and `db upgrade` call it an error, and the upgrade
    changes nothing until it is fixed."""
    project.execute(APP_DDL)
    values = {"display_text": "Your results: tap here", "device_token": apns_token(9)}
    forged = project.insert_as("anon", None, **values)
    assert project.execute("SELECT display_text FROM follow_up_requests") == [
        ("Your results: tap here",)
    ]

    checked = project.followups("db", "check")
    assert checked.exit_code == 1, checked.output
    found = errors(checked.stdout)
    assert any(
        line.startswith(
            "error: follow_up_requests: anon, authenticated can INSERT, UPDATE, DELETE every "
            "row (row level security is off), so anyone with the app's public key can make "
            "this tool push any text to any phone"
        )
        for line in found
    ), found
    assert any(line.startswith("error: follow_up_messages: anon, authenticated") for line in found)
    forgery = next(line for line in found if "push any text" in line)
    assert forgery in SECURITY_DOC.read_text()  # the page shows it as printed
    upgraded = project.followups("db", "upgrade")
    assert upgraded.exit_code == 1
    assert "nothing was changed" in upgraded.stderr
    assert project.execute("SELECT to_regclass('follow_up_runs')") == [(None,)]

    project.execute("DELETE FROM follow_up_requests WHERE id = %s", (forged,))
    project.execute(
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE follow_up_messages ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE provider_review_requests ENABLE ROW LEVEL SECURITY;"
        "REVOKE ALL ON follow_up_requests, follow_up_messages, provider_review_requests "
        "FROM anon, authenticated;"
    )
    project.execute(app_policies())
    assert project.followups("db", "check").exit_code == 0
    upgraded = project.followups("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    refused(lambda: project.insert_as("anon", None, provider_name="Evil"))


@pytest.mark.parametrize(
    "policy",
    [
        'CREATE POLICY "Enable insert for all users" ON follow_up_requests '
        "FOR INSERT TO public WITH CHECK (true)",
        'CREATE POLICY "anon writes" ON follow_up_requests FOR ALL TO anon '
        "USING (true) WITH CHECK (true)",
        'CREATE POLICY "anyone updates" ON follow_up_requests FOR UPDATE TO authenticated '
        "USING (true)",
    ],
)
def test_a_policy_that_admits_every_write_is_an_error(project: Project, policy: str) -> None:
    """Row level security on, but a policy that admits every row to an API role: the
    same forgery, the same error, with the policy to drop."""
    project.followups("db", "upgrade")
    project.execute("GRANT ALL ON follow_up_requests TO anon, authenticated")
    project.execute(policy)
    name = policy.split('"')[1]
    checked = project.followups("db", "check")
    assert checked.exit_code == 1, checked.output
    [line] = [e for e in errors(checked.stdout) if "push any text to any phone" in e]
    assert line.startswith("error: follow_up_requests: ")
    assert f"(policy '{name}' admits every row)" in line
    assert f'DROP POLICY "{name}" ON "public"."follow_up_requests";' in line


@pytest.mark.parametrize(
    ("table", "level"),
    [
        ("follow_up_requests", "error"),
        ("follow_up_messages", "error"),
        ("provider_review_requests", "warning"),
    ],
)
def test_the_template_read_policy_is_reported_on_every_app_table(
    project: Project, table: str, level: str
) -> None:
    """Supabase's template policy "Enable read access for all users" (SELECT, TO public,
    USING (true)) lets the app's public key read every row. `db check` names it on each
    of the app's tables: an error where the rows are health information."""
    project.followups("db", "upgrade")
    project.execute(
        sql.SQL(
            "INSERT INTO follow_up_requests (id, child_name) VALUES (gen_random_uuid(), 'Maya');"
            "GRANT SELECT ON {table} TO anon, authenticated;"
            'CREATE POLICY "Enable read access for all users" ON {table} '
            "FOR SELECT TO public USING (true);"
        ).format(table=sql.Identifier(table))
    )
    if table == "follow_up_requests":
        with project.api("anon") as conn:  # the world as it is: every child's name
            assert conn.execute("SELECT child_name FROM follow_up_requests").fetchall() == [
                ("Maya",)
            ]
    checked = project.followups("db", "check")
    assert checked.exit_code == (1 if level == "error" else 0), checked.output
    [line] = [x for x in checked.stdout.splitlines() if x.startswith(f"{level}: {table}:")]
    assert "anon, authenticated can SELECT every row" in line
    assert "(policy 'Enable read access for all users' admits every row)" in line
    if table == "follow_up_requests":
        assert line in SECURITY_DOC.read_text()  # the page shows it as printed


# -- what the runtime role sees ---------------------------------------------------------


def test_a_missing_runtime_policy_is_seen_by_db_check_and_stats_check_as_that_role(
    project: Project, apns: FakeAPNs
) -> None:
    """Without its policy on follow_up_requests, the runtime role sees nothing due:
    send-due says "claimed 0" and exits 0. Run as that role, `db check` and
    `stats --check` both fail and name the table."""
    project.followups("db", "upgrade")
    project.execute(app_policies())
    project.grant_runtime()
    project.execute(f'DROP POLICY "{RUNTIME}" ON follow_up_requests')
    project.insert_as("authenticated", CLINICIAN_CLAIMS)

    sent = project.followups("send-due", user=RUNTIME, env=apns_env(apns))
    assert sent.exit_code == 0 and "claimed 0" in sent.stdout  # what it cannot see

    checked = project.followups("db", "check", user=RUNTIME)
    assert checked.exit_code == 1, checked.output
    assert any(
        line.startswith(
            f"error: follow_up_requests: row level security is on and no policy lets {RUNTIME} "
            "SELECT, UPDATE, DELETE"
        )
        for line in checked.stdout.splitlines()
    ), checked.stdout
    stats = project.followups("stats", "--check", user=RUNTIME)
    assert stats.exit_code == 1, stats.output
    assert (
        "row level security gives this role no policy on follow_up_requests "
        "(SELECT, UPDATE, DELETE)" in stats.stdout
    )
    assert "hidden by row level security" in stats.stdout

    project.grant_runtime()
    assert project.followups("db", "check", user=RUNTIME).exit_code == 0
    assert project.followups("send-due", user=RUNTIME, env=apns_env(apns)).exit_code == 0
    assert len(apns.requests) == 1


# -- db grants --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "said"),
    [
        ("anon", "the app's REST API acts as it"),
        ("authenticated", "the app's REST API acts as it"),
        ("service_role", "the app's REST API acts as it"),
        ("authenticator", "the app's REST API acts as it"),
        ("PUBLIC", "it is not a runtime role"),
        (OWNER, "bypasses row level security"),
        ("supabase_read_only_user", "bypasses row level security"),
        (SUPERUSER, "it is a superuser"),
        ("shared_with_anon", "anon, authenticator are members of it"),
        ("nobody_yet", "does not exist; create it first"),
    ],
)
def test_db_grants_refuses_roles_that_must_not_run_the_tool(
    project: Project, role: str, said: str
) -> None:
    """One line, exit 2, nothing on stdout: a role the app's REST API acts as (or that
    one of them belongs to), PUBLIC, a superuser, a BYPASSRLS role, a missing role."""
    project.followups("db", "upgrade")
    project.execute(
        "DO $$ BEGIN CREATE ROLE shared_with_anon NOLOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        "GRANT shared_with_anon TO anon"
    )
    result = project.followups("db", "grants", role)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and said in line, line
    assert result.stdout == ""


def test_db_grants_create_makes_a_role_that_runs_send_due(project: Project, apns: FakeAPNs) -> None:
    """--create puts the CREATE ROLE first; applied by postgres (CREATEROLE), the new role
    runs send-due."""
    project.followups("db", "upgrade")
    project.execute(app_policies())
    role = f"runtime_{uuid.uuid4().hex[:6]}"
    result = project.followups("db", "grants", role, "--create")
    assert result.exit_code == 0, result.output
    assert f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS;' in result.stdout
    project.execute(result.stdout)
    project.insert_as("authenticated", CLINICIAN_CLAIMS)
    sent = project.followups("send-due", user=role, env=apns_env(apns))
    assert sent.exit_code == 0 and "sent 1" in sent.stdout, sent.output
    project.execute(
        sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)), user=SUPERUSER
    )


# -- who reads past row level security --------------------------------------------------


def test_supabase_read_only_user_reads_the_tools_tables_and_db_check_names_it(
    project: Project, apns: FakeAPNs
) -> None:
    """supabase_read_only_user (BYPASSRLS, pg_read_all_data) reads the archive and the
    other tool tables, closed as they are: `db check` says so, with each table."""
    project.followups("db", "upgrade")
    project.execute(app_policies())
    project.grant_runtime()
    old = utcnow() - timedelta(days=120)
    project.execute(
        "INSERT INTO follow_up_requests (id, status, child_name, sent_at, created_at) "
        "VALUES (gen_random_uuid(), 'sent', 'Maya', %s, %s)",
        (old, old),
    )
    archived = project.followups("cleanup", "--archive", user=RUNTIME)
    assert archived.exit_code == 0, archived.output
    read = project.execute(
        "SELECT child_name FROM follow_up_requests_archive", user="supabase_read_only_user"
    )
    assert read == [("Maya",)]
    checked = project.followups("db", "check")
    [line] = [x for x in checked.stdout.splitlines() if "supabase_read_only_user" in x]
    assert line.startswith(
        "warning: supabase_read_only_user (BYPASSRLS, pg_read_all_data) reads follow_up_attempts, "
        "follow_up_runs, follow_up_requests_archive"
    )


# -- ownership --------------------------------------------------------------------------


def test_app_tables_owned_by_supabase_admin_are_named_before_db_upgrade_fails(
    project: Project,
) -> None:
    """Older projects' tables belong to supabase_admin: `db check` names the owner and the
    fix, and `db upgrade` stops before "must be owner of table"; once handed over, the
    upgrade runs."""
    project.execute(APP_DDL, user=SUPERUSER)
    project.execute(
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE follow_up_messages ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE provider_review_requests ENABLE ROW LEVEL SECURITY;",
        user=SUPERUSER,
    )
    checked = project.followups("db", "check")
    assert checked.exit_code == 1, checked.output
    owned = [e for e in errors(checked.stdout) if "is owned by supabase_admin" in e]
    assert [e.split(":")[1].strip().split()[0] for e in owned] == [
        "follow_up_requests",
        "follow_up_messages",
        "provider_review_requests",
    ]
    assert 'ALTER TABLE "public"."follow_up_requests" OWNER TO "postgres";' in owned[0]
    upgraded = project.followups("db", "upgrade")
    assert upgraded.exit_code == 1
    assert "database error" not in upgraded.stderr
    assert "nothing was changed" in upgraded.stderr
    assert project.execute("SELECT to_regclass('follow_up_runs')") == [(None,)]

    project.execute(
        "ALTER TABLE follow_up_requests OWNER TO postgres;"
        "ALTER TABLE follow_up_messages OWNER TO postgres;"
        "ALTER TABLE provider_review_requests OWNER TO postgres;",
        user=SUPERUSER,
    )
    assert project.followups("db", "upgrade").exit_code == 0


# -- who can do what, measured ----------------------------------------------------------

# The roles of a Supabase project, each as it reaches the database: the API roles through
# PostgREST (authenticated as a clinician), the login roles directly.
MEASURED_ROLES = (
    "anon",
    "authenticated",
    "service_role",
    "authenticator",
    "supabase_read_only_user",
    RUNTIME,
    OWNER,
    SUPERUSER,
)
MEASURED_TABLES = (
    "follow_up_requests",
    "follow_up_messages",
    "provider_review_requests",
    "follow_up_attempts",
    "follow_up_runs",
    "follow_up_requests_archive",
    "followups_alert_state",
    "followups_push_credentials",
    "followups_schema_version",
)


def measure(project: Project, role: str, table: str) -> str:
    """What `role` does to `table`'s rows, tried in a transaction rolled back: for
    SELECT, UPDATE and DELETE, "all" rows, "own" (some), "none" (row level security
    hides them) or "-" (refused); for INSERT "yes", "own" (row level security admits
    rows for the role's user only) or "-". As "R/I/U/D"."""
    [(total,)] = project.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)), user=SUPERUSER
    )
    assert total >= 2, table  # something to see, and someone else's
    [(copy,)] = project.execute(
        sql.SQL("SELECT to_jsonb(t) FROM {} t LIMIT 1").format(sql.Identifier(table)),
        user=SUPERUSER,
    )
    keys = project.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND (i.indisprimary OR i.indisunique)",
        (table,),
        user=SUPERUSER,
    )
    for name, type_ in keys:
        copy[name] = str(uuid.uuid4()) if type_ in ("uuid", "text") else uuid.uuid4().int % 10**9
    if table == "follow_up_requests" and role == "authenticated":
        copy["provider_id"] = CLINICIAN  # the clinician's own row
    [(first,)] = project.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped ORDER BY has_column_privilege(%s, attrelid, attnum, 'UPDATE') "
        "DESC, attnum LIMIT 1",
        (table, role),
        user=SUPERUSER,
    )
    name = sql.Identifier(table)
    statements = {
        "R": sql.SQL("SELECT count(*) FROM {}").format(name),
        "I": sql.SQL(
            "INSERT INTO {0} SELECT (jsonb_populate_record(NULL::{0}, %s)).* RETURNING 1"
        ).format(name),
        "U": sql.SQL("UPDATE {0} SET {1} = {1} RETURNING 1").format(name, sql.Identifier(first)),
        "D": sql.SQL("DELETE FROM {} RETURNING 1").format(name),
    }
    found = []
    with ExitStackConnection(project, role) as conn:
        for code, statement in statements.items():
            try:
                with conn.transaction(force_rollback=True):
                    if code == "I":
                        rows = conn.execute(statement, (json.dumps(copy),)).fetchall()
                    else:
                        rows = conn.execute(statement).fetchall()
            except psycopg.Error as exc:
                if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
                    raise
                found.append("own" if code == "I" and "row-level security" in str(exc) else "-")
                continue
            n = rows[0][0] if code == "R" else len(rows)
            if code == "I":
                found.append("yes")
            else:
                found.append("all" if n == total else "own" if n else "none")
    return "/".join(found)


class ExitStackConnection:
    """A connection as `role` reaches the database: the API roles through PostgREST's
    authenticator (authenticated with a clinician's claims), the others logged in."""

    def __init__(self, project: Project, role: str) -> None:
        self.project, self.role = project, role

    def __enter__(self) -> psycopg.Connection[Any]:
        cluster, name = self.project.cluster, self.project.name
        if self.role in ("anon", "authenticated", "service_role"):
            self.conn = psycopg.connect(cluster.libpq(name, "authenticator"), autocommit=True)
            self.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))
            claims = CLINICIAN_CLAIMS if self.role == "authenticated" else {}
            self.conn.execute(
                "SELECT set_config('request.jwt.claims', %s, false)",
                (json.dumps({"role": self.role, **claims}),),
            )
        else:
            self.conn = psycopg.connect(cluster.libpq(name, self.role), autocommit=True)
        return self.conn

    def __exit__(self, *_exc: object) -> None:
        self.conn.close()


def access_table_in_docs() -> dict[str, dict[str, str]]:
    """docs/security.md's measured table: role -> table -> "R/I/U/D"."""
    text = SECURITY_DOC.read_text()
    block = text.split("<!-- measured access -->")[1].strip().split("\n\n")[0]
    lines = block.splitlines()
    names = {"archive": "follow_up_requests_archive"}
    header = [cell.strip().strip("`") for cell in lines[0].strip("|").split("|")][1:]
    header = [names.get(name, name) for name in header]
    table: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        role = cells[0].strip("`")
        table[role] = dict(zip(header, cells[1:], strict=True))
    return table


def test_who_can_do_what_is_measured_and_matches_the_security_page(
    project: Project, apns: FakeAPNs
) -> None:
    """Every role of a Supabase project against every table, after real runs: what each
    can read, insert, update and delete. docs/security.md's table is this measurement."""
    project.followups("db", "upgrade")
    project.execute(app_policies())
    project.grant_runtime()
    for n in range(2):
        project.insert_as("authenticated", CLINICIAN_CLAIMS, device_token=apns_token(n + 1))
    project.insert_as("authenticated", {**CLINICIAN_CLAIMS, "sub": str(uuid.uuid4())})
    old = utcnow() - timedelta(days=120)
    for _ in range(2):
        project.execute(
            "INSERT INTO follow_up_requests (id, status, child_name, sent_at, created_at) "
            "VALUES (gen_random_uuid(), 'sent', 'Maya', %s, %s)",
            (old, old),
        )
    project.execute(
        "INSERT INTO provider_review_requests (id) VALUES (gen_random_uuid()), (gen_random_uuid());"
        "INSERT INTO followups_alert_state (name, state) VALUES ('a', 'ok'), ('b', 'ok');"
        "INSERT INTO followups_push_credentials (name, token, expires_at, updated_at) "
        "VALUES ('x', 't', now(), now()), ('y', 't', now(), now());"
        "INSERT INTO followups_schema_version (version_num) VALUES ('spare');",
        user=SUPERUSER,
    )
    for _ in range(2):
        assert project.followups("send-due", user=RUNTIME, env=apns_env(apns)).exit_code == 0
    assert project.followups("cleanup", "--archive", user=RUNTIME).exit_code == 0
    measured = {
        role: {t: measure(project, role, t) for t in MEASURED_TABLES} for role in MEASURED_ROLES
    }
    assert measured == access_table_in_docs(), render_access_table(measured)


def render_access_table(measured: dict[str, dict[str, str]]) -> str:
    """The table as docs/security.md writes it (the assertion message shows it)."""
    names = {"follow_up_requests_archive": "archive"}
    header = "| role | " + " | ".join(f"`{names.get(t, t)}`" for t in MEASURED_TABLES) + " |"
    lines = [header, "|" + " --- |" * (len(MEASURED_TABLES) + 1)]
    for role, row in measured.items():
        lines.append(f"| `{role}` | " + " | ".join(row[t] for t in MEASURED_TABLES) + " |")
    return "\n" + "\n".join(lines)
