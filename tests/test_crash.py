"""Crashes: a `send-due` killed with SIGKILL mid-batch, the database dropping the run's
connections mid-run, and a slow but live run that must not be doubled. Real processes,
real PostgreSQL, the fake APNs; every row checked afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text, update

from followup_cli.db import Database
from followup_cli.tables import follow_up_messages, follow_up_requests
from tests.conftest import drop_pg_database, new_pg_database, pg_url
from tests.fake_apns import FakeAPNs
from tests.helpers import apns_env
from tests.test_concurrency import seed

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pg(pg_template: str) -> Iterator[tuple[str, str]]:
    """(database name, URL) of a fresh migrated PostgreSQL database."""
    name = new_pg_database(pg_template)
    yield name, pg_url(name)
    drop_pg_database(name)


def start(url: str, apns: FakeAPNs, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, **apns_env(apns), "FOLLOWUPS_DATABASE_URL": url, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "followup_cli", "--quiet", "send-due"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def expire_leases(db: Database) -> int:
    """Stand-in for waiting FOLLOWUPS_LEASE_SECONDS: move the dead run's lease end into
    the past, exactly what the passage of time would do to it."""
    r = follow_up_requests.c
    with db.engine.begin() as conn:
        return conn.execute(
            update(follow_up_requests)
            .where(r.claimed_by.is_not(None))
            .values(claim_expires_at=text("now() - interval '1 second'"))
        ).rowcount


def check_all_delivered_once(db: Database, tokens: dict[str, str | None]) -> None:
    r, m = follow_up_requests.c, follow_up_messages.c
    with db.engine.connect() as conn:
        statuses = Counter(conn.scalars(select(r.status)))
        stuck = conn.scalar(select(func.count()).where(r.claimed_by.is_not(None)))
        per_follow_up = Counter(conn.scalars(select(m.follow_up_id)))
    assert statuses == {"sent": len(tokens)}
    assert stuck == 0
    assert len(per_follow_up) == len(tokens) and set(per_follow_up.values()) == {1}


def test_kill_9_mid_batch_then_the_next_run_finishes(pg: tuple[str, str], apns: FakeAPNs) -> None:
    """Nothing lost, no second message; only pushes of the killed run's unfinished batches
    repeat (the collapse id makes the phone show them once)."""
    _, url = pg
    db = Database(url)
    tokens = seed(db, 300, 120)
    apns.latency = 0.05
    batch = 50
    run = start(url, apns, FOLLOWUPS_BATCH_SIZE=str(batch), FOLLOWUPS_PUSH_CONCURRENCY="4")
    apns.wait_for(60, timeout=60)
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL
    pushed_before = Counter(apns.collapse_ids())
    assert 0 < len(pushed_before) < sum(1 for t in tokens.values() if t)
    assert expire_leases(db) > 0

    finish = start(url, apns)
    out, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err
    check_all_delivered_once(db, tokens)
    db.close()

    pushes = Counter(apns.collapse_ids())
    with_token = {fid for fid, token in tokens.items() if token}
    assert set(pushes) == with_token  # every follow-up with a token was pushed
    repeated = {fid for fid, n in pushes.items() if n > 1}
    assert all(pushes[fid] == 2 for fid in repeated)
    assert repeated <= set(pushed_before)  # only what the killed run had pushed
    # The killed run had at most its batch in flight and the previous one unfinished.
    assert len(repeated) <= 2 * batch


def test_database_dropping_the_run_is_one_line_and_the_next_run_finishes(
    pg: tuple[str, str], apns: FakeAPNs
) -> None:
    """Connections killed mid-run: exit 1, one `Error:` line, no traceback; then recovery."""
    name, url = pg
    db = Database(url)
    tokens = seed(db, 100, 100)
    apns.latency = 0.3
    run = start(url, apns, FOLLOWUPS_PUSH_CONCURRENCY="2")
    apns.wait_for(2, timeout=30)
    admin = Database(pg_url("postgres"))
    deadline = time.monotonic() + 3
    while run.poll() is None and time.monotonic() < deadline:
        with admin.engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND application_name = 'followups'"
                ),
                {"d": name},
            )
        time.sleep(0.05)
    admin.close()
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: database error:")
    assert "Traceback" not in err

    db.engine.dispose()  # its pooled connections were terminated too (same application name)
    expire_leases(db)
    apns.latency = 0.0
    finish = start(url, apns)
    _, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err
    check_all_delivered_once(db, tokens)
    db.close()


def test_slow_live_run_renews_its_leases_and_is_never_doubled(
    pg: tuple[str, str], apns: FakeAPNs
) -> None:
    """A batch outlasting the lease: a second run started after the lease would have
    ended finds nothing to take; every follow-up is pushed and written once."""
    _, url = pg
    db = Database(url)
    tokens = seed(db, 60, 60)
    apns.latency = 0.4  # 60 pushes, 2 at a time: about 12 s, more than the 10 s lease
    slow = start(url, apns, FOLLOWUPS_LEASE_SECONDS="10", FOLLOWUPS_PUSH_CONCURRENCY="2")
    apns.wait_for(2, timeout=30)
    time.sleep(10.5)
    assert slow.poll() is None  # still pushing
    second = start(url, apns, FOLLOWUPS_LEASE_SECONDS="10")
    out2, err2 = second.communicate(timeout=60)
    out1, err1 = slow.communicate(timeout=60)
    assert (slow.returncode, second.returncode) == (0, 0), (err1, err2)
    assert "claimed 0" in out2
    check_all_delivered_once(db, tokens)
    db.close()
    assert set(Counter(apns.collapse_ids()).values()) == {1}
