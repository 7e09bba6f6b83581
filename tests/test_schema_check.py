"""`followups db check` and the check `db upgrade` makes first: what in the app's schema
would make delivery fail, one line each with the SQL that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from followup_cli import migrate, schemacheck
from followup_cli.db import Database
from followup_cli.repository import Repository
from tests.helpers import APP_DDL, cli, execute


def fixes(output: str) -> list[str]:
    return [line.split(" Fix: ", 1)[1] for line in output.splitlines() if " Fix: " in line]


def test_a_schema_this_tool_made_passes(db_url: str) -> None:
    """Nothing to report on the tool's own schema, on either backend: exit 0."""
    result = cli(db_url, "db", "check")
    assert result.exit_code == 0, result.stdout
    assert result.stdout == "db check: OK, nothing in the app's schema would make delivery fail\n"


def test_the_check_cannot_write(db: Database) -> None:
    """db check reads the catalog in a transaction that refuses writes."""
    with pytest.raises(SQLAlchemyError), db.read_only() as repo:
        repo.conn.execute(text("DELETE FROM follow_up_runs"))
    with db.transaction() as repo:  # the connection writes again afterwards
        repo.conn.execute(text("DELETE FROM follow_up_runs"))


@pytest.mark.postgres
def test_each_problem_is_one_line_and_its_fix_repairs_it(pg_db_url: str) -> None:
    """Status CHECK, NOT NULL column, narrow text column, trigger, foreign key."""
    db = Database(pg_db_url)
    execute(
        db,
        "ALTER TABLE follow_up_requests ADD CONSTRAINT follow_up_requests_status_check "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled', 'on_hold'))",
        "ALTER TABLE follow_up_messages ADD COLUMN sender_role text NOT NULL",
        "ALTER TABLE follow_up_messages ADD COLUMN read boolean NOT NULL DEFAULT false",
        "ALTER TABLE follow_up_messages ALTER COLUMN message_content TYPE varchar(500)",
        "CREATE TABLE conversations (id uuid PRIMARY KEY)",
        "ALTER TABLE follow_up_messages ADD CONSTRAINT messages_conversation_fk "
        "FOREIGN KEY (conversation_id) REFERENCES conversations (id)",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER requests_touch BEFORE UPDATE ON follow_up_requests "
        "FOR EACH ROW EXECUTE FUNCTION touch()",
    )
    result = cli(pg_db_url, "db", "check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == [
        "error: CHECK constraint follow_up_requests_status_check on follow_up_requests.status "
        "does not allow 'failed', which this tool writes. Fix: ALTER TABLE follow_up_requests "
        "DROP CONSTRAINT follow_up_requests_status_check, ADD CONSTRAINT "
        "follow_up_requests_status_check CHECK (status IN ('scheduled', 'sent', 'cancelled', "
        "'on_hold', 'failed')) NOT VALID; ALTER TABLE follow_up_requests VALIDATE CONSTRAINT "
        "follow_up_requests_status_check;",
        "error: follow_up_messages.sender_role is NOT NULL without a default and this tool "
        "does not fill it: every in-app message would be refused (or give it a default the "
        "app accepts). Fix: ALTER TABLE follow_up_messages ALTER COLUMN sender_role DROP NOT "
        "NULL;",
        "warning: follow_up_messages.message_content is VARCHAR(500): a follow-up with a "
        "longer value is refused by the database and marked failed (database_rejected) or "
        "held, never retried on its own. Fix: ALTER TABLE follow_up_messages ALTER COLUMN "
        "message_content TYPE text;",
        "warning: trigger requests_touch on follow_up_requests: a follow-up it refuses is "
        "marked failed (database_rejected) or held, never retried on its own.",
        "warning: foreign key messages_conversation_fk on follow_up_messages (conversation_id "
        "-> conversations.id): a follow-up whose conversations row is missing is marked "
        "failed (database_rejected) or held, never retried on its own.",
        "db check: 2 error(s), 3 warning(s)",
    ]

    execute(db, *fixes(result.stdout))
    after = cli(pg_db_url, "db", "check")
    assert after.exit_code == 0
    assert "error:" not in after.stdout
    assert after.stdout.splitlines()[-1] == "db check: 0 error(s), 2 warning(s)"
    db.close()


