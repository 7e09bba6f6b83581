"""Engine for SQLite / PostgreSQL, the transaction helper, and driver-error translation."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout

from followup_cli import logsetup
from followup_cli.errors import ConfigError
from followup_cli.repository import Repository
from followup_cli.settings import (
    POSTGRES_CONNECT_ARGS,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    parse_database_url,
)


def sqlalchemy_url(url: str) -> URL:
    """The database URL as SQLAlchemy and Alembic take it. A PostgreSQL one is built from
    the parts settings.parse_database_url finds, never from the string: SQLAlchemy's own
    parser ends the password at its first "@" and cannot read a raw ":" or "/" in it. Its
    password is registered for scrubbing here, the one door every engine goes through,
    so that no log line or error message shows it. Raises ConfigError."""
    parsed = parse_database_url(url)
    if parsed is None:  # sqlite: no password, read as SQLAlchemy always read it
        return make_url(url)
    logsetup.hide(*parsed.password_forms)
    return URL.create(
        parsed.drivername,
        username=parsed.username,
        password=parsed.password,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (absolute), None for PostgreSQL or an in-memory one."""
    parts = sqlalchemy_url(url)
    if parts.get_backend_name() != "sqlite" or parts.database in (None, "", ":memory:"):
        return None
    return Path(parts.database).absolute()


def describe_database(url: str) -> str:
    """Which database, for messages: the SQLite file, or host, port and database name;
    never the user or the password."""
    path = sqlite_path(url)
    if path is not None:
        return f"SQLite {path}"
    parsed = parse_database_url(url)
    if parsed is None:
        return "SQLite in memory"
    where = f"{parsed.host or 'local socket'}:{parsed.port or 5432}"
    return f"PostgreSQL {where}/{parsed.database or '(default database)'}"


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
    parts = sqlalchemy_url(url)
    if parts.get_backend_name() == "sqlite":
        engine = create_engine(
            parts,
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
        parts,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args=dict(POSTGRES_CONNECT_ARGS),
    )


# What a database error means for the work in hand. One place decides, for both drivers.
REFUSED = "refused"  # the database will not take these rows, however often they are sent
# Refused whatever the rows (a privilege or policy the role lacks, a table, column or
# function that does not exist): every row is refused the same way until the schema or
# the grants are fixed.
STRUCTURAL = "structural"
TRANSIENT = "transient"  # the database is away or busy for a moment: the same work may succeed
OTHER = "other"  # anything else (a malformed statement, a bug): the run stops

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
# Insufficient privilege, which covers a row level security policy's refusal (42501), and
# an undefined table, column, function or other object (42P01, 42703, 42883, 42704).
_STRUCTURAL_STATES = frozenset({"42501", "42P01", "42703", "42883", "42704"})

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
_SQL_FUNCTION = re.compile(r'SQL function "([\w.]+)"')
# The command a function's statement runs: its first word only, never the rest.
_CONTEXT_COMMAND = re.compile(r'SQL statement "(\w+)')
_COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
# The shapes of the structural messages that are kept as they are: each names objects (a
# table, column, function or type), never a value. `kind` and `name` say what to fix.
_STRUCTURAL_MESSAGES = tuple(
    re.compile(pattern)
    for pattern in (
        r"^permission denied for (?P<kind>table|view|materialized view|foreign table|sequence"
        r"|schema|function|procedure|type) (?P<name>[^\n]{1,200})$",
        r'^new row violates row-level security policy(?: "[^"\n]{1,200}")?'
        r'(?: \(USING expression\))? for (?P<kind>table) "(?P<name>[^"\n]{1,200})"$',
        r'^relation "(?P<name>[^"\n]{1,200})" does not exist$',
        r'^column "[^"\n]{1,200}" of relation "(?P<name>[^"\n]{1,200})" does not exist$',
        r"^column [^\s]{1,200} does not exist$",
        r'^record "\w+" has no field "[^"\n]{1,200}"$',
        r"^(?:function|procedure) [\w$.\"]{1,200}\([\w\s,.\"\[\]]{0,400}\) does not exist$",
        r'^type "[^"\n]{1,200}" does not exist$',
    )
)
_RLS = "new row violates row-level security policy"
_SQLITE_STRUCTURAL = re.compile(r"^no such (?:table|column|function): [\w.]{1,200}$")
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
    # STRUCTURAL only: the cause in words (the summary without its SQLSTATE), what fixes
    # it (a grant or policy on a named table, or the function to change), and the
    # trigger function the statement failed in, when it failed in one.
    cause: str | None = None
    fix: str | None = None
    function: str | None = None

    @property
    def refused(self) -> bool:
        """The database will not take this work however often it is sent: a row's own
        refusal (REFUSED) or one that every row meets (STRUCTURAL)."""
        return self.kind in (REFUSED, STRUCTURAL)

    @property
    def structural(self) -> bool:
        return self.kind == STRUCTURAL

    @property
    def transient(self) -> bool:
        return self.kind == TRANSIENT


def classify_error(exc: BaseException) -> DatabaseProblem:
    """What a database error means, in words safe to log, store, alert and print: the
    database password (logsetup.hide) is *** in them, whatever the driver's text held."""
    problem = _classify(exc)
    texts = {"summary": problem.summary, "cause": problem.cause, "fix": problem.fix}
    return replace(problem, **{k: logsetup.scrub(v) for k, v in texts.items() if v})


