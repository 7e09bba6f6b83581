"""send-due on both backends: what is due, exactly once, in order, and what is left alone."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from followup_cli.alerts import LogAlerter
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery import send_due
from followup_cli.push.log import LogPusher
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_requests, follow_up_runs
from tests.helpers import app_row, messages, row


def run(db: Database, settings: Settings, **kw: object):  # type: ignore[no-untyped-def]
    return send_due(db, LogPusher(), settings, LogAlerter(), **kw)  # type: ignore[arg-type]


def test_due_follow_up_is_sent_once_with_one_message(db: Database, settings: Settings) -> None:
    """A row with only the app's columns, due now, ends sent with one in-app message."""
    fid = app_row(db)
    report = run(db, settings)
    assert (report.claimed, report.sent, report.failed, report.exit_code) == (1, 1, 0, 0)
    r = row(db, fid)
    assert r.status == "sent"
    assert r.sent_at is not None
    assert r.claimed_by is None
    [m] = messages(db, fid)
    assert m.message_content == "How is Maya's fever today?"
    assert m.is_from_user is False
    assert m.conversation_id == r.conversation_id
    assert m.user_id == "parent-1"
    assert run(db, settings).claimed == 0
    assert len(messages(db, fid)) == 1


def test_cancelled_future_sent_and_unknown_rows_are_untouched(
    db: Database, settings: Settings
) -> None:
    """Only scheduled rows whose time has come are delivered."""
    cancelled = app_row(db, status="cancelled")
    future = app_row(db, scheduled_for=utcnow() + timedelta(hours=1))
    already = app_row(db, status="sent")
    odd = app_row(db, status="on_hold")
    failed = app_row(db, status="failed")
    report = run(db, settings)
    assert report.claimed == 0
    for fid, status in [
        (cancelled, "cancelled"),
        (future, "scheduled"),
        (already, "sent"),
        (odd, "on_hold"),
        (failed, "failed"),
    ]:
        assert row(db, fid).status == status
        assert messages(db, fid) == []


def test_long_overdue_is_sent_at_once(db: Database, settings: Settings) -> None:
    """A follow-up due a month ago goes out on the next run."""
    fid = app_row(db, scheduled_for=utcnow() - timedelta(days=30))
    run(db, settings)
    assert row(db, fid).status == "sent"


def test_one_conversation_in_scheduled_order_with_increasing_timestamps(
    db: Database, settings: Settings
) -> None:
    """Several due for one conversation: messages in scheduled order, timestamps strictly up."""
    conversation = str(uuid.uuid4())
    base = utcnow() - timedelta(hours=1)
    # Inserted out of order, all due; frozen time so one clock reading serves them all.
    ids = {}
    for minutes in (30, 10, 20, 0):
        ids[minutes] = app_row(
            db,
            conversation_id=conversation,
            scheduled_for=base + timedelta(minutes=minutes),
            display_text=f"m{minutes}",
        )
    with freeze_time(utcnow()):
        run(db, replace(settings, batch_size=2))
    got = [m for m in messages(db) if m.conversation_id == conversation]
    assert [m.message_content for m in got] == ["m0", "m10", "m20", "m30"]
    stamps = [m.timestamp for m in got]
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def test_no_device_token_is_delivered_in_app(db: Database, settings: Settings) -> None:
    """Without a token the in-app message is the delivery."""
    fid = app_row(db, device_token=None)
    report = run(db, settings)
    assert (report.sent, report.pushed, report.in_app_only) == (1, 0, 1)
    assert row(db, fid).status == "sent"
    assert len(messages(db, fid)) == 1


def test_batches_and_limit(db: Database, settings: Settings) -> None:
    """By default everything due is delivered batch by batch; --limit caps a run."""
    for _ in range(7):
        app_row(db)
    first = run(db, replace(settings, batch_size=2), limit=3)
    assert first.claimed == 3
    rest = run(db, replace(settings, batch_size=2))
    assert rest.claimed == 4
    assert len(messages(db)) == 7


