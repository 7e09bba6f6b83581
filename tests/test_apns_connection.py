"""send-due against the fake APNs with Apple's connection rules in force: stream limits
that start at 1 and follow rejections, refused streams, GOAWAY, one provider token per
key and 20 minutes across runs and processes, the 60-minute expiry, and the outage
breaker. Each test names the rule it holds the client to."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import httpx
import jwt
import pytest
from freezegun import freeze_time
from sqlalchemy import select

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.push.factory import make_pusher
from followup_cli.push.protocol import PushRequest
from followup_cli.push.provider_token import WINDOW_SECONDS, ProviderToken
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_attempts
from tests.fakes.apns import FakeAPNs
from tests.fakes.webhook import FakeWebhook
from tests.helpers import apns_env, apns_token, app_row, attempts, deliver, row, start_send_due


def attempt_counts(db: Database) -> Counter[str]:
    a = follow_up_attempts.c
    with db.engine.connect() as conn:
        return Counter(conn.scalars(select(a.follow_up_id)))


def pushes_per_follow_up(apns: FakeAPNs) -> Counter[str]:
    """How many times APNs accepted each follow-up (its collapse id)."""
    return Counter(apns.collapse_ids())


def test_new_connection_sends_one_stream_until_apns_has_answered(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """APNs allows 1 stream until a push is accepted: no stream is refused, one
    connection serves the whole run, and the limit is used once it is raised."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(400)]
    apns.latency = 0.005
    report = deliver(db, apns_settings)
    assert (report.sent, report.failed, report.stop) == (400, 0, None)
    assert apns.refused() == []
    assert apns.connections_opened == 1
    assert apns.max_streams_in_flight > 1  # the raised limit was used
    assert set(pushes_per_follow_up(apns).values()) == {1}
    assert attempt_counts(db) == Counter(dict.fromkeys(ids, 1))


