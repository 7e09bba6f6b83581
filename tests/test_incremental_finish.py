"""Follow-ups are finished in small groups while their batch is still being pushed: the
per-conversation order of the messages holds across groups, and pushes wait while too
many accepted ones are not recorded yet (a slow or stuck database)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery import MAX_UNFINISHED
from followup_cli.report import RunReport
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_messages, follow_up_requests
from tests.fakes.apns import FakeAPNs
from tests.helpers import app_row, deliver, row, seed

r = follow_up_requests.c


def test_in_app_only_follow_up_waits_for_the_earlier_push_of_its_conversation(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Pushes, in-app-only rows and permanent failures mixed in each conversation: the
    messages' timestamps follow the scheduled order, whichever group finished them."""
    apns.latency = 0.01
    start = utcnow() - timedelta(hours=1)
    order: dict[str, list[str]] = defaultdict(list)
    for c in range(30):
        conversation = str(uuid.uuid4())
        for i in range(6):
            # every third without a token (in-app only), one dead token per conversation
            token = None if i % 3 == 1 else f"{c:02d}{i:02d}".ljust(64, "a")
            fid = app_row(
                db,
                conversation_id=conversation,
                scheduled_for=start + timedelta(seconds=10 * i + c),
                device_token=token,
            )
            order[conversation].append(fid)
    apns.respond(410, "Unregistered", token="0002".ljust(64, "a"))
    report = deliver(db, replace(apns_settings, push_concurrency=8, batch_size=1000))
    assert (report.sent, report.failed) == (179, 1)
    m = follow_up_messages.c
    with db.engine.connect() as conn:
        stamps = dict(conn.execute(select(m.follow_up_id, m.timestamp)).all())
    for conversation, ids in order.items():
        times = [stamps[fid] for fid in ids if fid in stamps]
        assert all(a < b for a, b in zip(times, times[1:], strict=False)), conversation


@pytest.mark.postgres
@pytest.mark.slow
def test_pushes_wait_while_the_database_cannot_record_them(
    pg_db_url: str, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """The messages table locked by someone else: finishing blocks, and the run stops
    pushing once MAX_UNFINISHED accepted pushes are unrecorded; then it carries on."""
    settings = replace(apns_settings, database_url=pg_db_url, push_concurrency=20)
    engine = create_engine(pg_db_url)
    seeded = seed(engine, 1500, 1500)
    apns.latency = 0.005
    db = Database(pg_db_url)
    result: list[RunReport] = []
    runner = threading.Thread(target=lambda: result.append(deliver(db, settings)))
    locker = engine.connect()
    try:
        lock = locker.begin()
        locker.exec_driver_sql("LOCK TABLE follow_up_messages IN EXCLUSIVE MODE")
        runner.start()
        apns.wait_for(MAX_UNFINISHED, timeout=60)
        time.sleep(1.0)  # let it push on if it would: the bound below holds regardless
        pushed_while_locked = len(apns.requests)
        with engine.connect() as conn:
            sent_while_locked = len(conn.scalars(select(r.id).where(r.status == "sent")).all())
        lock.rollback()
    finally:
        locker.close()
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert sent_while_locked == 0
    assert pushed_while_locked <= MAX_UNFINISHED + settings.push_concurrency
    assert result[0].sent == len(seeded)
    assert len(apns.accepted()) == len(seeded)
    assert all(row(db, s.id).status == "sent" for s in seeded[:50])
    db.close()
    engine.dispose()
