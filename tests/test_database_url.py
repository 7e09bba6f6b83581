"""FOLLOWUPS_DATABASE_URL: a password with @ : / % ? # works as written, an unparsable URL
is one line and exit 2, and no part of the password reaches any output."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from followup_cli import idle, logsetup
from followup_cli.db import Database, classify_error, describe_error, sqlalchemy_url
from followup_cli.errors import EXIT_FAILURE, EXIT_USAGE, ConfigError
from followup_cli.settings import (
    DatabaseURL,
    from_env,
    normalize_database_url,
    parse_database_url,
    redact_url,
)
from tests.helpers import PG_URL, drop_pg_database, followups, new_pg_database, require_pg

PASSWORD = "Secret@Tail:9/x%y"
ENCODED = quote(PASSWORD, safe="")  # Secret%40Tail%3A9%2Fx%25y


def fragments(secret: str) -> set[str]:
    """Every piece of the secret longer than 3 characters, as written and percent-encoded."""
    return {
        form[i : i + 4] for form in (secret, quote(secret, safe="")) for i in range(len(form) - 3)
    }


def assert_nothing_of(secret: str, text: str) -> None:
    shown = sorted(piece for piece in fragments(secret) if piece in text)
    assert shown == [], f"{shown} of the password in: {text!r}"


def url_with(password: str, host: str = "127.0.0.1:5432", database: str = "test") -> str:
    """A URL with the password written raw, as a person pastes it."""
    user = make_url(PG_URL).username or "postgres"
    return f"postgresql+psycopg://{user}:{password}@{host}/{database}"


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        (
            "postgresql+psycopg://app:Secret@Tail-9@127.0.0.1:5432/app",
            ("app", "Secret@Tail-9", "127.0.0.1", 5432, "app"),
        ),
        (
            "postgresql+psycopg://app:Secret@Tail:9/x%y@db.example.com:6543/prod",
            ("app", "Secret@Tail:9/x%y", "db.example.com", 6543, "prod"),
        ),
        (
            "postgresql+psycopg://app:a?b#c/d@db/prod",
            ("app", "a?b#c/d", "db", None, "prod"),
        ),
        (
            "postgresql+psycopg://app:p%40ss%3Aw%2Fd%25@db/prod",
            ("app", "p@ss:w/d%", "db", None, "prod"),
        ),
        (
            "postgresql+psycopg://app:100%sure%2@db/prod",
            ("app", "100%sure%2", "db", None, "prod"),
        ),
        (
            "postgresql+psycopg://app:literal%2541@db/prod",
            ("app", "literal%41", "db", None, "prod"),
        ),
        ("postgresql+psycopg://app:pw@[::1]:5432/app", ("app", "pw", "::1", 5432, "app")),
        (
            "postgresql+psycopg://app:pw@[fe80::1%25eth0]/app",
            ("app", "pw", "fe80::1%eth0", None, "app"),
        ),
        ("postgresql+psycopg://app@db.internal/app", ("app", None, "db.internal", None, "app")),
        (
            "postgresql+psycopg://app:pw@db_1.internal/app",
            ("app", "pw", "db_1.internal", None, "app"),
        ),
        ("postgresql+psycopg:///app", (None, None, None, None, "app")),
        (
            "postgresql+psycopg://app@/app?host=/var/run/postgresql",
            ("app", None, None, None, "app"),
        ),
        (
            "postgresql+psycopg://app:s%C3%A9same@/app?host=/run/pg",
            ("app", "s\u00e9same", None, None, "app"),
        ),
        ("postgres://u:p@h/db", ("u", "p", "h", None, "db")),
        ("postgresql://u:p:q@h:5/db", ("u", "p:q", "h", 5, "db")),
    ],
)
def test_url_parts(url: str, parts: tuple[Any, ...]) -> None:
    """The user-info ends at the last @; user and password are percent-decoded, a stray %
    stays as it is; the host may be a name, an IPv6 address or empty (a socket)."""
    parsed = parse_database_url(url)
    assert parsed is not None
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == parts


def test_query_is_kept_and_read_as_connect_arguments() -> None:
    """?sslmode=...&host=... become the driver's arguments; a repeated one is a tuple."""
    parsed = parse_database_url("postgresql+psycopg://a:b@h/db?sslmode=require&host=x&host=y")
    assert parsed is not None
    assert parsed.query == {"sslmode": "require", "host": ("x", "y")}
    assert parsed.render().endswith("/db?sslmode=require&host=x&host=y")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:Secret@Tail:9/x%y@127.0.0.1:5432/app?sslmode=prefer",
        "postgresql+psycopg://app:a?b#c@[::1]:5432/app",
        "postgresql+psycopg://us%40er:%25%25@h/d%20b",
        "postgresql+psycopg://app@/app?host=/var/run/postgresql",
    ],
)
def test_the_rendered_url_reads_back_the_same_everywhere(url: str) -> None:
    """The form settings hand on (user and password percent-encoded) gives the same parts
    to this parser and to SQLAlchemy's."""
    parsed = parse_database_url(url)
    assert parsed is not None
    rendered = parsed.render()
    assert parse_database_url(rendered) == parsed
    theirs = make_url(rendered)
    assert (theirs.username, theirs.password, theirs.host, theirs.port, theirs.database) == (
        parsed.username,
        parsed.password,
        parsed.host,
        parsed.port,
        parsed.database,
    )


