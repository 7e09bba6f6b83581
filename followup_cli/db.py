"""Engine for SQLite / PostgreSQL, the transaction helper, and driver-error translation."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import TimeoutError as PoolTimeout

from followup_cli.repository import Repository
from followup_cli.settings import POSTGRES_CONNECT_ARGS, SQLITE_BUSY_TIMEOUT_SECONDS


def make_engine(url: str, *, pool_size: int = 2) -> Engine:
    """An engine tuned for this tool on either backend.

    PostgreSQL: the connect arguments the idle run uses too (POSTGRES_CONNECT_ARGS:
    prepared statements off for PgBouncer / Supavisor, a connect timeout so an
    unreachable server fails fast), parameters never echoed in
    errors (they carry health data), and a pooled connection checked before use, so one
    that a restart or failover of the server closed is replaced instead of failing the
    next transaction. SQLite: WAL, a busy timeout, and BEGIN IMMEDIATE so
    a transaction takes the write lock up front instead of failing to upgrade later.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
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
        pool_pre_ping=True,
        connect_args=dict(POSTGRES_CONNECT_ARGS),
    )


# What a database error means for the work in hand. One place decides, for both drivers.
REFUSED = "refused"  # the database will not take these rows, however often they are sent
TRANSIENT = "transient"  # the database is away or busy for a moment: the same work may succeed
OTHER = "other"  # anything else (schema missing, permissions, a bug): the run stops

# SQLSTATEs of a database that is away for a moment: a restart or failover (57P01-57P03,
# class 08, 25006 on a standby that is being promoted), a lock or statement timeout
# (55P03, 57014), a serialization failure or deadlock (40001, 40P01), a full connection
# table (53300) or memory / disk pressure (53xxx).
_TRANSIENT_STATES = frozenset(
    {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "25006"}
)
_TRANSIENT_CLASSES = ("08", "53")
# Integrity (23), a value the column cannot hold (22), a trigger that raised (P0001) or
# failed an ASSERT (P0004), a view's WITH CHECK OPTION (44): tied to the rows written.
_REFUSED_CLASSES = ("22", "23", "44")
_REFUSED_STATES = frozenset({"P0001", "P0004"})

_PG_LABELS = {
    "23502": "not-null constraint",
    "23503": "foreign key",
    "23505": "unique constraint",
    "23514": "check constraint",
    "23P01": "exclusion constraint",
    "P0001": "trigger raised",
    "P0004": "assertion failed",
}
_PLPGSQL_FUNCTION = re.compile(r"PL/pgSQL function ([\w.\"]+)\(")
# The one class-22 message kept as it is: its shape names a type, never a value.
_TOO_LONG = re.compile(r"^value too long for type ([a-z ]+(?:\(\d+\))?)$")
_SQLITE_CONSTRAINT_MESSAGE = re.compile(
    r"^(?:(?:CHECK|NOT NULL|UNIQUE|FOREIGN KEY) constraint failed(?:: [^\n]*)?"
    r"|cannot store [A-Z]+ value in [A-Z]+ column [\w.]+)$"
)


@dataclass(frozen=True)
class DatabaseProblem:
    """A database error as the code acts on it: its kind, and one line that is safe to
    log, store and alert (names of constraints, tables, columns and functions; never a
    value, and never a message a trigger composed)."""

    kind: str
    summary: str

    @property
    def refused(self) -> bool:
        return self.kind == REFUSED

    @property
    def transient(self) -> bool:
        return self.kind == TRANSIENT


