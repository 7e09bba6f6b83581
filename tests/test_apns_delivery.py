"""send-due through the real pyapns-client to the fake APNs (HTTP/2, TLS, JWT checked):
the payload and headers, and every failure class with its attempts, status and alert."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from followup_cli.alerts import WebhookAlerter
from followup_cli.db import Database
from followup_cli.delivery import send_due
from followup_cli.push.factory import make_pusher
from followup_cli.report import RunReport
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_requests
from tests.fakes.apns import FakeAPNs
from tests.fakes.webhook import FakeWebhook
from tests.helpers import TOKEN_A, TOKEN_B, app_row, attempts, deliver, messages, row


def test_one_push_with_the_documented_payload_and_headers(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """A due follow-up with a token: exactly one push, payload and headers as specified."""
    conversation = str(uuid.uuid4())
    fid = app_row(
        db,
        conversation_id=conversation,
        urgency="urgent",
        display_text="How is Maya's fever today? \U0001f912",
        provider_name="Chen",
    )
    report = deliver(db, apns_settings)
    assert (report.sent, report.pushed, report.failed) == (1, 1, 0)
    [push] = apns.requests
    assert push.status == 200
    assert push.token == TOKEN_A
    assert push.jwt_claims is not None and push.jwt_claims["iss"] == apns.team_id
    assert push.headers["apns-push-type"] == "alert"
    assert push.headers["apns-topic"] == apns.topic
    assert push.headers["apns-collapse-id"] == fid
    assert push.headers["apns-priority"] == "10"
    assert push.payload == {
        "aps": {
            "alert": {
                "title": "Follow-up from Dr. Chen",
                "body": "How is Maya's fever today? \U0001f912",
            },
            "sound": "default",
            "thread-id": conversation,
            "interruption-level": "time-sensitive",
        },
        "conversation_id": conversation,
        "type": "follow_up",
        "follow_up_id": fid,
    }
    assert row(db, fid).status == "sent"
    assert len(messages(db, fid)) == 1
    [(n, outcome, reason)] = attempts(db, fid)
    assert (n, outcome, reason) == (1, "sent", None)


def test_routine_without_provider_name(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Routine: priority 5, interruption level active, neutral title; unknown urgency too."""
    app_row(db, urgency="routine")
    app_row(db, urgency="ASAP!", device_token=TOKEN_B)
    deliver(db, apns_settings)
    assert len(apns.requests) == 2
    for push in apns.requests:
        assert push.headers["apns-priority"] == "5"
        assert push.payload is not None
        assert push.payload["aps"]["interruption-level"] == "active"
        assert push.payload["aps"]["alert"]["title"] == "Follow-up from your provider"


def test_transient_errors_are_retried_up_to_three_attempts_in_all(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """503 twice then 200: sent on the third attempt, all three recorded."""
    fid = app_row(db)
    apns.respond(503, "ServiceUnavailable", times=2)
    report = deliver(db, apns_settings)
    assert report.sent == 1
    assert len(apns.requests) == 3
    assert attempts(db, fid) == [
        (1, "transient", "ServiceUnavailable"),
        (2, "transient", "ServiceUnavailable"),
        (3, "sent", None),
    ]


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [(410, "ExpiredToken", "permanent"), (400, "BrandNewReason", "permanent")],
)
def test_a_reason_newer_than_pyapns_client_is_judged_by_its_status(
    db: Database,
    apns_settings: Settings,
    apns: FakeAPNs,
    status: int,
    reason: str,
    outcome: str,
) -> None:
    """APNs keeps adding reasons (410 ExpiredToken): a 4xx still concerns this device or
    notification only, so one request, failed with APNs' own reason, no breaker count."""
    fid = app_row(db)
    apns.respond(status, reason, timestamp=False)
    report = deliver(db, replace(apns_settings, outage_threshold=1))
    assert (report.failed, report.stop) == (1, None)
    assert len(apns.requests) == 1
    assert row(db, fid).failure_reason == reason
    assert [a[1:] for a in attempts(db, fid)] == [(outcome, reason)]