def test_settings_hand_on_the_encoded_url_and_keep_plain_ones_as_they_are() -> None:
    """A raw special character is encoded once; a URL without any is unchanged; sqlite
    URLs pass through."""
    s = from_env({"FOLLOWUPS_DATABASE_URL": "postgres://app:Secret@Tail:9/x%y@db:5432/app"})
    assert s.database_url == f"postgresql+psycopg://app:{ENCODED}@db:5432/app"
    assert normalize_database_url(s.database_url) == s.database_url
    plain = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert normalize_database_url(plain) == plain
    assert normalize_database_url("sqlite:///tmp/x.db?mode=ro") == "sqlite:///tmp/x.db?mode=ro"
    assert parse_database_url("sqlite:///followups.db") is None


def test_the_engine_url_carries_the_password_intact() -> None:
    """SQLAlchemy is given the parts, never the string it would cut at the first @."""
    built = sqlalchemy_url(url_with(PASSWORD, "db.example.com:5432", "app"))
    assert (built.username, built.password, built.host, built.port, built.database) == (
        make_url(PG_URL).username or "postgres",
        PASSWORD,
        "db.example.com",
        5432,
        "app",
    )
    assert built.drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (url_with(PASSWORD, "127.0.0.1:54x2"), "the port is not a number"),
        (url_with(PASSWORD, "127.0.0.1:99999"), "the port is not between 1 and 65535"),
        (url_with(PASSWORD, ""), "the host is empty"),
        (url_with("Secret:Tail", ":5432"), "the host is empty"),
        (url_with(PASSWORD, "db host"), "the host has characters a host name cannot have"),
        (url_with(PASSWORD, "[::1"), "the IPv6 host is not an address in [ ]"),
        (url_with("Secret%FFTail"), "is not UTF-8"),
        ("postgresql+psycopg://app:Secret@Tail-9@db:5432/app@", "the host is empty"),
        ("postgresql+psycopg://app:Secret@Tail?x@db:5x/app", "the port is not a number"),
    ],
)
def test_an_unparsable_url_is_a_config_error_without_the_password(url: str, reason: str) -> None:
    """One line, exit code 2, the reason and how to quote; no piece of the password."""
    with pytest.raises(ConfigError) as info:
        from_env({"FOLLOWUPS_DATABASE_URL": url})
    message = str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert message.startswith("FOLLOWUPS_DATABASE_URL is not a valid database URL (")
    assert reason in message
    assert "@ is %40, : is %3A, / is %2F, % is %25" in message
    assert "\n" not in message
    assert "Secret" not in message and "Tail" not in message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://app:pw@db/app", "must be a sqlite or postgresql URL, got 'mysql'"),
        ("postgresql+asyncpg://app:pw@db/app", "must use the psycopg driver"),
        ("not a url", "is not a database URL"),
    ],
)
def test_other_backends_and_drivers_are_still_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_database_url(url)


