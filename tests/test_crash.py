"""Crashes, with real `send-due` processes and the fake APNs, every row checked afterwards:
a run killed with SIGKILL mid-batch, the database terminating a run's connections
mid-run, and a live run slower than its lease that must not be doubled by a second run.

Leases of a dead run are made to expire by moving `claim_expires_at` into the past
(`expire_leases`) rather than by waiting: the claim filter only compares
`claim_expires_at <= now`, so this is exactly what the passage of time does to those
rows, and waiting even the minimum lease (10 s) per test would add nothing but time.
Lease expiry with real waiting is covered by the slow-run test, where the point is that
a live run's renewals keep its lease from expiring.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, func, select, text, update

from followup_cli import migrate
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_messages, follow_up_requests, follow_up_runs
from tests.conftest import PG_URL, drop_pg_database, new_pg_database, pg_url
from tests.fake_apns import FakeAPNs
from tests.helpers import apns_env
from tests.test_concurrency import Seeded, seed

T = TypeVar("T")
r = follow_up_requests.c


def wait_until(check: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll `check` until it returns something truthy; return that. Bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def open_engine(url: str) -> Engine:
    """The test's own connection, under an application_name the termination query and the
    dead-backend check do not match."""
    if url.startswith("postgresql"):
        return create_engine(url, connect_args={"application_name": "followups-test"})
    return create_engine(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database name or "", URL) of a fresh migrated database on either backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'followups.db'}"
        db = Database(url)
        migrate.upgrade(db)
        db.close()
        yield "", url
        return
    template = request.getfixturevalue("pg_template")
    name = new_pg_database(template)
    yield name, pg_url(name)
    drop_pg_database(name)


@pytest.fixture
def pg(pg_template: str) -> Iterator[tuple[str, str]]:
    """(database name, URL) of a fresh migrated PostgreSQL database."""
    name = new_pg_database(pg_template)
    yield name, pg_url(name)
    drop_pg_database(name)


def start(url: str, apns: FakeAPNs, **env: str) -> subprocess.Popen[str]:
    """`followups send-due` as cron starts it, pushing to the fake APNs."""
    return subprocess.Popen(
        [sys.executable, "-m", "followup_cli", "--database-url", url, "send-due"],
        env={**os.environ, **apns_env(apns), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"send-due did not finish within {timeout}s: {err}") from None
    return proc.returncode, out, err


def expire_leases(engine: Engine) -> int:
    """Move every held lease's end into the past (see the module docstring); return how many."""
    with engine.begin() as conn:
        return conn.execute(
            update(follow_up_requests)
            .where(r.claimed_by.is_not(None))
            .values(claim_expires_at=utcnow() - timedelta(seconds=1))
        ).rowcount


def followups_backends(admin: Engine, name: str) -> int:
    with admin.connect() as conn:
        return int(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = :d AND application_name = 'followups'"
                ),
                {"d": name},
            )
        )


def ids_where(engine: Engine, *where: Any) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(r.id).where(*where)))


def check_each_delivered_once(engine: Engine, seeded: list[Seeded]) -> None:
    """Every row sent, none still leased, exactly one in-app message each."""
    m = follow_up_messages.c
    with engine.connect() as conn:
        statuses = Counter(conn.scalars(select(r.status)))
        still_claimed = conn.scalar(select(func.count()).where(r.claimed_by.is_not(None)))
        per_follow_up = Counter(conn.scalars(select(m.follow_up_id)))
    assert statuses == {"sent": len(seeded)}
    assert still_claimed == 0
    assert set(per_follow_up) == {s.id for s in seeded}
    assert set(per_follow_up.values()) == {1}