@pytest.mark.parametrize(
    ("status", "reason", "kwargs", "recorded"),
    [
        (500, "InternalServerError", {}, "InternalServerError"),
        (429, "TooManyRequests", {}, "TooManyRequests"),
        (503, "Shutdown", {}, "Shutdown"),
        (503, "BrandNewReason", {}, "BrandNewReason"),
        (500, None, {"body": b"<html>oops</html>"}, "UnreadableResponse"),
        (0, None, {"action": "reset"}, "ConnectionError"),
        (200, None, {"action": "stall"}, "Timeout"),
    ],
)
def test_exhausted_transient_failure_stays_scheduled_after_exactly_three_attempts(
    db: Database,
    apns_settings: Settings,
    apns: FakeAPNs,
    status: int,
    reason: str | None,
    kwargs: dict[str, object],
    recorded: str,
) -> None:
    """Always failing transiently: 3 requests (not 9), then scheduled to be tried again
    after FOLLOWUPS_RETRY_PAUSE, attempts recorded; with FOLLOWUPS_GIVE_UP_AFTER=0s it is
    failed at once with the last reason, as the only try allowed."""
    fid = app_row(db)
    apns.respond(status, reason, **kwargs)  # type: ignore[arg-type]
    # One follow-up's attempts all failing is an outage, however few were due; APNs'
    # per-device 429 says APNs is up.
    outage = 0 if reason == "TooManyRequests" else 1
    report = deliver(db, replace(apns_settings, push_timeout_seconds=0.3))
    assert (report.sent, report.failed, report.retrying, report.exit_code) == (0, 0, 1, outage)
    assert len(apns.requests) == 3
    r = row(db, fid)
    assert (r.status, r.claimed_by, r.retry_count) == ("scheduled", None, 1)
    assert r.retry_at is not None and r.retrying_since is not None
    assert messages(db, fid) == []
    assert [a[1:] for a in attempts(db, fid)] == [("transient", recorded)] * 3

    fid = app_row(db)
    report = deliver(
        db, replace(apns_settings, push_timeout_seconds=0.3, give_up_after=timedelta(0))
    )
    assert (report.sent, report.failed, report.exit_code) == (0, 1, outage)
    r = row(db, fid)
    assert (r.status, r.failure_reason, r.retry_at) == ("failed", recorded, None)
    assert messages(db, fid) == []


@pytest.mark.parametrize(
    ("status", "reason"),
    [(410, "Unregistered"), (400, "BadDeviceToken"), (400, "DeviceTokenNotForTopic")],
)
def test_permanent_device_error_fails_at_once_and_alerts_the_admin(
    db: Database,
    apns_settings: Settings,
    apns: FakeAPNs,
    webhook: FakeWebhook,
    status: int,
    reason: str,
) -> None:
    """No retry; failed with the reason; one alert with id and reason, no message text."""
    bad = app_row(db, device_token=TOKEN_B, display_text="Maya's rash", child_name="Maya")
    good = app_row(db)
    apns.respond(status, reason, token=TOKEN_B)
    report = deliver(db, apns_settings, webhook)
    assert (report.sent, report.failed, report.exit_code) == (1, 1, 0)
    assert len([r for r in apns.requests if r.token == TOKEN_B]) == 1
    r = row(db, bad)
    assert (r.status, r.failure_reason, r.failed_device_token) == ("failed", reason, TOKEN_B)
    assert messages(db, bad) == []
    assert row(db, good).status == "sent"
    [text] = webhook.texts()
    assert bad in text and reason in text
    assert "Maya" not in text and "rash" not in text


