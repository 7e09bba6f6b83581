"""Exactly once, in order, with several real `send-due` processes at once on PostgreSQL,
reached directly and through PgBouncer in transaction pooling mode.

Eight processes start together over 2,000 due follow-ups in 300 conversations, with
small batches so their claims interleave and a little APNs latency so their pushes
overlap. Afterwards every row, every in-app message and every push the fake APNs
accepted is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import select

from followup_cli.db import Database
from followup_cli.tables import follow_up_messages, follow_up_requests, follow_up_runs
from tests.fakes.apns import FakeAPNs
from tests.helpers import (
    Seeded,
    apns_env,
    drop_pg_database,
    new_pg_database,
    pg_url,
    require_pgbouncer,
    seed,
)

ROWS = 2000
CONVERSATIONS = 300
PROCESSES = 8
BATCH_SIZE = 50


def send_due_command(url: str) -> list[str]:
    return [sys.executable, "-m", "followup_cli", "--database-url", url, "send-due"]


def run_processes(
    url: str, apns: FakeAPNs, count: int, out_dir: Path, timeout: float = 90.0
) -> list[tuple[int, str, str]]:
    """Start `count` send-due processes at once; (exit code, stdout, stderr) of each.

    Output goes to files, so no process can block on a full pipe while another is waited for.
    """
    env = {**os.environ, **apns_env(apns), "FOLLOWUPS_BATCH_SIZE": str(BATCH_SIZE)}
    started: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    for n in range(count):
        out, err = out_dir / f"run{n}.out", out_dir / f"run{n}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(send_due_command(url), env=env, stdout=stdout, stderr=stderr)
        started.append((proc, out, err))
    results = []
    try:
        for proc, out, err in started:
            code = proc.wait(timeout=timeout)
            results.append((code, out.read_text(), err.read_text()))
    finally:
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.fixture(params=["direct", "pgbouncer"])
def shared_url(request: pytest.FixtureRequest, pg_template: str) -> Iterator[str]:
    """A fresh migrated database, reached directly or through PgBouncer."""
    base = require_pgbouncer() if request.param == "pgbouncer" else None
    name = new_pg_database(pg_template)
    yield pg_url(name) if base is None else pg_url(name, base=base)
    drop_pg_database(name)


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_processes_deliver_each_follow_up_exactly_once_in_order(
    shared_url: str, apns: FakeAPNs, tmp_path: Path
) -> None:
    """8 concurrent runs over 2,000 due: all sent, one message and one push each, in order."""
    apns.latency = 0.002
    db = Database(shared_url)
    try:
        seeded = seed(db.engine, ROWS, CONVERSATIONS, tokenless_every=10)
        results = run_processes(shared_url, apns, PROCESSES, tmp_path)
        r, m, u = follow_up_requests.c, follow_up_messages.c, follow_up_runs.c
        with db.engine.connect() as conn:
            statuses = Counter(conn.scalars(select(r.status)))
            still_claimed = conn.scalars(select(r.id).where(r.claimed_by.is_not(None))).all()
            stamps = dict(conn.execute(select(m.follow_up_id, m.timestamp)).all())
            per_follow_up = Counter(conn.scalars(select(m.follow_up_id)))
            runs = conn.execute(select(u.claimed, u.sent, u.outcome)).all()
    finally:
        db.close()

    for code, _out, err in results:
        assert code == 0, err
    assert statuses == {"sent": ROWS}
    assert still_claimed == []
    assert len(per_follow_up) == ROWS and set(per_follow_up.values()) == {1}
    assert set(per_follow_up) == {s.id for s in seeded}

    # The runs really shared the work, and between them claimed each follow-up once.
    assert len(runs) == PROCESSES and {o for _, _, o in runs} == {"completed"}
    assert sum(c for c, _, _ in runs) == ROWS and sum(s for _, s, _ in runs) == ROWS
    assert sum(1 for c, _, _ in runs if c > 0) >= 2, runs

    # One accepted push per follow-up with a token, to its own device; none without.
    tokens = {s.id: s.device_token for s in seeded}
    pushes = Counter(apns.collapse_ids())
    with_token = {fid for fid, token in tokens.items() if token}
    assert len(with_token) == ROWS - ROWS // 10
    assert set(pushes) == with_token
    assert [fid for fid, n in pushes.items() if n != 1] == []
    assert sum(pushes.values()) == len(with_token)
    assert all(p.token == tokens[p.headers["apns-collapse-id"]] for p in apns.accepted())
    assert [p for p in apns.requests if p.status != 200] == []

    # Per conversation: message timestamps strictly increase in scheduled_for order, and
    # the pushes reached APNs in that order too.
    by_conversation: dict[str, list[Seeded]] = defaultdict(list)
    for s in sorted(seeded, key=lambda s: s.scheduled_for):
        by_conversation[s.conversation_id].append(s)
    assert min(len(v) for v in by_conversation.values()) >= 2
    push_position = {p.headers["apns-collapse-id"]: n for n, p in enumerate(apns.accepted())}
    for conversation, items in by_conversation.items():
        times = [stamps[s.id] for s in items]
        assert all(a < b for a, b in pairwise(times)), conversation
        positions = [push_position[s.id] for s in items if s.device_token]
        assert positions == sorted(positions), conversation
