"""How database errors are told apart (refused / structural / transient / other) and
summed up in one line without values, on real errors from both drivers; and a refused row
isolated on SQLite too."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from followup_cli.alerts import LogAlerter
from followup_cli.db import (
    OTHER,
    REFUSED,
    STRUCTURAL,
    TRANSIENT,
    Database,
    classify_error,
    describe_error,
)
from followup_cli.delivery import send_due
from followup_cli.push.log import LogPusher
from followup_cli.settings import Settings
from followup_cli.vocabulary import FailureReason
from tests.helpers import RUNTIME_ROLE, app_row, ensure_role, libpq, messages, row


def error_of(url: str, *statements: str) -> SQLAlchemyError:
    """The error the last statement raises (the ones before it set the stage)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except SQLAlchemyError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("no error")


@pytest.mark.postgres
def test_postgres_refusals_name_the_constraint_or_function_never_a_value(
    pg_db_url: str,
) -> None:
    """FK, CHECK, NOT NULL, unique, too long, bad input, a trigger's RAISE."""
    setup = [
        "CREATE TABLE parent (id int PRIMARY KEY)",
        "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id), "
        "note varchar(5) CONSTRAINT note_not_secret CHECK (note <> 'xx'), "
        "needed text NOT NULL DEFAULT 'd', u text CONSTRAINT child_u UNIQUE)",
        "INSERT INTO child (id, u) VALUES (1, 'maya-token')",
        """CREATE FUNCTION child_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.needed = 'stop' THEN
            RAISE EXCEPTION USING MESSAGE = 'refused: ' || NEW.u; END IF; RETURN NEW; END $$""",
        "CREATE TRIGGER child_guard_trigger BEFORE INSERT ON child "
        "FOR EACH ROW EXECUTE FUNCTION child_guard()",
    ]
    cases = {
        "INSERT INTO child (id, parent_id) VALUES (2, 4242)": (
            "foreign key child_parent_id_fkey on child (SQLSTATE 23503)"
        ),
        "INSERT INTO child (id, note) VALUES (2, 'xx')": (
            "check constraint note_not_secret on child (SQLSTATE 23514)"
        ),
        "INSERT INTO child (id, needed) VALUES (2, NULL)": (
            "not-null constraint on child.needed (SQLSTATE 23502)"
        ),
        "INSERT INTO child (id, u) VALUES (2, 'maya-token')": (
            "unique constraint child_u on child (SQLSTATE 23505)"
        ),
        "INSERT INTO child (id, note) VALUES (2, 'Maya has a fever')": (
            "value too long for type character varying(5) (SQLSTATE 22001)"
        ),
        "SELECT 'maya-token'::uuid": "invalid text representation (SQLSTATE 22P02)",
        "INSERT INTO child (id, needed, u) VALUES (2, 'stop', 'maya-token-2')": (
            "trigger raised in function child_guard (SQLSTATE P0001)"
        ),
    }
    db = Database(pg_db_url)
    try:
        with db.engine.begin() as conn:
            for statement in setup:
                conn.exec_driver_sql(statement)
    finally:
        db.close()
    for statement, expected in cases.items():
        exc = error_of(pg_db_url, statement)
        problem = classify_error(exc)
        assert (problem.kind, problem.summary) == (REFUSED, expected), statement
        assert describe_error(exc) == expected
        assert "4242" not in problem.summary and "maya" not in problem.summary.lower()


