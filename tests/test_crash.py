"""Crashes, with real `send-due` processes and the fake APNs, every row checked afterwards:
a run killed with SIGKILL mid-batch (it repeats only what was in flight and the last
small group), the database terminating a run's connections mid-run or restarting (the
run waits for it and finishes its work; nothing is pushed twice), the database away for
longer than the lease (the run ends with one error line), and a live run slower than its
lease that must not be doubled by a second run.

The restarts use a PostgreSQL server of the test's own (tests/private_postgres.py):
the shared test server must never be restarted.

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
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from followup_cli.clock import utcnow
from followup_cli.delivery import MAX_UNFINISHED
from followup_cli.tables import follow_up_requests, follow_up_runs
from tests import private_postgres
from tests.fakes.apns import FakeAPNs
from tests.helpers import (
    PG_URL,
    REQUIRE_PG,
    check_each_delivered_once,
    check_in_order,
    drop_pg_database,
    expire_leases,
    finish_run,
    new_pg_database,
    open_engine,
    pg_url,
    seed,
    start_apns_run,
)

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


@pytest.fixture
def pg(pg_template: str) -> Iterator[tuple[str, str]]:
    """(database name, URL) of a fresh migrated PostgreSQL database."""
    name = new_pg_database(pg_template)
    yield name, pg_url(name)
    drop_pg_database(name)


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


def kill_and_settle(run: subprocess.Popen[str], apns: FakeAPNs, name: str) -> None:
    """SIGKILL, then wait until the fake has seen the connection go and, on PostgreSQL,
    the dead run's backends (and any open transaction) are gone."""
    assert run.poll() is None, run.communicate()
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL
    run.communicate()
    wait_until(lambda: apns.open_connections == 0, "the fake APNs saw the connection close")
    if name:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        wait_until(lambda: followups_backends(admin, name) == 0, "the dead run's backends exit")
        admin.dispose()


@pytest.mark.slow
def test_kill_9_mid_batch_repeats_only_the_last_pushes(
    backend: tuple[str, str], apns: FakeAPNs
) -> None:
    """SIGKILL deep into one 1,000 batch: nothing lost, one message each, and only the
    pushes answered since the last finished group (or still in flight) are repeated."""
    name, url = backend
    engine = open_engine(url)
    batch, concurrency = 1000, 8
    seeded = seed(engine, 1000, 300)  # every one with its own device token
    apns.latency = 0.05
    run = start_apns_run(
        url,
        apns,
        FOLLOWUPS_BATCH_SIZE=str(batch),
        FOLLOWUPS_PUSH_CONCURRENCY=str(concurrency),
    )
    # More pushes than the bound asserted below (a run that finished only whole batches
    # would repeat them all), with 400 still to go in the only batch.
    apns.wait_for(600, timeout=60)
    kill_and_settle(run, apns, name)

    pushed_before = Counter(apns.collapse_ids())
    in_flight_at_kill = [p for p in apns.requests if p.status == 0]
    sent_at_kill = ids_where(engine, r.status == "sent")
    claimed_at_kill = ids_where(engine, r.status == "scheduled", r.claimed_by.is_not(None))
    unfinished = set(pushed_before) - sent_at_kill  # pushed, but not finished in time
    assert 0 < len(pushed_before) < len(seeded)
    assert set(pushed_before.values()) == {1}
    assert len(in_flight_at_kill) <= concurrency
    assert unfinished <= claimed_at_kill  # still leased to the dead run
    assert len(sent_at_kill) >= len(pushed_before) - concurrency - MAX_UNFINISHED
    assert expire_leases(engine) == len(claimed_at_kill) > 0

    apns.latency = 0.0
    code, _out, err = finish_run(start_apns_run(url, apns, FOLLOWUPS_BATCH_SIZE=str(batch)))
    assert code == 0, err
    check_each_delivered_once(engine, seeded)
    check_in_order(engine, seeded)
    engine.dispose()

    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}  # every follow-up got an accepted push
    repeated = {fid for fid, n in pushes.items() if n > 1}
    assert set(pushes.values()) <= {1, 2}
    # Exactly those pushed before the kill but not finished went out again: answers not
    # yet handed to the database, and the groups being written (at most MAX_UNFINISHED).
    assert repeated == unfinished
    assert len(repeated) <= concurrency + MAX_UNFINISHED
    print(f"kill -9 after {len(pushed_before)} accepted pushes: {len(repeated)} repeated")