def classify_error(exc: BaseException) -> DatabaseProblem:
    if isinstance(exc, PoolTimeout):
        return DatabaseProblem(TRANSIENT, "no database connection became free in time")
    orig = getattr(exc, "orig", None) or exc
    if getattr(exc, "connection_invalidated", False):
        return DatabaseProblem(TRANSIENT, _first_line(orig))
    if isinstance(orig, sqlite3.Error):
        return _classify_sqlite(orig)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:
        # psycopg raises OperationalError / InterfaceError without a SQLSTATE when the
        # connection could not be made or was lost (server restarting, network gone).
        if type(orig).__name__ in ("OperationalError", "InterfaceError"):
            return DatabaseProblem(TRANSIENT, _first_line(orig))
        return DatabaseProblem(OTHER, _first_line(orig))
    if sqlstate in _TRANSIENT_STATES or sqlstate.startswith(_TRANSIENT_CLASSES):
        return DatabaseProblem(TRANSIENT, _first_line(orig))
    if sqlstate in _REFUSED_STATES or sqlstate.startswith(_REFUSED_CLASSES):
        return DatabaseProblem(REFUSED, _pg_refusal(orig, sqlstate))
    return DatabaseProblem(OTHER, _first_line(orig))


def _pg_refusal(orig: BaseException, sqlstate: str) -> str:
    """e.g. "foreign key follow_up_messages_conversation_id_fkey on follow_up_messages
    (SQLSTATE 23503)". Built from the error's fields, not its text: PostgreSQL's DETAIL
    line carries the row's values, and a trigger's RAISE message is the app's own text."""
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    table = getattr(diag, "table_name", None)
    column = getattr(diag, "column_name", None)
    context = getattr(diag, "context", None) or ""
    primary = getattr(diag, "message_primary", None) or ""
    too_long = _TOO_LONG.match(primary) if sqlstate == "22001" else None
    if too_long:
        label = f"value too long for type {too_long.group(1)}"
    else:
        label = _PG_LABELS.get(sqlstate) or _words(type(orig).__name__)
    parts = [label]
    if constraint:
        parts.append(constraint)
    if table:
        parts.append(f"on {table}.{column}" if column else f"on {table}")
    function = _PLPGSQL_FUNCTION.search(context)
    if function:
        parts.append(f"in function {function.group(1)}")
    return f"{' '.join(parts)} (SQLSTATE {sqlstate})"


def _classify_sqlite(orig: sqlite3.Error) -> DatabaseProblem:
    code = getattr(orig, "sqlite_errorname", None) or type(orig).__name__
    message = _first_line(orig)
    if isinstance(orig, sqlite3.IntegrityError):
        if code == "SQLITE_CONSTRAINT_TRIGGER":
            # RAISE(ABORT, '...') carries the app's own text: never kept.
            return DatabaseProblem(REFUSED, f"trigger raised ({code})")
        if _SQLITE_CONSTRAINT_MESSAGE.match(message):
            return DatabaseProblem(REFUSED, f"{message} ({code})")
        return DatabaseProblem(REFUSED, f"constraint failed ({code})")
    if isinstance(orig, sqlite3.DataError):
        return DatabaseProblem(REFUSED, f"value the column cannot hold ({code})")
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED") or "database is locked" in message:
        return DatabaseProblem(TRANSIENT, message)
    return DatabaseProblem(OTHER, message)


def _first_line(orig: BaseException) -> str:
    text = str(orig).strip()
    return text.splitlines()[0].strip() if text else type(orig).__name__


def _words(class_name: str) -> str:
    """psycopg's class for a SQLSTATE, in words: InvalidTextRepresentation -> invalid text
    representation."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", class_name).lower()


def describe_error(exc: BaseException) -> str:
    """One line about a database error, without SQL text or parameters (they carry
    health data), with a hint when the schema is missing or a privilege is."""
    problem = classify_error(exc)
    if problem.kind == REFUSED:
        return problem.summary
    first_line = problem.summary
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
    """Owns the engine; hands out one Repository per transaction.

    Also a context manager (`with Database(url) as db:`) that disposes of the engine, and
    so of its pooled connections, when the block ends, however it ends."""

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

    @contextmanager
    def read_only(self) -> Iterator[Repository]:
        """A transaction that cannot write, for checks a DBA runs on a live database."""
        with self.engine.begin() as conn:
            repo = Repository(conn)
            repo.begin_read_only()
            try:
                yield repo
            finally:
                repo.end_read_only()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