@pytest.mark.postgres
def test_postgres_transient_and_other_errors(pg_db_url: str) -> None:
    """A statement timeout and a lost server are transient; a missing table is refused
    whatever the rows; a malformed statement is neither."""
    timeout = error_of(pg_db_url, "SET statement_timeout = 10", "SELECT pg_sleep(1)")
    assert classify_error(timeout).kind == TRANSIENT
    unreachable = error_of("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert classify_error(unreachable).kind == TRANSIENT
    missing = error_of(pg_db_url, "SELECT * FROM no_such_table")
    assert classify_error(missing).kind == STRUCTURAL
    assert "run `followups db upgrade` first" in describe_error(missing)
    assert classify_error(error_of(pg_db_url, "SELEC 1")).kind == OTHER


@pytest.mark.postgres
def test_postgres_structural_refusals_name_the_object_and_the_fix(pg_db_url: str) -> None:
    """Permission denied, a policy's refusal, a missing column or function, in this
    tool's statement or in an app's trigger function: the cause names objects only, and
    the fix names the grant or policy on that table, or the function to change."""
    ensure_role(pg_db_url, RUNTIME_ROLE, login=True)
    role = f'"{RUNTIME_ROLE}"'
    setup = [
        "CREATE TABLE notes (id int, body text)",
        "CREATE TABLE audit (id int)",
        "CREATE TABLE guarded (id int)",
        """CREATE FUNCTION notes_audit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO audit (id) VALUES (NEW.id); RETURN NEW; END $$""",
        "CREATE TRIGGER notes_audit AFTER INSERT ON notes "
        "FOR EACH ROW EXECUTE FUNCTION notes_audit()",
        """CREATE FUNCTION guarded_stale() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.gone := 1; RETURN NEW; END $$""",
        "CREATE TRIGGER guarded_stale BEFORE INSERT ON guarded "
        "FOR EACH ROW EXECUTE FUNCTION guarded_stale()",
        "ALTER TABLE guarded ENABLE ROW LEVEL SECURITY",
        f"GRANT INSERT ON notes, guarded TO {role}",
    ]
    with psycopg.connect(libpq(pg_db_url), autocommit=True) as conn:
        for statement in setup:
            conn.execute(statement)
    as_role = f"SET LOCAL ROLE {role}"
    cases = [
        (
            [as_role, "UPDATE notes SET body = 'Maya has a fever'"],
            "permission denied for table notes (SQLSTATE 42501)",
            "grant UPDATE on notes to the runtime role "
            "(`followups db grants ROLE` prints what it needs)",
            "permission denied for table notes (this database role lacks a grant or policy; "
            "`followups db grants ROLE` prints what a runtime role needs)",
        ),
        (
            [as_role, "INSERT INTO notes (id, body) VALUES (1, 'Maya')"],
            "permission denied for table audit in function notes_audit (SQLSTATE 42501)",
            "grant INSERT on audit to the runtime role, or make the trigger function "
            "notes_audit SECURITY DEFINER",
            "permission denied for table audit in function notes_audit (grant INSERT on "
            "audit to the runtime role, or make the trigger function notes_audit SECURITY "
            "DEFINER)",
        ),
        (
            ["DROP TRIGGER guarded_stale ON guarded", as_role, "INSERT INTO guarded VALUES (4242)"],
            'new row violates row-level security policy for table "guarded" (SQLSTATE 42501)',
            "give the runtime role a policy on guarded that allows INSERT "
            "(`followups db grants ROLE` prints what it needs)",
            None,
        ),
        (
            ["INSERT INTO guarded VALUES (4242)"],
            'record "new" has no field "gone" in function guarded_stale (SQLSTATE 42703)',
            "the trigger function guarded_stale uses something that does not exist: create "
            "it, or fix the function",
            None,
        ),
        (
            ["SELECT no_such_function(1)"],
            "function no_such_function(integer) does not exist (SQLSTATE 42883)",
            "run `followups db upgrade` first",
            None,
        ),
    ]
    for statements, summary, fix, described in cases:
        exc = error_of(pg_db_url, *statements)
        problem = classify_error(exc)
        assert (problem.kind, problem.summary, problem.fix) == (STRUCTURAL, summary, fix)
        assert "Maya" not in problem.summary and "4242" not in problem.summary
        if described is not None:
            assert describe_error(exc) == described


def test_sqlite_refusals_keep_the_constraint_never_a_trigger_message(tmp_path: object) -> None:
    """SQLite's constraint messages name columns; RAISE(ABORT, ...) text is the app's."""
    url = f"sqlite:///{tmp_path}/e.db"
    setup = [
        "CREATE TABLE t (a text CONSTRAINT a_ok CHECK (a <> 'bad'), b text NOT NULL DEFAULT 'x')",
        "CREATE TRIGGER t_guard BEFORE INSERT ON t WHEN NEW.a = 'stop' "
        "BEGIN SELECT RAISE(ABORT, 'Maya is not allowed'); END",
    ]
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in setup:
            conn.exec_driver_sql(statement)
    engine.dispose()
    check = classify_error(error_of(url, "INSERT INTO t (a) VALUES ('bad')"))
    assert (check.kind, check.summary) == (
        REFUSED,
        "CHECK constraint failed: a_ok (SQLITE_CONSTRAINT_CHECK)",
    )
    not_null = classify_error(error_of(url, "INSERT INTO t (a, b) VALUES ('a', NULL)"))
    assert not_null.summary == "NOT NULL constraint failed: t.b (SQLITE_CONSTRAINT_NOTNULL)"
    trigger = classify_error(error_of(url, "INSERT INTO t (a) VALUES ('stop')"))
    assert (trigger.kind, trigger.summary) == (
        REFUSED,
        "trigger raised (SQLITE_CONSTRAINT_TRIGGER)",
    )
    missing = classify_error(error_of(url, "SELECT * FROM nothing_here"))
    assert (missing.kind, missing.summary) == (
        STRUCTURAL,
        "no such table: nothing_here (SQLITE_ERROR)",
    )
    assert classify_error(error_of(url, "SELEC 1")).kind == OTHER


def test_a_trigger_refusing_one_message_fails_only_that_row(
    db: Database, db_url: str, settings: Settings
) -> None:
    """On either backend: one row refused by a trigger, the others sent in the same run."""
    if db.dialect == "postgresql":
        statements = [
            """CREATE FUNCTION app_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF strpos(NEW.message_content, 'flagged') > 0 THEN
                RAISE EXCEPTION USING MESSAGE = NEW.message_content; END IF;
                RETURN NEW; END $$""",
            "CREATE TRIGGER app_guard_messages BEFORE INSERT ON follow_up_messages "
            "FOR EACH ROW EXECUTE FUNCTION app_guard()",
        ]
        expected = "trigger raised in function app_guard (SQLSTATE P0001)"
    else:
        statements = [
            "CREATE TRIGGER app_guard_messages BEFORE INSERT ON follow_up_messages "
            "WHEN instr(NEW.message_content, 'flagged') > 0 "
            "BEGIN SELECT RAISE(ABORT, 'flagged text refused'); END"
        ]
        expected = "trigger raised (SQLITE_CONSTRAINT_TRIGGER)"
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    good = [app_row(db) for _ in range(4)]
    bad = app_row(db, display_text="Maya's rash, flagged")
    report = send_due(db, LogPusher(), settings, LogAlerter())
    assert (report.sent, report.failed, report.exit_code) == (4, 1, 0)
    assert [r.follow_up_id for r in report.refused] == [bad]
    assert all(row(db, fid).status == "sent" for fid in good)
    refused = row(db, bad)
    assert (refused.status, refused.failure_reason) == ("failed", FailureReason.DATABASE_REJECTED)
    assert refused.failure_detail == expected
    assert messages(db, bad) == []
