"""Shared fixtures: a migrated SQLite or PostgreSQL database per test, and the fake APNs,
FCM and webhook (tests/fakes/). What is not a fixture, such as rows written the way the
iOS app writes them, is in tests/helpers.py.

PostgreSQL tests use FOLLOWUPS_TEST_DATABASE_URL (default: postgresql+psycopg://postgres@
127.0.0.1:5432/test) as the server to create throw-away databases on: each test gets its
own database cloned from a migrated template. Without a server they skip, unless
FOLLOWUPS_TEST_REQUIRE_POSTGRES=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from followup_cli import migrate
from followup_cli.db import Database
from followup_cli.settings import Settings
from tests.helpers import (
    admin_engine,
    drop_pg_database,
    new_pg_database,
    pg_url,
    require_pg,
)

if TYPE_CHECKING:
    from tests.fakes.apns import FakeAPNs
    from tests.fakes.fcm import FakeFCM
    from tests.fakes.webhook import FakeWebhook


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own FOLLOWUPS_* settings must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("FOLLOWUPS_") and not name.startswith("FOLLOWUPS_TEST_"):
            monkeypatch.delenv(name)


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated database that each PostgreSQL test clones (CREATE DATABASE ... TEMPLATE)."""
    require_pg()
    name = f"followups_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(pg_url(name))
    migrate.upgrade(db)
    db.close()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_db_url(pg_template: str) -> Iterator[str]:
    name = new_pg_database(pg_template)
    yield pg_url(name)
    drop_pg_database(name)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database with no tables at all (for migration tests)."""
    require_pg()
    name = new_pg_database()
    yield pg_url(name)
    drop_pg_database(name)


# -- either backend ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'followups.db'}"
        db = Database(url)
        migrate.upgrade(db)
        db.close()
        return url
    return str(request.getfixturevalue("pg_db_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no tables at all: once on SQLite, once on PostgreSQL."""
    url = (
        f"sqlite:///{tmp_path / 'fresh.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("empty_pg_url")
    )
    database = Database(url)
    yield database
    database.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database name or "", URL) of a fresh migrated database on either backend, for
    tests that run the tool as processes."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'followups.db'}"
        db = Database(url)
        migrate.upgrade(db)
        db.close()
        yield "", url
        return
    name = new_pg_database(request.getfixturevalue("pg_template"))
    yield name, pg_url(name)
    drop_pg_database(name)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.close()


@pytest.fixture
def settings(db_url: str) -> Settings:
    """Log backend, no backoff sleeps."""
    return Settings(database_url=db_url, retry_base_seconds=0.0)


# -- fakes ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def apns_server() -> Iterator[FakeAPNs]:
    from tests.fakes.apns import FakeAPNs

    with FakeAPNs() as server:
        yield server


@pytest.fixture
def apns(apns_server: FakeAPNs) -> Iterator[FakeAPNs]:
    apns_server.clear_rules()
    apns_server.reset_records()
    apns_server.reset_tokens()
    apns_server.latency = 0.0
    apns_server.goaway_after = None
    yield apns_server
    apns_server.clear_rules()
    apns_server.reset_records()
    apns_server.goaway_after = None


@pytest.fixture
def apns_settings(settings: Settings, apns: FakeAPNs) -> Settings:
    return replace(
        settings,
        push="apns",
        apns_key_file=_path(apns.key_file),
        apns_key_id=apns.key_id,
        apns_team_id=apns.team_id,
        apns_topic=apns.topic,
        apns_url=apns.url,
        apns_ca_file=_path(apns.ca_file),
        push_timeout_seconds=5.0,
    )


@pytest.fixture(scope="session")
def fcm_server() -> Iterator[FakeFCM]:
    from tests.fakes.fcm import FakeFCM

    with FakeFCM() as server:
        yield server


@pytest.fixture
def fcm(fcm_server: FakeFCM) -> Iterator[FakeFCM]:
    fcm_server.reset()
    yield fcm_server
    fcm_server.reset()


@pytest.fixture
def fcm_settings(settings: Settings, fcm: FakeFCM) -> Settings:
    return replace(
        settings,
        push="fcm",
        fcm_credentials_file=_path(fcm.credentials_file),
        fcm_url=fcm.url,
        fcm_ca_file=_path(fcm.ca_file),
        push_timeout_seconds=5.0,
    )


@pytest.fixture
def both_settings(apns_settings: Settings, fcm_settings: Settings) -> Settings:
    """FOLLOWUPS_PUSH=apns,fcm against both fakes."""
    return replace(
        apns_settings,
        push="apns,fcm",
        fcm_credentials_file=fcm_settings.fcm_credentials_file,
        fcm_url=fcm_settings.fcm_url,
        fcm_ca_file=fcm_settings.fcm_ca_file,
    )


def _path(value: str) -> Path:
    return Path(value)


@pytest.fixture
def webhook() -> Iterator[FakeWebhook]:
    from tests.fakes.webhook import FakeWebhook

    with FakeWebhook() as hook:
        yield hook