@pytest.mark.slow
def test_kill_9_while_pushes_hang_repeats_only_those_in_flight(
    backend: tuple[str, str], apns: FakeAPNs
) -> None:
    """Every answered push is finished while the batch is still being pushed: when APNs
    stops answering and the run is killed, only the unanswered pushes go out again."""
    name, url = backend
    engine = open_engine(url)
    batch, concurrency = 300, 4
    seeded = seed(engine, 300, 100)
    apns.latency = 0.02
    run = start_apns_run(
        url,
        apns,
        FOLLOWUPS_BATCH_SIZE=str(batch),
        FOLLOWUPS_PUSH_CONCURRENCY=str(concurrency),
    )
    apns.wait_for(100, timeout=30)
    apns.respond(200, action="stall")  # from now on APNs never answers

    def hanging() -> set[str]:
        return {p.headers["apns-collapse-id"] for p in apns.requests if p.reason == "stall"}

    # Every slot hangs: no push can be answered any more.
    wait_until(lambda: len(hanging()) == concurrency, "every push slot hangs")
    wait_until(
        lambda: ids_where(engine, r.status == "sent") == set(apns.collapse_ids()),
        "every accepted push is finished, although the batch is not",
    )
    kill_and_settle(run, apns, name)
    assert ids_where(engine, r.status == "sent") == set(apns.collapse_ids())
    in_flight = hanging()
    expire_leases(engine)

    apns.clear_rules()
    apns.latency = 0.0
    code, _out, err = finish_run(start_apns_run(url, apns, FOLLOWUPS_BATCH_SIZE=str(batch)))
    assert code == 0, err
    check_each_delivered_once(engine, seeded)
    check_in_order(engine, seeded)
    engine.dispose()
    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}
    assert set(pushes.values()) == {1}  # no accepted push was repeated
    requests = Counter(p.headers["apns-collapse-id"] for p in apns.requests)
    assert {fid for fid, n in requests.items() if n > 1} == in_flight


@pytest.mark.postgres
@pytest.mark.slow
def test_database_terminating_the_runs_connections_is_waited_for_and_nothing_repeats(
    pg: tuple[str, str], apns: FakeAPNs
) -> None:
    """Backends terminated mid-run, again and again for a second: the run reconnects,
    finishes every follow-up it pushed, and completes; none is pushed twice."""
    name, url = pg
    engine = open_engine(url)
    seeded = seed(engine, 100, 100)
    apns.latency = 0.1  # 100 pushes, 2 at a time: about 5 s
    run = start_apns_run(url, apns, FOLLOWUPS_PUSH_CONCURRENCY="2")
    apns.wait_for(2, timeout=30)  # it is pushing
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    terminated = 0
    until = time.monotonic() + 1.0
    # Repeated for a second, so a run that quietly reconnected loses it again.
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
    code, out, err = finish_run(run, timeout=60)
    assert terminated > 0
    assert code == 0, (out, err)
    assert "Traceback" not in err
    check_each_delivered_once(engine, seeded)
    check_in_order(engine, seeded)
    engine.dispose()
    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}
    assert set(pushes.values()) == {1}


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[private_postgres.PrivateCluster]:
    """A PostgreSQL server of this module's own, which a test may restart or stop."""
    problem = private_postgres.why_unavailable()
    if problem is not None:
        if REQUIRE_PG:
            pytest.fail(f"cannot make a private PostgreSQL server: {problem}")
        pytest.skip(f"cannot make a private PostgreSQL server: {problem}")
    cluster = private_postgres.PrivateCluster()
    yield cluster
    cluster.remove()


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restart_mid_run_is_waited_for_and_nothing_repeats(
    private_cluster: private_postgres.PrivateCluster, apns: FakeAPNs
) -> None:
    """A real restart (fast shutdown, start) while 3,000 are drained: the run waits for
    the database, finishes what APNs accepted, goes on, and completes; none twice."""
    url = private_cluster.new_database()
    engine = open_engine(url)
    seeded = seed(engine, 3000, 1000)
    engine.dispose()
    apns.latency = 0.05
    # 10 streams: about 15 s in all, so the run is still draining when the restart is over.
    run = start_apns_run(url, apns, FOLLOWUPS_PUSH_CONCURRENCY="10")
    apns.wait_for(1000, timeout=60)
    assert run.poll() is None
    private_cluster.restart()
    assert run.poll() is None, "the run ended before the restart was over: nothing was tested"
    code, out, err = finish_run(run, timeout=120)
    assert code == 0, (out, err)
    assert "Traceback" not in err
    engine = open_engine(url)
    check_each_delivered_once(engine, seeded)
    check_in_order(engine, seeded)
    engine.dispose()
    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}
    assert set(pushes.values()) == {1}
    print(f"restart mid-run: {len(seeded)} delivered, 0 pushed twice")