@pytest.mark.postgres
def test_status_enum_without_failed_is_an_error_with_its_fix(empty_pg_url: str) -> None:
    """An enum type on status: the missing labels are named, ALTER TYPE adds them."""
    db = Database(empty_pg_url)
    execute(
        db,
        "CREATE TYPE follow_up_status AS ENUM ('scheduled', 'sent', 'cancelled')",
        *[
            ddl.replace("status text NOT NULL", "status follow_up_status NOT NULL")
            for ddl in APP_DDL
        ],
    )
    result = cli(empty_pg_url, "db", "check")
    assert result.exit_code == 1
    [line] = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert line == (
        "error: follow_up_requests.status has the enum type follow_up_status without "
        "'failed', which this tool writes. Fix: ALTER TYPE follow_up_status ADD VALUE IF NOT "
        "EXISTS 'failed';"
    )
    execute(db, *fixes(result.stdout))
    assert cli(empty_pg_url, "db", "check").exit_code == 0
    db.close()


@pytest.mark.postgres
def test_upgrade_stops_before_changing_anything_when_the_check_finds_an_error(
    empty_pg_url: str,
) -> None:
    """The app's tables with a status CHECK: db upgrade prints it, exits 1, adds nothing."""
    db = Database(empty_pg_url)
    execute(
        db,
        *APP_DDL,
        "ALTER TABLE follow_up_requests ADD CONSTRAINT app_status "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled'))",
    )
    result = cli(empty_pg_url, "db", "upgrade")
    assert result.exit_code == 1
    assert result.stdout.startswith("error: CHECK constraint app_status")
    assert result.stderr.startswith("Error: the app's schema would make delivery fail (1 error")
    tables = set(inspect(db.engine).get_table_names())
    assert "follow_up_attempts" not in tables and migrate.VERSION_TABLE not in tables
    columns = {c["name"] for c in inspect(db.engine).get_columns("follow_up_requests")}
    assert "claimed_by" not in columns

    execute(db, *fixes(result.stdout))
    done = cli(empty_pg_url, "db", "upgrade")
    assert done.exit_code == 0, done.stdout + done.stderr
    assert "Schema upgraded from empty to revision" in done.stdout
    db.close()


@pytest.mark.postgres
def test_upgrade_prints_warnings_and_goes_on(empty_pg_url: str) -> None:
    """Only warnings (a trigger): printed, and the upgrade is done."""
    db = Database(empty_pg_url)
    execute(
        db,
        *APP_DDL,
        "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER messages_audit AFTER INSERT ON follow_up_messages "
        "FOR EACH ROW EXECUTE FUNCTION audit()",
    )
    result = cli(empty_pg_url, "db", "upgrade")
    assert result.exit_code == 0
    first, second = result.stdout.splitlines()
    assert first.startswith("warning: trigger messages_audit on follow_up_messages")
    assert second.startswith("Schema upgraded from empty to revision")
    db.close()


def test_sqlite_app_tables_with_a_status_check_and_a_trigger(tmp_path: Path) -> None:
    """SQLite: the CHECK is found in the table's SQL; there is no in-place fix to offer."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    db = Database(url)
    execute(
        db,
        "CREATE TABLE follow_up_requests (id text PRIMARY KEY, conversation_id text, "
        "user_id text, scheduled_for timestamp, urgency text, display_text text, "
        "device_token text, created_at timestamp, sent_at timestamp, status text NOT NULL "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled')))",
        "CREATE TABLE follow_up_messages (id text PRIMARY KEY, conversation_id text, "
        "user_id text, message_content text, is_from_user boolean, follow_up_id text, "
        '"timestamp" timestamp)',
        "CREATE TRIGGER no_delete BEFORE DELETE ON follow_up_messages "
        "BEGIN SELECT RAISE(ABORT, 'no'); END",
    )
    result = cli(url, "db", "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "error: CHECK constraint (unnamed) on follow_up_requests.status does not allow "
        "'failed', which this tool writes.",
        "warning: trigger no_delete on follow_up_messages: a follow-up it refuses is marked "
        "failed (database_rejected) or held, never retried on its own.",
        "db check: 1 error(s), 1 warning(s)",
    ]
    db.close()


def test_a_new_check_is_one_more_function(db: Database) -> None:
    """Checks are plain functions over the repository that return findings."""

    def runs_table_is_there(repo: Repository) -> list[schemacheck.Finding]:
        if "follow_up_runs" in repo.table_names():
            return [schemacheck.Finding(schemacheck.WARNING, "runs are recorded")]
        return []

    found = schemacheck.run(db, [*schemacheck.CHECKS, runs_table_is_there])
    assert found == [schemacheck.Finding("warning", "runs are recorded")]
