"""cleanup --archive keeps the whole row in row_data, the app's own columns included; the
restore in docs/operations.md puts it back as it was; revision 0008 up and down."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, select, text

from followup_cli import migrate
from followup_cli.cleanup import cleanup
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_requests_archive
from tests.helpers import app_row, cli, execute, libpq

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
PROVIDER_ID = "5b0e6a8e-8f43-4a51-9d61-2f4d3f0c2a77"
MIGRATIONS = Path(migrate.__file__).parent / "migrations"


def add_provider_id(db: Database) -> None:
    """The app's row level security owner, a column this tool does not define."""
    kind = "uuid" if db.dialect == "postgresql" else "TEXT"
    execute(db, f"ALTER TABLE follow_up_requests ADD COLUMN provider_id {kind}")


def old_sent(db: Database) -> str:
    """A follow-up sent 100 days ago, with the tool's columns and provider_id filled in."""
    old = utcnow().replace(microsecond=123_457) - timedelta(days=100)
    follow_up_id = app_row(
        db,
        status="sent",
        scheduled_for=old - timedelta(minutes=1),
        sent_at=old,
        created_at=old - timedelta(days=1),
        provider_name="Dr. Ada Okafor",
        in_app_only=True,
        retry_count=2,
    )
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE follow_up_requests SET provider_id = :provider WHERE id = :id"),
            {"provider": PROVIDER_ID, "id": follow_up_id},
        )
    return follow_up_id


def stored_row(db: Database, follow_up_id: str) -> dict[str, Any] | None:
    """Every column of the row as the driver returns it (SQLite: as stored)."""
    with db.engine.connect() as conn:
        found = conn.execute(
            text("SELECT * FROM follow_up_requests WHERE id = :id"), {"id": follow_up_id}
        ).first()
    return None if found is None else dict(found._mapping)


def row_data(db: Database, follow_up_id: str) -> Any:
    archive = follow_up_requests_archive.c
    with db.engine.connect() as conn:
        return conn.execute(select(archive.row_data).where(archive.id == follow_up_id)).scalar_one()


def as_json(value: Any) -> Any:
    """A driver's value as to_jsonb writes it (timestamps: see decoded)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def decoded(data: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """row_data with the timestamps of `like` parsed back, to compare them as instants."""
    return {
        key: datetime.fromisoformat(value) if isinstance(like.get(key), datetime) else value
        for key, value in data.items()
    }


def archive_and_check(db: Database, db_url: str, follow_up_id: str) -> dict[str, Any]:
    before = stored_row(db, follow_up_id)
    assert before is not None
    done = cli(db_url, "cleanup", "--archive")
    assert done.exit_code == 0, done.output
    assert "Archived 1 follow-up(s)" in done.stdout
    assert stored_row(db, follow_up_id) is None
    return before


# -- what the archive keeps -------------------------------------------------------------


def test_row_data_holds_every_column_with_its_value(db_url: str, db: Database) -> None:
    """The app's provider_id too, and every tool column, each with its value."""
    add_provider_id(db)
    follow_up_id = old_sent(db)
    before = archive_and_check(db, db_url, follow_up_id)
    data = row_data(db, follow_up_id)
    columns = {c["name"] for c in inspect(db.engine).get_columns("follow_up_requests")}
    assert set(data) == columns == set(before)
    assert data["provider_id"] == PROVIDER_ID
    if db.dialect == "sqlite":
        assert data == before  # exactly as stored: UTC text timestamps, 0/1 booleans
        assert data["in_app_only"] == 1
    else:
        assert decoded(data, before) == {k: as_json(v) for k, v in before.items()}
        assert data["in_app_only"] is True
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", data["sent_at"])


def test_a_wide_app_table_is_kept_whole(db_url: str, db: Database) -> None:
    """More columns than one SQLite json_object call takes, odd names and nulls included."""
    extra = [f"extra_{i}" for i in range(70)]
    quoted = ['"order"', '"we""ird"', '"with space"']
    execute(
        db,
        *(f"ALTER TABLE follow_up_requests ADD COLUMN {name} text" for name in extra + quoted),
    )
    add_provider_id(db)
    follow_up_id = old_sent(db)
    execute(
        db,
        "UPDATE follow_up_requests SET "
        + ", ".join(f"{name} = 'value {i}'" for i, name in enumerate(extra[:-1]))
        + ', "order" = \'first\', "we""ird" = \'odd\''
        + f" WHERE id = '{follow_up_id}'",
    )
    archive_and_check(db, db_url, follow_up_id)
    data = row_data(db, follow_up_id)
    assert {name: data[name] for name in extra[:3]} == {
        "extra_0": "value 0",
        "extra_1": "value 1",
        "extra_2": "value 2",
    }
    assert data["extra_68"] == "value 68"
    assert "extra_69" in data and data["extra_69"] is None
    assert (data["order"], data['we"ird'], data["with space"]) == ("first", "odd", None)
    assert data["provider_id"] == PROVIDER_ID and data["id"] == follow_up_id
    assert len(data) == len(inspect(db.engine).get_columns("follow_up_requests"))