@pytest.mark.postgres
@pytest.mark.slow
def test_database_away_longer_than_the_lease_ends_the_run_with_one_error_line(
    private_cluster: private_postgres.PrivateCluster, apns: FakeAPNs
) -> None:
    """Stopped for longer than the 10 s lease: the run gives up with one `Error:` line and
    exit 1; once it is back, the next run finishes the work."""
    url = private_cluster.new_database()
    engine = open_engine(url)
    seeded = seed(engine, 200, 200)
    engine.dispose()
    apns.latency = 0.2  # 200 pushes, 4 at a time: 10 s, far longer than stopping the server
    run = start_apns_run(url, apns, FOLLOWUPS_LEASE_SECONDS="10", FOLLOWUPS_PUSH_CONCURRENCY="4")
    apns.wait_for(40, timeout=30)
    private_cluster.stop()
    assert run.poll() is None, "the run ended before the server stopped: nothing was tested"
    try:
        code, out, err = finish_run(run, timeout=60)
    finally:
        private_cluster.start()
    assert code == 1, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [err.splitlines()[-1]], err
    assert errors[0].startswith("Error: database error (PostgreSQL 127.0.0.1:"), err
    pushed_before = set(apns.collapse_ids())

    engine = open_engine(url)
    sent_before = ids_where(engine, r.status == "sent")
    expire_leases(engine)
    apns.latency = 0.0
    code, _out, err = finish_run(start_apns_run(url, apns))
    assert code == 0, err
    check_each_delivered_once(engine, seeded)
    engine.dispose()
    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}
    repeated = {fid for fid, n in pushes.items() if n > 1}
    assert repeated == pushed_before - sent_before
    assert len(repeated) <= 4 + MAX_UNFINISHED


@pytest.mark.postgres
@pytest.mark.slow
def test_slow_live_run_renews_its_lease_and_is_never_doubled(
    pg: tuple[str, str], apns: FakeAPNs
) -> None:
    """A batch outlasting the 10 s lease: a run started after it would have ended takes nothing."""
    _, url = pg
    engine = open_engine(url)
    seeded = seed(engine, 64, 64)  # one per conversation: 2 pushes really go at once
    apns.latency = 0.6  # 64 pushes, 2 at a time: ~19 s in one batch, lease 10 s
    slow = start_apns_run(url, apns, FOLLOWUPS_LEASE_SECONDS="10", FOLLOWUPS_PUSH_CONCURRENCY="2")

    def lease_end() -> Any:
        with engine.connect() as conn:
            return conn.scalar(select(func.min(r.claim_expires_at)).where(r.status == "scheduled"))

    first_lease_end = wait_until(lease_end, "run A claims its batch")
    wait_until(lambda: lease_end() > first_lease_end, "run A renews its lease", timeout=10)
    # Start B only once A's original lease has run out: waiting for the time itself.
    time.sleep(max(0.0, (first_lease_end - utcnow()).total_seconds()) + 0.2)
    assert slow.poll() is None and lease_end() > utcnow()
    second = start_apns_run(url, apns, FOLLOWUPS_LEASE_SECONDS="10")
    code_b, _out_b, err_b = finish_run(second, timeout=30)
    assert slow.poll() is None  # B ran and ended while A still held its whole batch
    code_a, _out_a, err_a = finish_run(slow, timeout=30)
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
