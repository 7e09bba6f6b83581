"""send-due through the FCM pusher to the fake FCM (HTTP/2, TLS, OAuth token checked),
alone and next to APNs: the message as specified, every FCM error class with its
attempts, status and alert, a mixed batch, and each service's stops kept apart."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.monitoring import gather
from followup_cli.push.fcm import FCMPusher, read_error
from followup_cli.push.h2client import H2Endpoint
from followup_cli.requeue import retry_failed
from followup_cli.settings import DEFAULT_GENERIC_TEXT, Settings
from followup_cli.tables import follow_up_attempts
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.webhook import FakeWebhook
from tests.helpers import apns_token, app_row, attempts, deliver, fcm_token, messages, row


def test_one_message_as_specified(db: Database, fcm_settings: Settings, fcm: FakeFCM) -> None:
    """Urgent: notification, string data, android priority high with the collapse key and
    default sound, apns headers for FCM tokens on iPhones; the message name is kept."""
    conversation = str(uuid.uuid4())
    token = fcm_token(1)
    fid = app_row(
        db,
        device_token=token,
        conversation_id=conversation,
        urgency="urgent",
        display_text="How is Maya's fever today? \U0001f912",
        provider_name="Chen",
    )
    report = deliver(db, fcm_settings)
    assert (report.sent, report.pushed, report.failed, report.push_backend) == (1, 1, 0, "fcm")
    [push] = fcm.requests
    assert push.status == 200
    assert push.path == f"/v1/projects/{fcm.project_id}/messages:send"
    assert push.message == {
        "token": token,
        "notification": {
            "title": "Follow-up from Dr. Chen",
            "body": "How is Maya's fever today? \U0001f912",
        },
        "data": {"conversation_id": conversation, "type": "follow_up", "follow_up_id": fid},
        "android": {
            "priority": "high",
            "collapse_key": fid,
            "notification": {"sound": "default"},
        },
        "apns": {
            "headers": {"apns-collapse-id": fid, "apns-priority": "10"},
            "payload": {
                "aps": {
                    "sound": "default",
                    "thread-id": conversation,
                    "interruption-level": "time-sensitive",
                }
            },
        },
    }
    assert row(db, fid).status == "sent"
    assert len(messages(db, fid)) == 1
    a = follow_up_attempts.c
    with db.engine.connect() as conn:
        [(outcome, status, name)] = conn.execute(
            select(a.outcome, a.status_code, a.apns_id).where(a.follow_up_id == fid)
        ).all()
    assert (outcome, status) == ("sent", 200)
    assert name is not None and name.startswith(f"projects/{fcm.project_id}/messages/")


def test_routine_is_normal_priority_and_long_text_fits(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """Routine: normal / apns-priority 5; a text far over 4 KB is cut so that what FCM
    delivers to an iPhone still fits (the fake refuses anything larger)."""
    app_row(db, device_token=fcm_token(1), urgency="routine")
    long_text = app_row(db, device_token=fcm_token(2), display_text="\U0001f912 fever " * 2000)
    report = deliver(db, fcm_settings)
    assert (report.sent, report.failed) == (2, 0)
    by_token = {r.token: r.message for r in fcm.accepted()}
    routine = by_token[fcm_token(1)]
    assert routine is not None
    assert routine["android"]["priority"] == "normal"
    assert routine["apns"]["headers"]["apns-priority"] == "5"
    assert routine["apns"]["payload"]["aps"]["interruption-level"] == "active"
    cut = by_token[fcm_token(2)]
    assert cut is not None and cut["notification"]["body"].endswith("\u2026")
    assert messages(db, long_text)[0].message_content == "\U0001f912 fever " * 2000


def test_mixed_batch_goes_to_each_service_once_in_one_run(
    db: Database, both_settings: Settings, apns: FakeAPNs, fcm: FakeFCM
) -> None:
    """APNs tokens to APNs, FCM tokens to FCM, in one run and one batch; an invalid token
    and no token go in-app only. Each follow-up is pushed exactly once."""
    apns_ids = {app_row(db, device_token=apns_token(i)): apns_token(i) for i in range(30)}
    fcm_ids = {app_row(db, device_token=fcm_token(i)): fcm_token(i) for i in range(30)}
    invalid = app_row(db, device_token="not-a-token")
    none = app_row(db, device_token=None)
    report = deliver(db, both_settings)
    assert (report.claimed, report.sent, report.pushed, report.failed) == (62, 62, 60, 0)
    assert report.push_backend == "apns,fcm"
    assert Counter(apns.collapse_ids()) == Counter(dict.fromkeys(apns_ids, 1))
    assert Counter(fcm.collapse_keys()) == Counter(dict.fromkeys(fcm_ids, 1))
    assert {r.token for r in apns.accepted()} == set(apns_ids.values())
    assert {r.token for r in fcm.accepted()} == set(fcm_ids.values())
    assert attempts(db, invalid) == [(1, "skipped", "invalid_device_token")]
    assert attempts(db, none) == []
    assert all(row(db, f).status == "sent" for f in [*apns_ids, *fcm_ids, invalid, none])


def test_fcm_token_without_fcm_configured_is_in_app_only_and_counted(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """FOLLOWUPS_PUSH=apns: an FCM token is delivered in-app only, reason
    fcm_not_configured, and stats counts it."""
    fid = app_row(db, device_token=fcm_token(1))
    app_row(db)
    report = deliver(db, apns_settings)
    assert (report.sent, report.pushed, report.in_app_only) == (2, 1, 1)
    assert row(db, fid).status == "sent"
    assert attempts(db, fid) == [(1, "skipped", "fcm_not_configured")]
    assert [r.token for r in apns.requests] == ["a" * 64]
    stats = gather(db, timedelta(hours=1))
    assert stats.no_push_by_reason == {"fcm_not_configured": 1}


@pytest.mark.parametrize("error", ["UNREGISTERED", "INVALID_ARGUMENT"])
def test_dead_token_fails_at_once_alerts_and_is_held_back(
    db: Database, fcm_settings: Settings, fcm: FakeFCM, webhook: FakeWebhook, error: str
) -> None:
    """UNREGISTERED (404), or INVALID_ARGUMENT about the registration token: one request,
    failed, the token kept, an alert with id and reason only, and retry-failed holds it
    back until the app stores a new token."""
    bad_token = fcm_token(1)
    bad = app_row(db, device_token=bad_token, display_text="Maya's rash", child_name="Maya")
    good = app_row(db, device_token=fcm_token(2))
    fcm.respond(error, token=bad_token)
    report = deliver(db, fcm_settings, webhook)
    assert (report.sent, report.failed, report.exit_code) == (1, 1, 0)
    reason = "UNREGISTERED" if error == "UNREGISTERED" else "INVALID_REGISTRATION_TOKEN"
    assert len([r for r in fcm.requests if r.token == bad_token]) == 1
    r = row(db, bad)
    assert (r.status, r.failure_reason, r.failed_device_token) == ("failed", reason, bad_token)
    assert row(db, good).status == "sent"
    [text] = webhook.texts()
    assert bad in text and reason in text
    assert "Maya" not in text and "rash" not in text and bad_token[:20] not in text
    held = retry_failed(db, dry_run=True)
    assert [f.id for f in held.held_back] == [bad]


def test_message_shape_error_is_this_notifications_not_the_tokens(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """An INVALID_ARGUMENT about the message (not the token): permanent for that row, no
    retry, and never taken for a dead token (retry-failed requeues it)."""
    fid = app_row(db, device_token=fcm_token(1))
    fcm.respond("INVALID_ARGUMENT", message="Invalid value at 'message.android.ttl'")
    report = deliver(db, fcm_settings)
    assert (report.failed, report.stop) == (1, None)
    assert len(fcm.requests) == 1
    assert row(db, fid).failure_reason == "INVALID_ARGUMENT"
    assert [f.id for f in retry_failed(db, dry_run=True).requeued] == [fid]


def test_fake_refuses_unknown_fields_as_fcm_v1_does(fcm_settings: Settings, fcm: FakeFCM) -> None:
    """The legacy notification.sound is an unknown field in v1: INVALID_ARGUMENT with a
    field violation on message.notification, which reads as a message-shape error."""
    pusher = FCMPusher(fcm_settings)
    endpoint = H2Endpoint(fcm.url, ca_file=fcm_settings.fcm_ca_file, connect_timeout=5, label="FCM")
    body = (
        b'{"message": {"token": "%s", "notification": {"title": "T", "body": "B", '
        b'"sound": "default"}}}' % fcm_token(1).encode()
    )

    async def send() -> tuple[int, dict[str, str], bytes]:
        token = await pusher.tokens.current()
        conn = await endpoint.connection()
        answer = await conn.request(
            f"/v1/projects/{fcm.project_id}/messages:send",
            {"authorization": f"Bearer {token}", "content-type": "application/json"},
            body,
            5.0,
            lambda: True,
        )
        await endpoint.aclose()
        return answer.status, answer.headers, bytes(answer.body)

    try:
        status, headers, answer = pusher.run(send())
    finally:
        pusher.close()
    assert status == 400
    assert b'Unknown name \\"sound\\"' in answer
    error = read_error(status, headers, answer)
    assert (error.code, error.token_field) == ("INVALID_ARGUMENT", False)


@pytest.mark.parametrize(
    "error", ["SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED"]
)
def test_configuration_answers_stop_fcm_and_fail_nothing(
    db: Database, fcm_settings: Settings, fcm: FakeFCM, webhook: FakeWebhook, error: str
) -> None:
    """Our project, role or APNs key in Firebase is wrong: the first answer stops FCM for
    the run (no second request), nothing is failed or left claimed, one alert naming FCM."""
    ids = [app_row(db, device_token=fcm_token(i)) for i in range(5)]
    fcm.respond(error)
    report = deliver(db, fcm_settings, webhook)
    assert (report.stop, report.stop_reason, report.failed, report.exit_code) == (
        "config_error",
        error,
        0,
        1,
    )
    assert len(fcm.requests) == 1
    assert all((row(db, f).status, row(db, f).claimed_by) == ("scheduled", None) for f in ids)
    [text] = webhook.texts()
    assert f"FCM rejected our configuration ({error})" in text


@pytest.mark.parametrize("error", ["QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"])
def test_transient_answers_use_three_attempts_then_wait_to_be_retried(
    db: Database, fcm_settings: Settings, fcm: FakeFCM, error: str
) -> None:
    """429, 503 and 500: three attempts in all (a short Retry-After is waited out), then
    the follow-up stays scheduled for a later run, and the run exits 1 as an outage,
    since every attempt failed; with FOLLOWUPS_GIVE_UP_AFTER=0s it is failed with the
    reason."""
    fid = app_row(db, device_token=fcm_token(1))
    fcm.respond(error, retry_after="0")
    report = deliver(db, fcm_settings)
    assert (report.sent, report.failed, report.retrying, report.stop) == (0, 0, 1, "outage")
    assert len(fcm.requests) == 3
    assert (row(db, fid).status, row(db, fid).retry_count) == ("scheduled", 1)
    assert attempts(db, fid) == [(n, "transient", error) for n in (1, 2, 3)]

    fid = app_row(db, device_token=fcm_token(2))
    report = deliver(db, replace(fcm_settings, give_up_after=timedelta(0)))
    assert (report.sent, report.failed, report.exit_code) == (0, 1, 1)
    assert row(db, fid).failure_reason == error


def test_transient_then_accepted(db: Database, fcm_settings: Settings, fcm: FakeFCM) -> None:
    """UNAVAILABLE twice, then 200: sent on the third attempt, all recorded."""
    fid = app_row(db, device_token=fcm_token(1))
    fcm.respond("UNAVAILABLE", times=2)
    report = deliver(db, fcm_settings)
    assert report.sent == 1
    assert attempts(db, fid) == [
        (1, "transient", "UNAVAILABLE"),
        (2, "transient", "UNAVAILABLE"),
        (3, "sent", None),
    ]


def test_goaway_mid_batch_sends_each_message_once_and_never_stops_the_run(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """GOAWAY after every 50 requests, as Google's front ends send it: the messages it
    covers are answered and counted, the rest go again on a new connection, each
    follow-up is sent once with one attempt."""
    ids = [app_row(db, device_token=fcm_token(i)) for i in range(200)]
    fcm.latency = 0.005
    fcm.goaway_after = 50
    report = deliver(db, fcm_settings)
    assert (report.sent, report.failed, report.stop) == (200, 0, None)
    assert fcm.goaways_sent >= 3 and fcm.protocol_errors == 0
    assert Counter(fcm.collapse_keys()) == Counter(dict.fromkeys(ids, 1))
    assert all(attempts(db, fid) == [(1, "sent", None)] for fid in ids)


def test_long_retry_after_stops_fcm_for_the_run_and_fails_nothing(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """QUOTA_EXCEEDED with Retry-After: 120 is not waited out within a run: one request,
    an outage stop for FCM, every follow-up stays scheduled for a later run."""
    ids = [app_row(db, device_token=fcm_token(i)) for i in range(4)]
    fcm.respond("QUOTA_EXCEEDED", retry_after="120")
    report = deliver(db, replace(fcm_settings, push_concurrency=1))
    assert (report.stop, report.stop_reason, report.failed) == ("outage", "QUOTA_EXCEEDED", 0)
    assert len(fcm.requests) == 1
    assert all((row(db, f).status, row(db, f).claimed_by) == ("scheduled", None) for f in ids)


def test_fcm_outage_costs_a_few_requests_and_fails_nothing(
    db: Database, fcm_settings: Settings, fcm: FakeFCM, webhook: FakeWebhook
) -> None:
    """Every message answered 503: the breaker trips after the threshold's worth of
    failed attempts, however big the batch; one alert naming FCM."""
    ids = [app_row(db, device_token=fcm_token(i)) for i in range(300)]
    fcm.respond("UNAVAILABLE")
    report = deliver(db, replace(fcm_settings, outage_threshold=5), webhook)
    assert (report.stop, report.failed, report.exit_code) == ("outage", 0, 1)
    assert 5 <= len(fcm.requests) <= 10
    assert sum(row(db, f).status == "scheduled" for f in ids) == 300
    assert any("FCM keeps failing (UNAVAILABLE)" in t for t in webhook.texts())


def test_apns_outage_does_not_stop_fcm_deliveries(
    db: Database, both_settings: Settings, apns: FakeAPNs, fcm: FakeFCM, webhook: FakeWebhook
) -> None:
    """APNs down, FCM healthy, batches of 20: every FCM follow-up of every batch is sent
    in this one run; the APNs ones stay scheduled and unclaimed (none claimed twice), the
    run ends as an APNs outage and says FCM went on."""
    apns_ids = [app_row(db, device_token=apns_token(i)) for i in range(50)]
    fcm_ids = [app_row(db, device_token=fcm_token(i)) for i in range(50)]
    apns.respond(503, "ServiceUnavailable")
    settings = replace(both_settings, batch_size=20, outage_threshold=3)
    report = deliver(db, settings, webhook)
    assert (report.stop, report.stop_reason, report.failed) == ("outage", "ServiceUnavailable", 0)
    assert [s.service for s in report.stops] == ["apns"]
    assert all(row(db, f).status == "sent" for f in fcm_ids)
    assert all((row(db, f).status, row(db, f).claimed_by) == ("scheduled", None) for f in apns_ids)
    assert report.claimed == 100  # each follow-up claimed once
    assert Counter(fcm.collapse_keys()) == Counter(dict.fromkeys(fcm_ids, 1))
    assert len(apns.requests) <= 2 * 3
    [alert] = [t for t in webhook.texts() if "keeps failing" in t]
    assert "APNs keeps failing" in alert and "FCM deliveries went on" in alert


def test_fcm_configuration_stop_does_not_stop_apns_deliveries(
    db: Database, both_settings: Settings, apns: FakeAPNs, fcm: FakeFCM
) -> None:
    """FCM refuses our configuration; APNs follow-ups are all delivered; a conversation's
    APNs follow-up after its held FCM one waits, keeping the order."""
    conversation = str(uuid.uuid4())
    early = utcnow() - timedelta(minutes=5)
    first = app_row(
        db, device_token=fcm_token(99), conversation_id=conversation, scheduled_for=early
    )
    second = app_row(db, device_token=apns_token(99), conversation_id=conversation)
    apns_ids = [app_row(db, device_token=apns_token(i)) for i in range(30)]
    fcm_ids = [app_row(db, device_token=fcm_token(i)) for i in range(5)]
    fcm.respond("SENDER_ID_MISMATCH")
    report = deliver(db, replace(both_settings, batch_size=10))
    assert (report.stop, report.stop_reason, report.failed) == (
        "config_error",
        "SENDER_ID_MISMATCH",
        0,
    )
    assert all(row(db, f).status == "sent" for f in apns_ids)
    assert all(row(db, f).status == "scheduled" for f in [*fcm_ids, first, second])
    assert apns_token(99) not in {r.token for r in apns.requests}
    assert len(fcm.requests) == 1


def test_generic_body_applies_to_fcm_too(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """FOLLOWUPS_PUSH_BODY=generic: the FCM message carries the fixed text, and
    mutable-content for iPhones; no piece of the message text reaches FCM."""
    text = "Is Zoë's amoxicillin rash spreading? Reply with a photo"
    fid = app_row(db, device_token=fcm_token(1), display_text=text, child_name="Zoë")
    report = deliver(db, replace(fcm_settings, push_body="generic"))
    assert (report.sent, report.pushed) == (1, 1)
    [push] = fcm.requests
    assert push.message is not None
    assert push.message["notification"]["body"] == DEFAULT_GENERIC_TEXT
    assert push.message["apns"]["payload"]["aps"]["mutable-content"] == 1
    shown = push.body.decode().lower()
    pieces = {text.lower()[i : i + 5] for i in range(len(text) - 4)}
    assert {piece for piece in pieces if piece in shown} == set()
    assert messages(db, fid)[0].message_content == text