def test_one_insert_per_batch_and_the_columns_read_once(db: Database) -> None:
    """Ten follow-ups in batches of four: three INSERT ... SELECT, one look at the columns."""
    old = utcnow() - timedelta(days=100)
    for _ in range(7):
        app_row(db, status="sent", sent_at=old)
    for _ in range(3):
        app_row(db, status="cancelled", created_at=old)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        report = cleanup(db, timedelta(days=90), archive=True, batch_size=4)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert report.total == 10
    inserts = [s for s in statements if s.lstrip().startswith("INSERT INTO follow_up_requests_")]
    assert len(inserts) == 3
    looks = [s for s in statements if "table_xinfo" in s or "table_info" in s]
    assert len(looks) == (1 if db.dialect == "sqlite" else 0)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'archive.db'}")
    migrate.upgrade(database)
    yield database
    database.close()


def test_sqlite_keeps_a_blob_as_hex(sqlite_db: Database) -> None:
    """JSON cannot hold a BLOB; the archive keeps its hex text rather than failing."""
    execute(sqlite_db, "ALTER TABLE follow_up_requests ADD COLUMN avatar BLOB")
    add_provider_id(sqlite_db)
    follow_up_id = old_sent(sqlite_db)
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text("UPDATE follow_up_requests SET avatar = :blob WHERE id = :id"),
            {"blob": b"\xde\xad\xbe\xef", "id": follow_up_id},
        )
    archive_and_check(sqlite_db, str(sqlite_db.engine.url), follow_up_id)
    assert row_data(sqlite_db, follow_up_id)["avatar"] == "DEADBEEF"


def test_sqlite_restore_by_hand_puts_the_row_back(sqlite_db: Database) -> None:
    """The json_extract form of docs/operations.md, one per key, gives the stored row."""
    add_provider_id(sqlite_db)
    follow_up_id = old_sent(sqlite_db)
    before = archive_and_check(sqlite_db, str(sqlite_db.engine.url), follow_up_id)
    with sqlite_db.engine.begin() as conn:
        keys = list(
            conn.scalars(
                text(documented_sqlite_keys().replace("'<id>'", ":id")), {"id": follow_up_id}
            )
        )
        names = ", ".join(f'"{key}"' for key in keys)
        values = ", ".join(f"json_extract(row_data, '$.\"{key}\"')" for key in keys)
        conn.execute(
            text(
                f"INSERT INTO follow_up_requests ({names}) SELECT {values} "
                "FROM follow_up_requests_archive WHERE id = :id"
            ),
            {"id": follow_up_id},
        )
        conn.execute(
            text("DELETE FROM follow_up_requests_archive WHERE id = :id"), {"id": follow_up_id}
        )
    assert stored_row(sqlite_db, follow_up_id) == before


# -- the documented restore on PostgreSQL ---------------------------------------------------