def test_rows_becoming_due_during_a_run_wait_for_the_next(db: Database, settings: Settings) -> None:
    """A run delivers what was due when it started, so it always ends."""
    now = utcnow()
    app_row(db, scheduled_for=now - timedelta(seconds=1))
    later = app_row(db, scheduled_for=now + timedelta(seconds=30))
    with freeze_time(now):
        assert run(db, settings).sent == 1
    assert row(db, later).status == "scheduled"


def test_expired_lease_is_taken_over_and_live_lease_is_not(
    db: Database, settings: Settings
) -> None:
    """A row claimed by a run that died comes back after its lease; a live claim does not."""
    now = utcnow()
    stale = app_row(db)
    live = app_row(db)
    with db.engine.begin() as conn:
        t = follow_up_requests.c
        conn.execute(
            update(follow_up_requests)
            .where(t.id == stale)
            .values(claimed_by="dead-run", claim_expires_at=now - timedelta(seconds=1))
        )
        conn.execute(
            update(follow_up_requests)
            .where(t.id == live)
            .values(claimed_by="live-run", claim_expires_at=now + timedelta(seconds=60))
        )
    report = run(db, settings)
    assert report.sent == 1
    assert row(db, stale).status == "sent"
    assert row(db, live).status == "scheduled"
    assert row(db, live).claimed_by == "live-run"


def test_later_follow_up_waits_while_an_earlier_one_is_in_flight(
    db: Database, settings: Settings
) -> None:
    """Per-conversation order across runners: nothing overtakes a leased earlier follow-up."""
    conversation = str(uuid.uuid4())
    now = utcnow()
    first = app_row(db, conversation_id=conversation, scheduled_for=now - timedelta(minutes=2))
    second = app_row(db, conversation_id=conversation, scheduled_for=now - timedelta(minutes=1))
    other = app_row(db)
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.id == first)
            .values(claimed_by="other-run", claim_expires_at=now + timedelta(seconds=60))
        )
    assert run(db, settings).sent == 1
    assert row(db, other).status == "sent"
    assert row(db, second).status == "scheduled"


def test_each_run_is_recorded(db: Database, settings: Settings) -> None:
    """Runs leave a row (start, end, counts, outcome), so monitoring needs no log files."""
    app_row(db)
    report = run(db, settings)
    with db.engine.connect() as conn:
        [r] = conn.execute(select(follow_up_runs)).all()
    assert r.id == report.run_id
    assert (r.claimed, r.sent, r.failed, r.outcome, r.push_backend) == (1, 1, 0, "completed", "log")
    assert r.finished_at >= r.started_at


def test_unparseable_ids_fail_that_row_only(tmp_path: object, settings: Settings) -> None:
    """SQLite holds whatever the app wrote: a conversation id that is not a UUID fails with
    missing_recipient and the rest of the batch is delivered."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's uuid column cannot hold such a value")
    db = Database(settings.database_url)
    bad = app_row(db, conversation_id="conversation-42")
    good = app_row(db)
    report = run(db, settings)
    assert (row(db, bad).status, row(db, bad).failure_reason) == ("failed", "missing_recipient")
    assert row(db, good).status == "sent"
    assert (report.sent, report.failed) == (1, 1)
    db.close()


def test_a_failed_lease_renewal_does_not_stop_the_renewals() -> None:
    """A renewal that fails once (a dropped connection) is logged and retried, so a slow
    batch keeps its leases and is never taken over by another run."""
    import asyncio

    from followup_cli.delivery import renew_periodically

    calls: list[int] = []

    def renew() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection reset")

    async def run_for_a_while() -> None:
        renewer = asyncio.ensure_future(renew_periodically(renew, 0.01))
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        renewer.cancel()

    asyncio.run(asyncio.wait_for(run_for_a_while(), timeout=5))
    assert len(calls) >= 3