@pytest.mark.parametrize(
    "url",
    [
        url_with(PASSWORD, "db.example.com:5432", "prod"),
        url_with(ENCODED, "db.example.com:5432", "prod"),
        f"postgresql+psycopg://app@db.example.com/prod?password={ENCODED}&sslmode=require",
    ],
)
def test_the_shown_url_hides_all_of_the_password(url: str) -> None:
    """safe_database_url (redact_url) reads the URL with the same parser."""
    shown = from_env({"FOLLOWUPS_DATABASE_URL": url}).safe_database_url
    assert shown == redact_url(url)
    assert "***" in shown and "db.example.com" in shown and "/prod" in shown
    assert_nothing_of(PASSWORD, shown)


def test_an_unparsable_url_is_never_shown() -> None:
    assert redact_url(url_with(PASSWORD, "db:x")) == "<unparseable URL>"


# -- scrubbing --------------------------------------------------------------------------


SCRUBBED = "Scrub&Me@Now:1/2%3"


def test_database_errors_never_carry_the_password() -> None:
    """Whatever the driver's text holds, classify_error and describe_error show ***."""
    sqlalchemy_url(url_with(SCRUBBED, "db.example.com"))  # what building an engine registers
    for shown in (SCRUBBED, quote(SCRUBBED, safe="")):
        error = psycopg.OperationalError(f"connection to server failed for {shown}\nmore")
        assert_nothing_of(SCRUBBED, describe_error(error))
        assert "***" in describe_error(error)
        problem = classify_error(error)
        assert problem.transient and "***" in problem.summary


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_carry_the_password(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every record the tool's handler writes is scrubbed, in either format."""
    sqlalchemy_url(url_with(SCRUBBED, "db.example.com"))
    logsetup.configure(logging.INFO, fmt)
    try:
        log = logging.getLogger("followups.test")
        log.warning("could not connect with %s", SCRUBBED)
        log.warning("nor with %s or %s", quote(SCRUBBED, safe=""), json.dumps(SCRUBBED))
    finally:
        logsetup.configure(logging.WARNING, "text")
    err = capsys.readouterr().err
    assert err.count("***") >= 3
    assert_nothing_of(SCRUBBED, err)


def test_a_short_password_is_not_scrubbed_from_every_word() -> None:
    """Three characters or fewer would garble messages: they are not registered."""
    parsed = parse_database_url("postgresql+psycopg://app:pos@db/app")
    assert isinstance(parsed, DatabaseURL)
    assert parsed.password_forms == ()


# -- the real command -------------------------------------------------------------------


def assert_one_error_line(result: Any, code: int) -> str:
    everything = result.stdout + result.stderr
    assert result.returncode == code, everything
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, everything
    assert_nothing_of(PASSWORD, everything)
    return errors[0]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("command", [["stats"], ["send-due"], ["db", "check"]])
def test_unreachable_database_is_exit_1_without_the_password(
    command: list[str], log_format: str
) -> None:
    """A host that does not resolve and a port nobody listens on: one line, exit 1."""
    for host in ("nonexistent.invalid:5432", f"127.0.0.1:{unused_port()}"):
        url = url_with(PASSWORD, host)
        result = followups(url, "--log-format", log_format, *command)
        line = assert_one_error_line(result, EXIT_FAILURE)
        assert line.startswith(f"Error: database error (PostgreSQL {host}/test): ")
        assert host.split(":")[0] in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_unparsable_url_is_exit_2_without_the_password(log_format: str) -> None:
    for url in (url_with(PASSWORD, "127.0.0.1:54x2"), url_with(PASSWORD, "")):
        for command in (["stats"], ["send-due"], ["db", "upgrade", "--sql"]):
            result = followups(url, "--log-format", log_format, *command)
            line = assert_one_error_line(result, EXIT_USAGE)
            assert "is not a valid database URL" in line
            assert "percent-encode" in line


def test_upgrade_sql_does_not_connect_and_shows_no_password() -> None:
    """db upgrade --sql with that password (even on a host that does not exist)."""
    result = followups(url_with(PASSWORD, "nonexistent.invalid:5432"), "db", "upgrade", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE followups_schema_version" in result.stdout
    assert_nothing_of(PASSWORD, result.stdout + result.stderr)


# -- against PostgreSQL, as a role whose password has @ : / % ---------------------------


@dataclass(frozen=True)
class Account:
    role: str
    database: str

    def url(self, password: str = PASSWORD) -> str:
        base = make_url(PG_URL)
        return (
            f"postgresql+psycopg://{self.role}:{password}@{base.host}:{base.port or 5432}/"
            f"{self.database}"
        )


def _admin(statement: sql.Composed) -> None:
    libpq = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def account() -> Iterator[Account]:
    """A throw-away role with that password and a fresh database it owns."""
    require_pg()
    role = f"followups_pw_{uuid.uuid4().hex[:10]}"
    _admin(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PASSWORD)
        )
    )
    try:
        name = new_pg_database()
        try:
            _admin(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(role)
                )
            )
            yield Account(role, name)
        finally:
            drop_pg_database(name)
    finally:
        _admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.mark.postgres