def test_limit_follows_rejections_down_and_up_without_reconnects(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """10 % dead tokens: the limit drops to 1 after each rejection and rises after the next
    acceptance. Streams refused meanwhile are sent again, never counted as attempts."""
    dead = {apns_token(i) for i in range(0, 400, 10)}
    ids = [app_row(db, device_token=apns_token(i)) for i in range(400)]
    for t in dead:
        apns.respond(410, "Unregistered", token=t)
    apns.latency = 0.005
    report = deliver(db, apns_settings)
    assert (report.sent, report.failed, report.stop) == (360, 40, None)
    assert apns.connections_opened == 1
    assert attempt_counts(db) == Counter(dict.fromkeys(ids, 1))
    assert set(pushes_per_follow_up(apns).values()) == {1}
    assert all(row(db, fid).failure_reason == "Unregistered" for fid in ids[::10])


def test_refused_stream_is_sent_again_without_using_an_attempt(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """REFUSED_STREAM means not processed: sent again, no attempt used, and the outage
    breaker (here tripping at the first failed attempt) does not count it."""
    fid = app_row(db)
    apns.respond(200, action="refuse", times=3)
    report = deliver(db, replace(apns_settings, outage_threshold=1))
    assert (report.sent, report.stop) == (1, None)
    assert [r.reason for r in apns.requests] == ["refused"] * 3 + [None]
    assert attempt_counts(db) == Counter({fid: 1})


def test_goaway_mid_batch_pushes_each_follow_up_once_and_never_stops_the_run(
    db: Database, apns_settings: Settings, apns: FakeAPNs, caplog: pytest.LogCaptureFixture
) -> None:
    """GOAWAY after every 100 requests: streams at or below the last-stream-id are
    answered and waited for, those above it go again on a new connection, the reason is
    logged, and nothing is pushed twice."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(400)]
    apns.latency = 0.005
    apns.goaway_after = 100
    with caplog.at_level(logging.INFO, logger="followups.push"):
        report = deliver(db, apns_settings)
    assert (report.sent, report.failed, report.stop) == (400, 0, None)
    assert apns.goaways_sent >= 3 and apns.protocol_errors == 0
    assert apns.connections_opened in (apns.goaways_sent, apns.goaways_sent + 1)
    assert set(pushes_per_follow_up(apns).values()) == {1}
    assert len(pushes_per_follow_up(apns)) == 400
    assert attempt_counts(db) == Counter(dict.fromkeys(ids, 1))
    assert "GOAWAY, reason Shutdown" in caplog.text


def test_goaway_while_a_stream_is_in_flight_still_reads_its_answer(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """A GOAWAY whose last-stream-id covers the push in flight: its answer still counts."""
    app_row(db)
    apns.goaway_after = 1
    report = deliver(db, apns_settings)
    assert (report.sent, report.stop) == (1, None)
    [push] = apns.requests
    assert push.status == 200


def test_every_run_and_host_uses_the_same_provider_token(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """Three cron minutes in a row, the third on two hosts at once: one token renewal in
    all, every follow-up delivered, no TooManyProviderTokenUpdates."""
    ids: list[str] = []
    started = utcnow().timestamp()
    for runs in (1, 1, 2):
        ids += [app_row(db, device_token=apns_token(len(ids) + i)) for i in range(50)]
        procs = [start_send_due(db_url, apns_env(apns)) for _ in range(runs)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    assert all(row(db, fid).status == "sent" for fid in ids)
    accepted_tokens = {r.headers["authorization"] for r in apns.accepted()}
    refused = [r for r in apns.requests if r.reason == "TooManyProviderTokenUpdates"]
    if ProviderToken.window_start(started) == ProviderToken.window_start(utcnow().timestamp()):
        assert apns.token_renewals == 1
        assert not refused
        assert len(accepted_tokens) == 1
    else:  # a window began mid-test: its token may be refused, the last one used instead
        assert apns.token_renewals == 1
        assert len(accepted_tokens) == 1
        assert {r.token for r in refused} <= {r.token for r in apns.accepted()}
    assert set(pushes_per_follow_up(apns).values()) == {1}


def test_token_renewed_at_most_every_20_minutes_and_never_used_past_an_hour(
    apns_settings: Settings, apns: FakeAPNs
) -> None:
    """One long-lived pusher pushing every 7 minutes for two hours: each token APNs sees is
    younger than an hour, renewals are at least 20 minutes apart, none is refused."""
    pusher = make_pusher(apns_settings)
    start = utcnow().replace(minute=3, second=0, microsecond=0)
    try:
        for step in range(18):
            with freeze_time(start + timedelta(minutes=7 * step)):
                request = PushRequest(
                    str(uuid.uuid4()), str(uuid.uuid4()), apns_token(step), "T", "B", False
                )
                outcome = pusher.run(pusher.push(request))
                assert outcome.kind == "sent", outcome.reason
    finally:
        pusher.close()
    issued = [r.jwt_claims["iat"] for r in apns.requests if r.jwt_claims is not None]
    seen_at = [start + timedelta(minutes=7 * step) for step in range(18)]
    assert all(0 <= at.timestamp() - iat < 3600 for at, iat in zip(seen_at, issued, strict=True))
    renewals = sorted(set(issued))
    assert all(b - a >= 20 * 60 for a, b in zip(renewals, renewals[1:], strict=False))
    assert apns.token_renewals == len(renewals) >= 4


def _other_signer_renews_now(apns: FakeAPNs) -> None:
    """Something else signs a token with the same key (another service, a script) and
    pushes with it: APNs counts that renewal."""
    with open(apns.key_file, "rb") as f:
        key = f.read()
    other = jwt.encode(
        {"iss": apns.team_id, "iat": int(utcnow().timestamp())},
        key,
        algorithm="ES256",
        headers={"kid": apns.key_id},
    )
    tls = ssl.create_default_context(cafile=apns.ca_file)
    with httpx.Client(http2=True, verify=tls, base_url=apns.url) as client:
        answer = client.post(
            f"/3/device/{apns_token(999)}",
            json={"aps": {"alert": "hello"}},
            headers={"authorization": f"bearer {other}", "apns-topic": apns.topic},
        )
    assert answer.status_code == 200
    apns.reset_records()


def test_too_many_provider_token_updates_stops_once_and_the_next_run_goes_on(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """429 TooManyProviderTokenUpdates: a configuration stop. Nothing failed, no attempt
    used up, one alert; once 20 minutes have passed the next run delivers everything."""
    now = utcnow().replace(minute=10, second=0, microsecond=0)  # 10 minutes into a window
    due = now - timedelta(minutes=1)
    ids = [app_row(db, device_token=apns_token(i), scheduled_for=due) for i in range(5)]
    with freeze_time(now):
        _other_signer_renews_now(apns)
        report = deliver(db, apns_settings, webhook)
    assert (report.stop, report.stop_reason, report.failed) == (
        "config_error",
        "TooManyProviderTokenUpdates",
        0,
    )
    # This window's token, then the previous window's: both new to APNs, both refused.
    assert [r.reason for r in apns.requests] == ["TooManyProviderTokenUpdates"] * 2
    assert [r.jwt_claims["iat"] for r in apns.requests if r.jwt_claims] == [
        int(now.timestamp()) - 600,
        int(now.timestamp()) - 600 - WINDOW_SECONDS,
    ]
    assert all((row(db, f).status, row(db, f).claimed_by) == ("scheduled", None) for f in ids)
    [text] = webhook.texts()
    assert "TooManyProviderTokenUpdates" in text
    with freeze_time(now + timedelta(minutes=21)):
        later = deliver(db, apns_settings)
    assert (later.sent, later.stop) == (5, None)


def test_a_window_s_first_push_right_after_a_quiet_spell_falls_back_to_the_accepted_token(
    apns_settings: Settings, apns: FakeAPNs, caplog: pytest.LogCaptureFixture
) -> None:
    """APNs may count a renewal from when it first sees a token. After a quiet spell the
    last window's token is first used at 05:59:50; at 06:00:10 this window's token is
    refused as a renewal 20 seconds later. The push goes out with the token APNs
    accepted, no attempt is lost and nothing stops; once 20 minutes have passed, the
    new window's token is taken."""
    boundary = utcnow().replace(minute=0, second=0, microsecond=0)
    pusher = make_pusher(apns_settings)
    outcomes = []
    try:
        for at in (-10, 10, 20 * 60 + 30):
            with freeze_time(boundary + timedelta(seconds=at)):
                request = PushRequest(
                    str(uuid.uuid4()),
                    str(uuid.uuid4()),
                    apns_token(at + 100),
                    "T",
                    "B",
                    urgent=False,
                )
                with caplog.at_level(logging.WARNING, logger="followups.push"):
                    outcomes.append(pusher.run(pusher.push(request)))
    finally:
        pusher.close()
    assert [(o.kind, len(o.attempts)) for o in outcomes] == [("sent", 1)] * 3
    iats = [
        (r.status, r.jwt_claims["iat"] - boundary.timestamp())
        for r in apns.requests
        if r.jwt_claims
    ]
    assert iats == [
        (200, -WINDOW_SECONDS),  # the last window's token, first seen at 05:59:50
        (429, 0),  # this window's: a renewal 20 s after that one
        (200, -WINDOW_SECONDS),  # the accepted token again
        (200, 0),  # 20 minutes later this window's token is taken
    ]
    assert apns.token_renewals == 2
    assert "using the previous window's token" in caplog.text


def test_expired_provider_token_is_signed_again_once_and_resent(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """403 ExpiredProviderToken once: the token is signed anew and the push resent; the
    follow-up keeps its attempts."""
    fid = app_row(db)
    apns.respond(403, "ExpiredProviderToken", times=1)
    report = deliver(db, apns_settings)
    assert (report.sent, report.stop) == (1, None)
    assert [r.status for r in apns.requests] == [403, 200]
    assert attempt_counts(db) == Counter({fid: 1})


def test_provider_token_still_expired_after_signing_again_is_a_configuration_stop(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Expired twice in a row means this host's clock is off: stop, fail nothing."""
    fid = app_row(db)
    apns.respond(403, "ExpiredProviderToken")
    report = deliver(db, apns_settings)
    assert (report.stop, report.stop_reason, report.failed) == (
        "config_error",
        "ExpiredProviderToken",
        0,
    )
    assert len(apns.requests) == 2
    assert row(db, fid).status == "scheduled"


def test_full_outage_costs_a_few_requests_however_big_the_batch(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """Every push answered 503: the breaker counts failed attempts and lets one through
    at a time once one failed, so 1,000 due follow-ups cost about the threshold in
    requests. Nothing is marked failed; one alert."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(1000)]
    apns.respond(503, "ServiceUnavailable")
    settings = replace(apns_settings, outage_threshold=5, batch_size=1000, push_concurrency=200)
    report = deliver(db, settings, webhook)
    assert (report.stop, report.exit_code, report.failed) == ("outage", 1, 0)
    assert 5 <= len(apns.requests) <= 2 * 5
    assert sum(row(db, fid).status == "scheduled" for fid in ids) == 1000
    assert [t for t in webhook.texts() if "APNs keeps failing" in t]


def test_outage_on_an_established_connection_is_bounded_by_what_was_in_flight(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """APNs fails mid-run on a connection whose limit is already high: the pushes in
    flight fail once each, then no retry starts."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(600)]
    apns.latency = 0.002
    apns.respond(200, times=100)
    apns.respond(503, "ServiceUnavailable")
    settings = replace(apns_settings, outage_threshold=5, push_concurrency=50)
    report = deliver(db, settings)
    assert (report.stop, report.failed) == ("outage", 0)
    failed_requests = [r for r in apns.requests if r.status == 503]
    assert len(failed_requests) <= 50 + 5
    assert sum(row(db, fid).status == "sent" for fid in ids) == 100


def test_breaker_counts_failed_attempts_across_batches(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """Batches of one: the first follow-up uses its 3 attempts and waits to be retried;
    the count carries into the next batch, where the 5th failed attempt in a row trips it."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(10)]
    apns.respond(503, "ServiceUnavailable")
    settings = replace(apns_settings, outage_threshold=5, push_concurrency=1, batch_size=1)
    report = deliver(db, settings)
    assert (report.stop, report.exit_code, report.failed, report.retrying) == ("outage", 1, 0, 2)
    assert len(apns.requests) == 5
    assert sum(row(db, fid).status == "scheduled" for fid in ids) == 10


def test_rate_limited_device_answers_do_not_trip_the_breaker(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """429 TooManyRequests is about one device, not an outage."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(4)]
    apns.respond(429, "TooManyRequests", token=apns_token(0))
    report = deliver(db, replace(apns_settings, outage_threshold=2, push_concurrency=1))
    assert report.stop is None
    assert (report.sent, report.failed, report.retrying) == (3, 0, 1)
    assert attempts(db, ids[0])[-1][1:] == ("transient", "TooManyRequests")


def test_a_timed_out_push_retires_its_connection_without_failing_the_others(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """One stream never answered: it times out and is retried on a new connection; the
    pushes in flight beside it on the old connection still get their answers, once."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(1000)]
    apns.latency = 0.05
    apns.respond(200, token=apns_token(20), action="stall", times=1)
    # 1,000 pushes, 20 at a time: 2.5 s in all, so the 1.5 s timeout falls mid-batch
    # (and stays well above an ordinary answer's time on a busy machine).
    settings = replace(apns_settings, push_timeout_seconds=1.5, push_concurrency=20)
    report = deliver(db, settings)
    assert (report.sent, report.failed, report.stop) == (1000, 0, None)
    counts = attempt_counts(db)
    assert counts.pop(ids[20]) == 2
    assert set(counts.values()) == {1}
    assert set(pushes_per_follow_up(apns).values()) == {1}
    assert apns.connections_opened == 2


class _SilentServer:
    """Accepts TCP connections and never says a word (no TLS handshake): an APNs address
    behind a broken proxy or firewall, where every connect ends in a timeout."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self._sock.close()


def test_a_connect_that_times_out_is_not_tried_again_by_every_waiting_push(
    db: Database, apns_settings: Settings
) -> None:
    """40 pushes wait for a connection whose TLS handshake never ends: they share that
    connect's failure instead of each trying (and waiting out) one of its own, and once
    the breaker trips no new connect starts."""
    for i in range(40):
        app_row(db, device_token=apns_token(i))
    silent = _SilentServer()
    try:
        settings = replace(
            apns_settings,
            apns_url=f"https://127.0.0.1:{silent.port}",
            push_timeout_seconds=0.3,
            push_concurrency=40,
            outage_threshold=5,
        )
        report = deliver(db, settings)
    finally:
        silent.close()
    assert (report.stop, report.failed) == ("outage", 0)
    assert len(silent.accepted) <= 5 + 1
