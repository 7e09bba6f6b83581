"""Engine for SQLite / PostgreSQL, the transaction helper, and driver-error translation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

from followup_cli.repository import Repository


def make_engine(url: str, *, pool_size: int = 2) -> Engine:
    """An engine tuned for this tool on either backend.

    PostgreSQL: prepared statements off (PgBouncer / Supavisor transaction pooling), a
    connect timeout so an unreachable server fails fast, parameters never echoed in
    errors (they carry health data). SQLite: WAL, a busy timeout, and BEGIN IMMEDIATE so
    a transaction takes the write lock up front instead of failing to upgrade later.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url, hide_parameters=True, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=False,
        connect_args={
            "prepare_threshold": None,
            "connect_timeout": 10,
            "application_name": "followups",
        },
    )


def describe_error(exc: BaseException) -> str:
    """One line about a database error, without SQL text or parameters (they carry
    health data), with a hint when the schema is missing or a privilege is."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first_line = text.splitlines()[0].strip() if text else type(orig).__name__
    if "no such table" in first_line or (
        "relation" in first_line and "does not exist" in first_line
    ):
        first_line += " (run `followups db upgrade` first)"
    elif "permission denied" in first_line or "row-level security" in first_line:
        first_line += (
            " (this database role lacks a grant or policy; `followups db grants ROLE` "
            "prints what a runtime role needs)"
        )
    return first_line


class Database:
    """Owns the engine; hands out one Repository per transaction."""

    def __init__(self, url: str, *, pool_size: int = 2) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Repository]:
        """One unit of work: commits on success, rolls back on any error."""
        with self.engine.begin() as conn:
            yield Repository(conn)

    def close(self) -> None:
        self.engine.dispose()