def test_engine_and_idle_run_connect_with_the_password_as_written(account: Account) -> None:
    """The engine and the idle run's bare driver reach the right host, user and database,
    and hand the server the password exactly as written."""
    url = from_env({"FOLLOWUPS_DATABASE_URL": account.url()}).database_url
    with Database(url) as db, db.engine.connect() as conn:
        info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
        assert (info.user, info.dbname, info.password) == (account.role, account.database, PASSWORD)
    opened = idle._connect(url)
    assert opened is not None
    bare = opened[0]
    try:
        assert (bare.info.user, bare.info.dbname, bare.info.password) == (
            account.role,
            account.database,
            PASSWORD,
        )
    finally:
        bare.close()


@pytest.mark.postgres
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_commands_work_with_such_a_password(account: Account, log_format: str) -> None:
    """db upgrade, send-due (delivering, then the idle run) and stats, as cron runs them;
    the upgrade names the database with *** for the password; nothing shows any piece
    of it."""
    url = account.url()
    env = {"FOLLOWUPS_LOG_FORMAT": log_format}  # a bare `send-due` takes the idle path
    upgraded = followups(url, "db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"postgresql+psycopg://{account.role}:***@" in upgraded.stdout
    scheduled = followups(url, "schedule", env=env)  # due now
    delivered = followups(url, "send-due", env=env)
    idle_run = followups(url, "send-due", env=env)
    stats = followups(url, "stats", "--json", env=env)
    for result in (upgraded, scheduled, delivered, idle_run, stats):
        assert result.returncode == 0, result.stderr
        assert_nothing_of(PASSWORD, result.stdout + result.stderr)
    assert "claimed 1, sent 1" in delivered.stdout
    assert "claimed 0, sent 0" in idle_run.stdout
    assert json.loads(stats.stdout)


@pytest.mark.postgres
def test_a_missing_database_is_exit_1_without_the_password(account: Account) -> None:
    """The right server and role, a database that does not exist."""
    missing = Account(account.role, f"{account.database}_missing")
    result = followups(missing.url(), "stats")
    line = assert_one_error_line(result, EXIT_FAILURE)
    assert "does not exist" in line