@pytest.mark.slow
def test_kill_9_mid_batch_then_the_next_run_delivers_the_rest_once(
    backend: tuple[str, str], apns: FakeAPNs
) -> None:
    """SIGKILL mid-batch: nothing lost, one message each; only pushed-but-unfinished repeat."""
    name, url = backend
    engine = open_engine(url)
    batch, concurrency = 50, 4
    seeded = seed(engine, 300, 100)  # every one with its own device token
    apns.latency = 0.05
    run = start(
        url,
        apns,
        FOLLOWUPS_BATCH_SIZE=str(batch),
        FOLLOWUPS_PUSH_CONCURRENCY=str(concurrency),
    )
    apns.wait_for(70, timeout=30)  # past the first batch, inside the second
    assert run.poll() is None, run.communicate()
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL
    run.communicate()
    # Let the dust settle before reading what the dead run left: the fake has seen its
    # connection go, and on PostgreSQL its backends (and any open transaction) are gone.
    wait_until(lambda: apns.open_connections == 0, "the fake APNs saw the connection close")
    if name:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        wait_until(lambda: followups_backends(admin, name) == 0, "the dead run's backends exit")
        admin.dispose()

    pushed_before = Counter(apns.collapse_ids())
    in_flight_at_kill = [p for p in apns.requests if p.status == 0]
    sent_at_kill = ids_where(engine, r.status == "sent")
    claimed_at_kill = ids_where(engine, r.status == "scheduled", r.claimed_by.is_not(None))
    unfinished = set(pushed_before) - sent_at_kill  # pushed, but their batch never written
    assert 0 < len(pushed_before) < len(seeded)
    assert set(pushed_before.values()) == {1}
    assert len(in_flight_at_kill) <= concurrency
    assert unfinished <= claimed_at_kill  # still leased to the dead run
    assert expire_leases(engine) == len(claimed_at_kill) > 0

    apns.latency = 0.0
    code, _out, err = finish(start(url, apns, FOLLOWUPS_BATCH_SIZE=str(batch)))
    assert code == 0, err
    check_each_delivered_once(engine, seeded)
    engine.dispose()

    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}  # every follow-up got an accepted push
    repeated = {fid for fid, n in pushes.items() if n > 1}
    assert set(pushes.values()) <= {1, 2}
    # Exactly those pushed before the kill whose batch was not finished went out again
    # (the documented bound: the batch being pushed and the one being finished behind it).
    assert repeated == unfinished
    assert len(repeated) <= 2 * batch


@pytest.mark.postgres
@pytest.mark.slow
def test_database_terminating_the_run_is_one_error_line_and_the_next_run_finishes(
    pg: tuple[str, str], apns: FakeAPNs
) -> None:
    """Backends terminated mid-run: exit 1, one `Error: database error:` line; then recovery."""
    name, url = pg
    engine = open_engine(url)
    seeded = seed(engine, 100, 100)
    apns.latency = 0.3  # 100 pushes, 2 at a time: ~15 s if the run were not stopped
    run = start(url, apns, FOLLOWUPS_PUSH_CONCURRENCY="2")
    apns.wait_for(2, timeout=30)  # it is pushing
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    terminated = 0
    until = time.monotonic() + 1.0
    # Repeated for a second, so a run that quietly reconnected would lose it again.
    while time.monotonic() < until and run.poll() is None:
        with admin.connect() as conn:
            terminated += len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :d AND application_name = 'followups'"
                    ),
                    {"d": name},
                ).all()
            )
        time.sleep(0.1)  # the repetition interval, not a synchronization
    admin.dispose()
    code, out, err = finish(run, timeout=30)
    assert terminated > 0
    assert code == 1, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: database error:"), err
    assert 2 <= len(apns.accepted()) < len(seeded)

    assert expire_leases(engine) > 0
    apns.latency = 0.0
    code, _out, err = finish(start(url, apns))
    assert code == 0, err
    check_each_delivered_once(engine, seeded)
    engine.dispose()
    assert set(apns.collapse_ids()) == {s.id for s in seeded}


@pytest.mark.postgres
@pytest.mark.slow
def test_slow_live_run_renews_its_lease_and_is_never_doubled(
    pg: tuple[str, str], apns: FakeAPNs
) -> None:
    """A batch outlasting the 10 s lease: a run started after it would have ended takes nothing."""
    _, url = pg
    engine = open_engine(url)
    seeded = seed(engine, 64, 64)  # one per conversation: 2 pushes really go at once
    apns.latency = 0.45  # 64 pushes, 2 at a time: ~14.5 s in one batch, lease 10 s
    slow = start(url, apns, FOLLOWUPS_LEASE_SECONDS="10", FOLLOWUPS_PUSH_CONCURRENCY="2")

    def lease_end() -> Any:
        with engine.connect() as conn:
            return conn.scalar(select(func.min(r.claim_expires_at)).where(r.status == "scheduled"))

    first_lease_end = wait_until(lease_end, "run A claims its batch")
    wait_until(lambda: lease_end() > first_lease_end, "run A renews its lease", timeout=10)
    # Start B only once A's original lease has run out: waiting for the time itself.
    time.sleep(max(0.0, (first_lease_end - utcnow()).total_seconds()) + 0.2)
    assert slow.poll() is None and lease_end() > utcnow()
    second = start(url, apns, FOLLOWUPS_LEASE_SECONDS="10")
    code_b, _out_b, err_b = finish(second, timeout=30)
    assert slow.poll() is None  # B ran and ended while A still held its whole batch
    code_a, _out_a, err_a = finish(slow, timeout=30)
    assert (code_a, code_b) == (0, 0), (err_a, err_b)

    with engine.connect() as conn:
        runs = conn.execute(select(follow_up_runs.c.pid, follow_up_runs.c.claimed)).all()
    claimed_by_pid = {run.pid: run.claimed for run in runs}
    assert claimed_by_pid == {slow.pid: len(seeded), second.pid: 0}
    check_each_delivered_once(engine, seeded)
    engine.dispose()
    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}
    assert set(pushes.values()) == {1}