def documented_statements() -> list[str]:
    """The SQL blocks of "Restoring an archived follow-up" in docs/operations.md, in order."""
    section = OPERATIONS.read_text().split("## Restoring an archived follow-up", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


def documented_restores() -> list[str]:
    """The PostgreSQL ones: the statement and its column-list form."""
    postgresql = [s for s in documented_statements() if "row_data" in s and "json_" not in s]
    assert len(postgresql) == 2, postgresql
    return postgresql


def documented_sqlite_keys() -> str:
    """The SQLite query that lists the keys of one row_data."""
    (query,) = [s for s in documented_statements() if "json_each" in s]
    return query.strip().rstrip(";")


def pg_row(url: str, follow_up_id: str, timezone: str = "UTC") -> dict[str, Any] | None:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(f"SET TimeZone = '{timezone}'")
        cursor = conn.execute("SELECT * FROM follow_up_requests WHERE id = %s", (follow_up_id,))
        found = cursor.fetchone()
        if found is None:
            return None
        assert cursor.description is not None
        return {column.name: value for column, value in zip(cursor.description, found, strict=True)}


def pg_restore(url: str, statement: str, follow_up_id: str) -> int:
    """Run one documented statement, as the owner, in a session far from UTC."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'America/St_Johns'")
        return conn.execute(statement.replace("<id>", follow_up_id)).rowcount


def archived_ids(url: str) -> list[str]:
    with psycopg.connect(libpq(url)) as conn:
        return [str(r[0]) for r in conn.execute("SELECT id FROM follow_up_requests_archive")]


@pytest.mark.postgres
def test_documented_restore_puts_back_the_identical_row(pg_db_url: str) -> None:
    """Every column, timestamps with time zone, booleans and provider_id, as they were."""
    db = Database(pg_db_url)
    add_provider_id(db)
    follow_up_id = old_sent(db)
    before = pg_row(pg_db_url, follow_up_id)
    assert before is not None and before["in_app_only"] is True
    assert before["sent_at"].microsecond != 0
    archive_and_check(db, pg_db_url, follow_up_id)
    statement, _ = documented_restores()

    assert pg_restore(pg_db_url, statement, str(uuid.uuid4())) == 0  # unknown id: nothing
    assert pg_restore(pg_db_url, statement, follow_up_id) == 1
    assert pg_row(pg_db_url, follow_up_id) == before
    assert archived_ids(pg_db_url) == []
    again = cli(pg_db_url, "cleanup", "--archive")  # the archive's id is free again
    assert again.exit_code == 0, again.output
    assert archived_ids(pg_db_url) == [follow_up_id]
    db.close()


@pytest.mark.postgres
def test_columns_added_after_archiving_get_their_defaults(pg_db_url: str) -> None:
    """r.* writes NULL into a column added since (a NOT NULL one refuses, changing nothing);
    the column-list form leaves it to its default and restores the rest as it was."""
    db = Database(pg_db_url)
    add_provider_id(db)
    follow_up_id = old_sent(db)
    before = pg_row(pg_db_url, follow_up_id)
    archive_and_check(db, pg_db_url, follow_up_id)
    execute(db, "ALTER TABLE follow_up_requests ADD COLUMN priority integer NOT NULL DEFAULT 3")
    statement, column_list = documented_restores()

    with pytest.raises(psycopg.errors.NotNullViolation):
        pg_restore(pg_db_url, statement, follow_up_id)
    assert archived_ids(pg_db_url) == [follow_up_id]
    pg_restore(pg_db_url, column_list, follow_up_id)
    assert pg_row(pg_db_url, follow_up_id) == {**(before or {}), "priority": 3}
    assert archived_ids(pg_db_url) == []
    with pytest.raises(psycopg.errors.RaiseException, match="no row_data archived"):
        pg_restore(pg_db_url, column_list, follow_up_id)
    db.close()


# -- revision 0008 ------------------------------------------------------------------------


def downgrade(db: Database, to: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, to)


def archive_columns(db: Database) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns("follow_up_requests_archive")}


def test_revision_0008_adds_row_data_and_takes_it_away(empty_db: Database) -> None:
    """Rows archived before keep their columns and have no row_data; down and up again."""
    migrate.upgrade(empty_db, "0007")
    assert "row_data" not in archive_columns(empty_db)
    archived_id = str(uuid.uuid4())
    with empty_db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO follow_up_requests_archive (id, status, archived_at) "
                "VALUES (:id, 'sent', :now)"
            ),
            {"id": archived_id, "now": utcnow().replace(tzinfo=None)},
        )
    assert migrate.upgrade(empty_db, "0008") == ("0007", "0008")
    assert "row_data" in archive_columns(empty_db)
    assert row_data(empty_db, archived_id) is None

    downgrade(empty_db, "0007")
    assert "row_data" not in archive_columns(empty_db)
    with empty_db.engine.connect() as conn:
        kept = conn.scalar(text("SELECT count(*) FROM follow_up_requests_archive"))
    assert kept == 1
    assert migrate.upgrade(empty_db, "0008") == ("0007", "0008")
    assert "row_data" in archive_columns(empty_db)


def test_sql_mode_adds_row_data_as_jsonb() -> None:
    """--sql adds the column only where it is missing, as jsonb."""
    out = io.StringIO()
    migrate.upgrade_sql("postgresql+psycopg://nobody@127.0.0.1:1/none", out)
    assert (
        "ALTER TABLE follow_up_requests_archive ADD COLUMN IF NOT EXISTS row_data JSONB"
        in out.getvalue()
    )


def test_schema_docs_list_every_revision() -> None:
    """docs/schema.md's revision table and the upgrade's messages match the code."""
    script = ScriptDirectory(str(MIGRATIONS))
    revisions = sorted(r.revision for r in script.walk_revisions())
    schema = (OPERATIONS.parent / "schema.md").read_text()
    assert re.findall(r"^\| (\d{4}) \|", schema, flags=re.MULTILINE) == revisions
    head = migrate.head_revision()
    assert f"Schema upgraded from empty to revision {head} " in schema
    assert f"Schema already at revision {head} " in schema
