"""db upgrade: fresh databases, an existing production schema, idempotence, --sql."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import inspect, text

from followup_cli import migrate
from followup_cli.db import Database
from tests.helpers import APP_DDL

EXPECTED_TABLES = {
    "follow_up_requests",
    "provider_review_requests",
    "follow_up_messages",
    "follow_up_attempts",
    "follow_up_runs",
    migrate.VERSION_TABLE,
}


def test_fresh_database_gets_every_table_and_upgrade_is_idempotent(empty_db: Database) -> None:
    """First run creates everything; the second changes nothing."""
    assert migrate.upgrade(empty_db) == (None, migrate.head_revision())
    assert EXPECTED_TABLES <= set(inspect(empty_db.engine).get_table_names())
    indexes = {i["name"] for i in inspect(empty_db.engine).get_indexes("follow_up_requests")}
    assert "ix_follow_up_requests_due" in indexes
    head = migrate.head_revision()
    assert migrate.upgrade(empty_db) == (head, head)


@pytest.mark.postgres
def test_existing_app_schema_gains_only_this_tools_pieces(empty_pg_url: str) -> None:
    """On a production database the app's rows and columns stay; ours are added."""
    db = Database(empty_pg_url)
    with db.engine.begin() as conn:
        for statement in APP_DDL:
            conn.execute(text(statement))
    migrate.upgrade(db)
    columns = {c["name"] for c in inspect(db.engine).get_columns("follow_up_requests")}
    assert {
        "claimed_by",
        "claim_expires_at",
        "failure_reason",
        "provider_name",
        "failure_detail",
        "held_at",
    } <= columns
    review_columns = {c["name"] for c in inspect(db.engine).get_columns("provider_review_requests")}
    assert "reviewer" in review_columns
    with db.engine.connect() as conn:
        kept = conn.execute(
            text("SELECT display_text, status, in_app_only FROM follow_up_requests")
        ).one()
    assert tuple(kept) == ("kept", "scheduled", False)
    migrate.upgrade(db)  # and again: nothing to do
    db.close()


def test_sql_mode_prints_idempotent_ddl_without_connecting() -> None:
    """--sql writes SQL a DBA can run; it creates only what is missing."""
    out = io.StringIO()
    migrate.upgrade_sql("postgresql+psycopg://nobody@127.0.0.1:1/none", out)
    sql = out.getvalue()
    assert "CREATE TABLE IF NOT EXISTS follow_up_requests" in sql
    assert "ADD COLUMN IF NOT EXISTS claimed_by" in sql
    assert "ADD COLUMN IF NOT EXISTS held_at" in sql
    assert "CREATE INDEX IF NOT EXISTS ix_follow_up_requests_held" in sql
    assert "CREATE INDEX IF NOT EXISTS ix_follow_up_requests_due" in sql
    assert "WHERE status = 'scheduled'" in sql
    assert migrate.VERSION_TABLE in sql


def test_migrations_match_the_tables_the_code_uses(empty_db: Database) -> None:
    """After db upgrade, Alembic finds no difference between the schema and tables.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from followup_cli.tables import metadata

    migrate.upgrade(empty_db)
    with empty_db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrate.VERSION_TABLE})
        differences = [
            d
            for d in compare_metadata(context, metadata)
            if not (d[0] == "remove_table" and d[1].name == migrate.VERSION_TABLE)
        ]
    assert differences == []
