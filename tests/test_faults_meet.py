"""Where faults meet: a cancel during retries, a conversation's order when a push service
stops, one follow-up due during a short outage. Each promise is checked with the fault
that used to break it, through the real HTTP/2 client and the fakes, on SQLite and
PostgreSQL. (Signals and kills need real processes: tests/test_signals.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery import MAX_RETRY_PAUSE
from followup_cli.monitoring import CheckRules, check, gather
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_requests
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.webhook import FakeWebhook
from tests.helpers import TOKEN_A, app_row, attempts, deliver, due_again, fcm_token, messages, row

r = follow_up_requests.c


def cancel(db: Database, follow_up_id: str) -> None:
    """What the app does: status cancelled, nothing else touched."""
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests).where(r.id == follow_up_id).values(status="cancelled")
        )


def when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Runs `action` in a thread as soon as `condition` holds (within 10 s)."""

    def watch() -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# -- a cancel is honoured before every request ---------------------------------------------


def test_fcm_cancel_after_a_503_stops_the_retries(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """FCM answers 503 with Retry-After 1; the app cancels 0.05 s later: the retry that
    was due a second later is never sent, and the follow-up stays cancelled."""
    fid = app_row(db, device_token=fcm_token(1))
    fcm.respond("UNAVAILABLE", retry_after="1", times=2)

    def cancel_soon() -> None:
        time.sleep(0.05)
        cancel(db, fid)

    watcher = when(lambda: len(fcm.requests) >= 1, cancel_soon)
    report = deliver(db, fcm_settings)
    watcher.join()
    assert len(fcm.requests) == 1
    assert row(db, fid).status == "cancelled"
    assert messages(db, fid) == []
    assert attempts(db, fid) == [(1, "transient", "UNAVAILABLE")]
    assert (report.sent, report.failed, report.retrying) == (0, 0, 0)


def test_apns_cancel_after_a_503_stops_the_retries(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """The same with APNs' 503 and the backoff's own wait between attempts."""
    fid = app_row(db)
    apns.respond(503, "ServiceUnavailable", times=2)
    # Each answer takes 0.5 s: the app's cancel, made as the first request arrives (the
    # fake counts it in flight then; it records it when it answers), is committed well
    # before the first retry can start, on a loaded machine too.
    apns.latency = 0.5
    watcher = when(lambda: apns.max_streams_in_flight >= 1, lambda: cancel(db, fid))
    deliver(db, replace(apns_settings, retry_base_seconds=0.5, outage_threshold=10))
    watcher.join()
    # A cancel 0.2 s (the check's window) before a retry starts must stop it; a retry
    # that started sooner (the cancel slower than the first answer) is the only one
    # allowed.
    assert len(apns.requests) <= 2
    assert len(apns.accepted()) == 0
    assert row(db, fid).status == "cancelled"
    assert messages(db, fid) == []


def test_cancel_stops_the_resends_of_a_push_apns_did_not_process(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Refused streams are sent again without using an attempt; a cancel meanwhile ends
    them: with FOLLOWUPS_CANCEL_CHECK_SECONDS=0 every resend asks first, so at most the
    one already on its way goes out after the cancel."""
    fid = app_row(db)
    apns.respond(0, action="refuse")
    refused_at_cancel: list[int] = []

    def do_cancel() -> None:
        cancel(db, fid)
        refused_at_cancel.append(len(apns.refused()))

    watcher = when(lambda: len(apns.refused()) >= 3, do_cancel)
    deliver(db, replace(apns_settings, cancel_check_seconds=0.0))
    watcher.join()
    assert row(db, fid).status == "cancelled"
    assert apns.accepted() == []
    assert len(apns.refused()) <= refused_at_cancel[0] + 1


# -- a conversation's order holds whatever stops ---------------------------------------------


def test_in_app_follow_up_waits_behind_an_earlier_one_apns_could_not_take(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """A (APNs) before B (no token) in one conversation; APNs is down: B is not delivered
    in-app ahead of A. When APNs is back and A's pause is over, A then B."""
    conversation = "11111111-2222-3333-4444-555555555555"
    start = utcnow() - timedelta(minutes=5)
    a = app_row(db, conversation_id=conversation, scheduled_for=start, device_token=TOKEN_A)
    b = app_row(
        db,
        conversation_id=conversation,
        scheduled_for=start + timedelta(minutes=1),
        device_token=None,
    )
    apns.respond(503, "ServiceUnavailable")
    report = deliver(db, replace(apns_settings, outage_threshold=1))
    assert report.stop == "outage"
    assert (row(db, a).status, row(db, b).status) == ("scheduled", "scheduled")
    assert messages(db) == []
    assert row(db, b).claimed_by is None  # handed back at the end of the run

    # The next run, APNs still down and A's pause not over: B still waits.
    report = deliver(db, apns_settings)
    assert report.claimed == 0
    assert messages(db) == []

    apns.clear_rules()
    due_again(db)
    report = deliver(db, apns_settings)
    assert report.sent == 2
    [first, second] = messages(db)
    assert (first.follow_up_id, second.follow_up_id) == (a, b)


def test_other_service_follow_up_waits_behind_an_earlier_one_whose_service_stopped(
    db: Database, both_settings: Settings, apns: FakeAPNs, fcm: FakeFCM
) -> None:
    """A (APNs) before B (FCM): APNs refuses our configuration, so A stays scheduled and
    B is not pushed through FCM ahead of it; another conversation's FCM push goes on."""
    conversation = "21111111-2222-3333-4444-555555555555"
    start = utcnow() - timedelta(minutes=5)
    a = app_row(db, conversation_id=conversation, scheduled_for=start, device_token=TOKEN_A)
    b = app_row(
        db,
        conversation_id=conversation,
        scheduled_for=start + timedelta(minutes=1),
        device_token=fcm_token(1),
    )
    other = app_row(db, device_token=fcm_token(2))
    apns.respond(403, "InvalidProviderToken")
    report = deliver(db, both_settings)
    assert report.stop == "config_error"
    assert [m.follow_up_id for m in messages(db)] == [other]
    assert [x.token for x in fcm.accepted()] == [fcm_token(2)]
    assert (row(db, a).status, row(db, b).status) == ("scheduled", "scheduled")
    assert (row(db, a).claimed_by, row(db, b).claimed_by) == (None, None)


def test_held_follow_up_keeps_the_later_ones_of_its_conversation_back(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """A held follow-up (the database refused to record it) stays scheduled: the later
    ones of its conversation wait until retry-failed releases it; others go on."""
    conversation = "31111111-2222-3333-4444-555555555555"
    start = utcnow() - timedelta(minutes=5)
    a = app_row(db, conversation_id=conversation, scheduled_for=start)
    b = app_row(db, conversation_id=conversation, scheduled_for=start + timedelta(minutes=1))
    other = app_row(db)
    with db.engine.begin() as conn:
        conn.execute(update(follow_up_requests).where(r.id == a).values(held_at=utcnow()))
    report = deliver(db, apns_settings)
    assert report.sent == 1
    assert [m.follow_up_id for m in messages(db)] == [other]
    assert row(db, b).status == "scheduled"


# -- a short outage fails nothing -----------------------------------------------------------


def test_lone_follow_up_rides_out_an_outage_and_is_delivered_after_it(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """One follow-up due, APNs unreachable: each run tries 3 times, exits 1 as an outage,
    and leaves it scheduled with a pause that doubles (1m, 2m, 4m); once APNs is back it
    is delivered, once, with every attempt on record."""
    fid = app_row(db)
    settings = replace(apns_settings, retry_pause=timedelta(minutes=1))
    apns.respond(0, action="reset")
    pauses = []
    for n in (1, 2, 3):
        before = utcnow()
        report = deliver(db, settings, webhook)
        assert (report.exit_code, report.stop, report.retrying) == (1, "outage", 1)
        got = row(db, fid)
        assert (got.status, got.retry_count) == ("scheduled", n)
        pauses.append(round((got.retry_at - before).total_seconds() / 60))
        due_again(db)
    assert pauses == [1, 2, 4]
    assert "keeps failing (ConnectionError)" in webhook.texts()[-1]
    stats = gather(db, timedelta(hours=1))
    assert (stats.retrying, stats.overdue) == (1, 1)

    apns.clear_rules()
    report = deliver(db, settings, webhook)
    assert (report.exit_code, report.sent) == (0, 1)
    got = row(db, fid)
    assert (got.status, got.retry_at, got.retrying_since, got.retry_count) == (
        "sent",
        None,
        None,
        None,
    )
    assert len(messages(db, fid)) == 1
    assert len(apns.accepted()) == 1
    assert sorted(a[1] for a in attempts(db, fid)) == ["sent"] + ["transient"] * 9


def test_pause_is_capped_and_a_follow_up_failing_for_longer_than_give_up_after_fails(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """The pause stops doubling at 15 minutes; once the tries span
    FOLLOWUPS_GIVE_UP_AFTER the follow-up is failed with the last reason and the admin is
    told; the later follow-up of its conversation then goes."""
    conversation = "41111111-2222-3333-4444-555555555555"
    start = utcnow() - timedelta(hours=8)
    fid = app_row(db, conversation_id=conversation, scheduled_for=start)
    later = app_row(db, conversation_id=conversation, scheduled_for=start + timedelta(minutes=1))
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(r.id == fid)
            .values(retrying_since=utcnow() - timedelta(hours=5), retry_count=9)
        )
    apns.respond(500, "InternalServerError", token=TOKEN_A, times=3)
    before = utcnow()
    deliver(db, apns_settings, webhook)
    got = row(db, fid)
    assert got.status == "scheduled"
    assert got.retry_at - before <= MAX_RETRY_PAUSE + timedelta(seconds=5)
    assert row(db, later).status == "scheduled"

    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(r.id == fid)
            .values(retrying_since=utcnow() - timedelta(hours=7), retry_at=utcnow())
        )
    apns.respond(500, "InternalServerError", token=TOKEN_A, times=3)
    report = deliver(db, apns_settings, webhook)
    got = row(db, fid)
    assert (got.status, got.failure_reason) == ("failed", "InternalServerError")
    assert any(f"{fid} (InternalServerError)" in t for t in webhook.texts())
    # Failed for good, it no longer holds its conversation back: the later one goes.
    assert (report.failed, report.sent, row(db, later).status) == (1, 1, "sent")


def test_stats_check_counts_retrying_follow_ups_as_overdue(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Retrying ones are scheduled and overdue: an outage longer than the overdue limit
    fails `stats --check`."""
    fid = app_row(db, scheduled_for=utcnow() - timedelta(minutes=30))
    apns.respond(503, "ServiceUnavailable")
    deliver(db, apns_settings)
    assert row(db, fid).retry_at is not None
    stats = gather(db, timedelta(hours=1))
    assert stats.retrying == 1
    rules = CheckRules(max_overdue=timedelta(minutes=10))
    assert any("overdue" in problem for problem in check(stats, rules))


@pytest.mark.parametrize("reason", [("BadDeviceToken", 400)])
def test_permanent_answer_still_fails_at_once(
    db: Database, apns_settings: Settings, apns: FakeAPNs, reason: tuple[str, int]
) -> None:
    """What APNs refused for this device is not retried by later runs."""
    fid = app_row(db)
    apns.respond(reason[1], reason[0])
    report = deliver(db, apns_settings)
    assert (report.failed, report.retrying, report.exit_code) == (1, 0, 0)
    assert row(db, fid).retry_at is None