def test_wrong_key_stops_the_run_fails_nothing_and_alerts(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """InvalidProviderToken: exit 1, every follow-up stays scheduled and unclaimed."""
    ids = [app_row(db) for _ in range(5)]
    settings = replace(apns_settings, apns_key_file=Path(apns.wrong_key_file), push_concurrency=1)
    report = deliver(db, settings, webhook)
    assert report.stop == "config_error"
    assert report.stop_reason == "InvalidProviderToken"
    assert report.exit_code == 1
    assert report.failed == 0
    assert len(apns.requests) == 1  # the first answer stops the run
    for fid in ids:
        r = row(db, fid)
        assert (r.status, r.claimed_by) == ("scheduled", None)
    [text] = webhook.texts()
    assert "InvalidProviderToken" in text


@pytest.mark.parametrize("reason", ["TopicDisallowed", "BadCertificate", "MissingTopic"])
def test_other_configuration_answers_stop_the_run(
    db: Database, apns_settings: Settings, apns: FakeAPNs, reason: str
) -> None:
    """Topic and certificate errors are ours, not the parent's: stop, fail nothing."""
    fid = app_row(db)
    apns.respond(400 if "Topic" in reason else 403, reason)
    report = deliver(db, apns_settings)
    assert (report.stop, report.stop_reason, report.failed) == ("config_error", reason, 0)
    assert row(db, fid).status == "scheduled"


def test_outage_stops_early_and_leaves_the_backlog_scheduled(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """APNs down: after a few failed attempts in a row the run stops."""
    ids = [app_row(db) for _ in range(30)]
    apns.respond(503, "ServiceUnavailable")
    settings = replace(apns_settings, outage_threshold=3, push_concurrency=2, batch_size=10)
    report = deliver(db, settings, webhook)
    assert (report.stop, report.exit_code, report.failed) == ("outage", 1, 0)
    assert len(apns.requests) < 3 * 30  # it did not grind through the backlog
    assert all(row(db, fid).status == "scheduled" for fid in ids)
    assert any("APNs keeps failing" in t for t in webhook.texts())


def test_failing_webhook_never_fails_the_run(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """The webhook answering 500 is logged; the run still completes."""
    app_row(db, device_token=TOKEN_B)
    apns.respond(410, "Unregistered", token=TOKEN_B)
    webhook.status = 500
    report = deliver(db, apns_settings, webhook)
    assert (report.failed, report.exit_code) == (1, 0)
    assert len(webhook.posts) == 1


def wait_until_claimed(db: Database, follow_up_id: str, timeout: float = 10.0) -> None:
    """Block until a run has leased the follow-up (its claim is committed)."""
    deadline = time.monotonic() + timeout
    while row(db, follow_up_id).claimed_by is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{follow_up_id} was not claimed within {timeout}s")
        time.sleep(0.005)


def cancel_now(db: Database, follow_up_id: str) -> None:
    """What the app's cancel does to the row."""
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.id == follow_up_id)
            .values(status="cancelled")
        )


def test_cancelled_after_claim_is_not_pushed(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """The app cancels while an earlier push is in flight: the cancelled one never goes out."""
    first = app_row(db)
    second = app_row(db, device_token=TOKEN_B)
    apns.latency = 0.5
    settings = replace(apns_settings, push_concurrency=1, cancel_check_seconds=0.0)
    result: list[RunReport] = []
    worker = threading.Thread(target=lambda: result.append(deliver(db, settings)))
    worker.start()
    # Both are claimed in one batch; the first push then takes 0.5 s, so the cancel lands
    # after the claim and before the second push.
    wait_until_claimed(db, second)
    cancel_now(db, second)
    worker.join(timeout=20)
    assert [r.token for r in apns.requests] == [TOKEN_A]
    assert row(db, first).status == "sent"
    assert row(db, second).status == "cancelled"
    assert messages(db, second) == []
    assert result[0].skipped == 1


def test_cancelled_during_its_push_stays_cancelled(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """The final update never overwrites a cancel that happened while the push was out."""
    fid = app_row(db)
    apns.latency = 1.0
    worker = threading.Thread(target=lambda: deliver(db, apns_settings))
    worker.start()
    wait_until_claimed(db, fid)
    time.sleep(0.2)  # the push (answered after 1 s) is now on the wire
    cancel_now(db, fid)
    worker.join(timeout=20)
    assert [r.status for r in apns.requests] == [200]
    assert row(db, fid).status == "cancelled"
    assert messages(db, fid) == []


def test_bad_rows_get_a_clear_outcome_and_do_not_stop_the_batch(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Empty text fails, a malformed token falls back to in-app, the rest is delivered."""
    empty = app_row(db, display_text="   ")
    null = app_row(db, display_text=None)
    no_user = app_row(db, user_id=None)
    bad_token = app_row(db, device_token="not-a-token")
    long_text = app_row(db, display_text="\U0001f912 fever " * 2000, device_token=TOKEN_B)
    future = app_row(db, scheduled_for=row(db, empty).scheduled_for.replace(year=2999))
    report = deliver(db, apns_settings)
    assert (row(db, empty).status, row(db, empty).failure_reason) == ("failed", "empty_message")
    assert row(db, null).failure_reason == "empty_message"
    assert row(db, no_user).failure_reason == "missing_recipient"
    assert row(db, bad_token).status == "sent"
    assert [a[1:] for a in attempts(db, bad_token)] == [("skipped", "invalid_device_token")]
    assert row(db, long_text).status == "sent"
    [push] = apns.accepted()
    assert push.token == TOKEN_B
    assert len(push.body) <= 4096
    assert row(db, future).status == "scheduled"
    assert (report.sent, report.failed) == (2, 3)


def test_webhook_answering_garbage_never_fails_the_run(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """An endpoint that does not even speak HTTP: logged, and the run completes."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"this is not HTTP\r\n\r\n")
        conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    app_row(db, device_token=TOKEN_B)
    apns.respond(410, "Unregistered", token=TOKEN_B)
    pusher = make_pusher(apns_settings)
    try:
        port = listener.getsockname()[1]
        report = send_due(
            db, pusher, apns_settings, WebhookAlerter(f"http://127.0.0.1:{port}/hook")
        )
    finally:
        pusher.close()
        listener.close()
    assert (report.failed, report.exit_code) == (1, 0)


def test_apns_servers_are_pyapns_clients_and_an_accepted_push_needs_none_of_it() -> None:
    """The servers' URLs are pyapns-client's own; reading an accepted push imports neither
    pyapns-client nor httpx (a tenth of a second of every run), an error answer still
    reads through pyapns-client's classes."""
    import subprocess
    import sys

    from pyapns_client import APNSClient

    from followup_cli.push.apns.pusher import BASE_URLS

    assert BASE_URLS == {
        "production": APNSClient.BASE_URLS[APNSClient.MODE_PROD],
        "development": APNSClient.BASE_URLS[APNSClient.MODE_DEV],
    }
    script = (
        "import sys\n"
        "from followup_cli.push.apns import pusher\n"
        "from followup_cli.push.apns.errors import judge\n"
        "from followup_cli.push.h2client import Answer\n"
        "ok = Answer(); ok.status = 200\n"
        "print(judge(ok).kind, 'pyapns_client' in sys.modules, 'httpx' in sys.modules)\n"
        'bad = Answer(); bad.status = 400; bad.body += b\'{"reason": "BadDeviceToken"}\'\n'
        "print(judge(bad).kind, judge(bad).reason, 'pyapns_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["sent False False", "permanent BadDeviceToken True"]