def _classify(exc: BaseException) -> DatabaseProblem:
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
    if sqlstate in _STRUCTURAL_STATES:
        return _pg_structural(orig, sqlstate, getattr(exc, "statement", None))
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


def _pg_structural(orig: BaseException, sqlstate: str, statement: str | None) -> DatabaseProblem:
    """e.g. "permission denied for table provider_review_requests in function
    app_review_answered (SQLSTATE 42501)", and what fixes it. The message is kept only in
    the shapes that name objects; any other is replaced by the SQLSTATE's name. Of a
    statement, only its command (UPDATE) is read: in a function, from the error's
    context; otherwise from this tool's own statement."""
    diag = getattr(orig, "diag", None)
    primary = (getattr(diag, "message_primary", None) or "").strip()
    context = getattr(diag, "context", None) or ""
    shape = next((m for p in _STRUCTURAL_MESSAGES if (m := p.match(primary))), None)
    cause = primary if shape else _words(type(orig).__name__)
    found = _PLPGSQL_FUNCTION.search(context) or _SQL_FUNCTION.search(context)
    function = found.group(1) if found else None
    if function:
        cause += f" in function {function}"
        command = _CONTEXT_COMMAND.search(context)
        verb = command.group(1).upper() if command else ""
    else:
        verb = (statement or "").lstrip().split(" ", 1)[0].upper()
    named = shape.groupdict() if shape else {}
    fix = _structural_fix(
        sqlstate,
        rls=primary.startswith(_RLS),
        kind=named.get("kind"),
        name=named.get("name"),
        verb=verb if verb in _COMMANDS else None,
        function=function,
    )
    return DatabaseProblem(
        STRUCTURAL, f"{cause} (SQLSTATE {sqlstate})", cause=cause, fix=fix, function=function
    )


def _structural_fix(
    sqlstate: str,
    *,
    rls: bool,
    kind: str | None,
    name: str | None,
    verb: str | None,
    function: str | None,
) -> str:
    """What fixes a structural refusal: the grant or policy the runtime role lacks on the
    named table (or sequence, schema, function), or the trigger function to change.
    `db grants` covers this tool's own statements, never what an app's trigger uses."""
    if sqlstate != "42501":
        if function is None:
            return "run `followups db upgrade` first"
        uses = f"table {name}, which does not exist" if name else "something that does not exist"
        return f"the trigger function {function} uses {uses}: create it, or fix the function"
    definer = f", or make the trigger function {function} SECURITY DEFINER" if function else ""
    grants = "" if function else " (`followups db grants ROLE` prints what it needs)"
    if rls and name:
        command = f" that allows {verb}" if verb else ""
        return f"give the runtime role a policy on {name}{command}{definer}{grants}"
    if kind in ("sequence", "schema", "type"):
        return f"grant USAGE on {kind} {name} to the runtime role{definer}{grants}"
    if kind in ("function", "procedure"):
        return f"grant EXECUTE on {kind} {name} to the runtime role{definer}{grants}"
    if kind and name:
        return f"grant {verb or 'what it needs'} on {name} to the runtime role{definer}{grants}"
    return f"grant the runtime role the privilege it lacks{definer}{grants}"


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
    if _SQLITE_STRUCTURAL.match(message):
        # An object missing (SQLite has no privileges): the schema, or an app trigger.
        return DatabaseProblem(
            STRUCTURAL,
            f"{message} ({code})",
            cause=message,
            fix="run `followups db upgrade` first, or fix the app's trigger that uses it",
        )
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
    health data), with a hint when the schema is missing or a privilege is. A refusal
    inside an app's trigger function names that function and the grant or policy it
    lacks: `db grants` does not cover what an app's trigger uses. Never the database
    password: classify_error scrubs it."""
    problem = classify_error(exc)
    if problem.kind == REFUSED:
        return problem.summary
    if problem.function and problem.cause and problem.fix:
        return f"{problem.cause} ({problem.fix})"
    first_line = problem.cause or problem.summary
    if "no such table" in first_line or (
        "relation" in first_line and "does not exist" in first_line
    ):
        first_line += " (run `followups db upgrade` first)"
    elif "permission denied" in first_line or "row-level security" in first_line:
        first_line += (
            " (this database role lacks a grant or policy; `followups db grants ROLE` "
            "prints what a runtime role needs)"
        )
    elif problem.structural and problem.fix:
        first_line += f" ({problem.fix})"
    return first_line


class Database:
    """Owns the engine; hands out one Repository per transaction.

    Also a context manager (`with Database(url) as db:`) that disposes of the engine, and
    so of its pooled connections, when the block ends, however it ends."""

    def __init__(self, url: str, *, pool_size: int = 2, create: bool = True) -> None:
        """`create=False`: an SQLite file that does not exist is an error (ConfigError)
        rather than a new empty database, so that a command pointed at the wrong place
        (FOLLOWUPS_DATABASE_URL unset: the default file in the current directory) says so
        instead of running against nothing."""
        self.url = url
        path = sqlite_path(url)
        if path is not None and not path.exists():
            if not create:
                raise ConfigError(
                    f"no SQLite database at {path} (FOLLOWUPS_DATABASE_URL, by default "
                    "sqlite:///followups.db in the current directory): set "
                    "FOLLOWUPS_DATABASE_URL to the app's database, or run `followups db "
                    "upgrade` to create a new one there"
                )
            if not path.parent.is_dir():
                raise ConfigError(
                    f"cannot create the SQLite database {path}: the directory {path.parent} "
                    "does not exist"
                )
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
