"""Exactly once with several real `send-due` processes at once on PostgreSQL, directly and
through PgBouncer in transaction pooling mode."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_messages, follow_up_requests
from tests.conftest import (
    PGBOUNCER_URL,
    REQUIRE_PG,
    drop_pg_database,
    new_pg_database,
    pg_url,
)
from tests.fake_apns import FakeAPNs
from tests.helpers import apns_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROWS = 2000
CONVERSATIONS = 300
PROCESSES = 8


@pytest.fixture(params=["direct", "pgbouncer"])
def shared_url(request: pytest.FixtureRequest, pg_template: str) -> Iterator[str]:
    """A fresh migrated database, reached directly or through PgBouncer."""
    if request.param == "pgbouncer" and not PGBOUNCER_URL:
        if REQUIRE_PG:
            pytest.fail("FOLLOWUPS_TEST_PGBOUNCER_URL is required (set by .ci/run)")
        pytest.skip("FOLLOWUPS_TEST_PGBOUNCER_URL not set (start one with .ci/pgbouncer.sh)")
    name = new_pg_database(pg_template)
    yield pg_url(name) if request.param == "direct" else pg_url(name, base=PGBOUNCER_URL or "")
    drop_pg_database(name)


def seed(db: Database, rows: int, conversations: int) -> dict[str, str | None]:
    """Due follow-ups spread over conversations, each with its own time; 90 % with a
    token. Returns id -> token."""
    start = utcnow() - timedelta(hours=2)
    convs = [str(uuid.uuid4()) for _ in range(conversations)]
    values: list[dict[str, Any]] = []
    for i in range(rows):
        token = None if i % 10 == 9 else f"{i:064x}"
        values.append(
            {
                "id": str(uuid.uuid4()),
                "conversation_id": convs[i % conversations],
                "user_id": f"parent-{i % conversations}",
                "scheduled_for": start + timedelta(seconds=i),
                "urgency": "urgent" if i % 3 == 0 else "routine",
                "display_text": f"check-in {i}",
                "original_message": f"check-in {i}",
                "status": "scheduled",
                "device_token": token,
            }
        )
    with db.engine.begin() as conn:
        conn.execute(insert(follow_up_requests), values)
    return {v["id"]: v["device_token"] for v in values}


def run_at_once(url: str, apns: FakeAPNs, processes: int, **env: str) -> list[Any]:
    environment = {
        **os.environ,
        **apns_env(apns),
        "FOLLOWUPS_DATABASE_URL": url,
        "FOLLOWUPS_BATCH_SIZE": "50",
        "FOLLOWUPS_PUSH_CONCURRENCY": "20",
        **env,
    }
    command = [sys.executable, "-m", "followup_cli", "--quiet", "send-due"]
    procs = [
        subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


def test_eight_processes_deliver_each_follow_up_exactly_once(
    shared_url: str, apns: FakeAPNs
) -> None:
    """8 runs over 2,000 due: all sent, one message and one push each, order kept."""
    apns.latency = 0.002
    db = Database(shared_url)
    tokens = seed(db, ROWS, CONVERSATIONS)
    results = run_at_once(shared_url, apns, PROCESSES)
    for code, _out, err in results:
        assert code == 0, err
    claimed = [int(out.split("claimed ")[1].split(",")[0]) for _, out, _ in results]
    assert sum(claimed) == ROWS
    assert sum(1 for c in claimed if c > 0) >= 2  # the runs really overlapped

    r, m = follow_up_requests.c, follow_up_messages.c
    with db.engine.connect() as conn:
        statuses = Counter(conn.scalars(select(r.status)))
        per_follow_up = Counter(conn.scalars(select(m.follow_up_id)))
        ordered = conn.execute(
            select(r.conversation_id, r.scheduled_for, m.timestamp)
            .join(follow_up_messages, m.follow_up_id == r.id)
            .order_by(r.conversation_id, r.scheduled_for)
        ).all()
    db.close()
    assert statuses == {"sent": ROWS}
    assert len(per_follow_up) == ROWS and set(per_follow_up.values()) == {1}
    pushes = Counter(apns.collapse_ids())
    with_token = {fid for fid, token in tokens.items() if token}
    assert set(pushes) == with_token
    assert set(pushes.values()) == {1}
    stamps: dict[str, list[Any]] = defaultdict(list)
    for conversation, _, stamp in ordered:
        stamps[conversation].append(stamp)
    for conversation, times in stamps.items():
        assert times == sorted(times) and len(set(times)) == len(times), conversation
