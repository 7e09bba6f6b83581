"""FCM access tokens and trust: one token shared by every run and host through the
database, renewed before it expires, renewed once when refused; the service account's
key checked by the token endpoint; FOLLOWUPS_FCM_CA_FILE winning over the CA bundles of
the environment; the credentials table closed to other roles; test-send for FCM tokens."""

from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from freezegun import freeze_time
from sqlalchemy import text
from typer.testing import CliRunner

from followup_cli import migrate
from followup_cli.cli import app
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.push.factory import make_pusher
from followup_cli.push.fcm import REFRESH_MARGIN
from followup_cli.push.protocol import PushRequest
from followup_cli.settings import Settings
from tests.fakes.fcm import FakeFCM
from tests.fakes.pki import make_pki
from tests.helpers import app_row, deliver, fcm_env, fcm_token, messages, row, start_send_due

CREDENTIAL = "fcm:followups@clara-parents.iam.gserviceaccount.com"


def _request() -> PushRequest:
    return PushRequest(
        str(uuid.uuid4()), str(uuid.uuid4()), fcm_token(1), "T", "B", False, service="fcm"
    )


def stored_token(db: Database) -> str | None:
    with db.transaction() as repo:
        found = repo.push_credential(CREDENTIAL)
    return None if found is None else found.token


@pytest.mark.slow
def test_one_access_token_serves_every_run_and_host(
    db_url: str, db: Database, fcm: FakeFCM
) -> None:
    """Three hosts starting at once with no token yet, then two cron minutes: one token
    fetched in all, stored in the database, and every message carried it."""
    ids: list[str] = []
    for runs in (3, 1, 2):
        ids += [app_row(db, device_token=fcm_token(len(ids) + i)) for i in range(20)]
        procs = [start_send_due(db_url, fcm_env(fcm)) for _ in range(runs)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    assert all(row(db, fid).status == "sent" for fid in ids)
    assert fcm.tokens_issued == 1
    assert fcm.bearers() == {stored_token(db)}
    assert len(fcm.accepted()) == 60


def test_token_is_reused_until_shortly_before_it_expires(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """A new run 50 minutes later reuses the stored token; one within REFRESH_MARGIN of
    its expiry (an hour) fetches the next one, which the following run reuses."""
    start = utcnow().replace(microsecond=0)
    for minutes in (0, 50, 56, 57):
        with freeze_time(start + timedelta(minutes=minutes)):
            app_row(db, device_token=fcm_token(minutes))
            report = deliver(db, fcm_settings)
            assert (report.sent, report.stop) == (1, None)
    assert fcm.tokens_issued == 2
    bearers = [r.bearer for r in fcm.requests]
    assert bearers[0] == bearers[1] != bearers[2] == bearers[3]
    assert 60 - 56 < REFRESH_MARGIN.total_seconds() / 60 < 60 - 50


def test_refused_token_is_renewed_once_and_the_push_goes_out(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """The stored token refused (401): one renewal, the message resent without using an
    attempt, the new token stored for the next runs."""
    app_row(db, device_token=fcm_token(1))
    deliver(db, fcm_settings)
    old = stored_token(db)
    fcm.revoke_tokens()
    fid = app_row(db, device_token=fcm_token(2))
    report = deliver(db, fcm_settings)
    assert (report.sent, report.stop) == (1, None)
    assert [r.status for r in fcm.requests] == [200, 401, 200]
    assert fcm.tokens_issued == 2
    assert stored_token(db) not in (None, old)
    assert row(db, fid).status == "sent"


def test_a_refused_token_is_not_sent_again_by_the_pushes_queued_behind_it(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """30 pushes waiting while the first one learns that the token was revoked: they go
    out with the renewed token, not with the refused one (one 401, one renewal)."""
    app_row(db, device_token=fcm_token(1))
    deliver(db, fcm_settings)
    fcm.reset()  # forgets the tokens it issued, as a revocation does, and the records
    fcm.latency = 0.02
    ids = [app_row(db, device_token=fcm_token(100 + i)) for i in range(30)]
    report = deliver(db, fcm_settings)
    assert (report.sent, report.stop) == (30, None), (
        [(r.status, r.bearer[-6:] if r.bearer else None) for r in fcm.requests],
        fcm.tokens_issued,
    )
    assert [r.status for r in fcm.requests].count(401) == 1
    assert fcm.tokens_issued == 1
    assert all(row(db, fid).status == "sent" for fid in ids)


def test_token_refused_again_after_renewal_is_a_configuration_stop(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """401 with a freshly fetched token too: the service account cannot send. Stop,
    nothing failed."""
    fid = app_row(db, device_token=fcm_token(1))
    fcm.respond("UNAUTHENTICATED")
    report = deliver(db, fcm_settings)
    assert (report.stop, report.stop_reason, report.failed) == (
        "config_error",
        "UNAUTHENTICATED",
        0,
    )
    assert [r.status for r in fcm.requests] == [401, 401]
    assert fcm.tokens_issued == 2
    assert (row(db, fid).status, row(db, fid).claimed_by) == ("scheduled", None)


def test_key_the_token_endpoint_does_not_know_is_a_configuration_stop(
    db: Database, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """The assertion signed with another key: invalid_grant, nothing sent or failed."""
    fid = app_row(db, device_token=fcm_token(1))
    settings = replace(fcm_settings, fcm_credentials_file=Path(fcm.wrong_credentials_file))
    report = deliver(db, settings)
    assert (report.stop, report.stop_reason, report.failed) == ("config_error", "TOKEN_REFUSED", 0)
    assert fcm.requests == [] and fcm.tokens_issued == 0 and fcm.token_requests == 1
    assert row(db, fid).status == "scheduled"


def test_renewal_claims_are_compare_and_set(db: Database) -> None:
    """One of two claims wins; a claim older than the timeout is taken over; a refused
    token is expired only if it is still the stored one."""
    now = utcnow()
    stale = now - timedelta(seconds=30)
    with db.transaction() as repo:
        assert repo.claim_credential_renewal("fcm:x", now, stale) is True
        assert repo.claim_credential_renewal("fcm:x", now, stale) is False
        later = now + timedelta(minutes=1)
        assert repo.claim_credential_renewal("fcm:x", later, later - timedelta(seconds=30))
        repo.store_credential("fcm:x", "t1", now + timedelta(hours=1), now)
        repo.expire_credential("fcm:x", "t0", now)  # already replaced: no change
        found = repo.push_credential("fcm:x")
        assert found is not None
        assert (found.token, found.expires_at, found.renewal_started_at) == (
            "t1",
            now + timedelta(hours=1),
            None,
        )
        repo.expire_credential("fcm:x", "t1", now)
        expired = repo.push_credential("fcm:x")
        assert expired is not None and expired.expires_at == now


# -- the CA file --------------------------------------------------------------------------


@pytest.fixture
def other_ca(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every CA bundle variable of the environment names a CA unrelated to the fake."""
    directory = tempfile.mkdtemp(prefix="other-ca-")
    ca = make_pki(directory).ca_file
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, ca)
    return ca


def test_ca_file_wins_over_the_environments_ca_bundles(
    other_ca: str, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """REQUESTS_CA_BUNDLE and friends name another CA: a requests session whose own
    `verify` is the fake's CA is still overruled by them (the trap), yet the pusher,
    given FOLLOWUPS_FCM_CA_FILE, reaches both the token endpoint and FCM."""
    session = requests.Session()
    session.verify = fcm.ca_file
    with pytest.raises(requests.exceptions.SSLError):
        session.post(fcm.token_uri, data={"grant_type": "x"}, timeout=5)

    pusher = make_pusher(fcm_settings)
    request = PushRequest(
        str(uuid.uuid4()), str(uuid.uuid4()), fcm_token(1), "T", "B", False, "fcm"
    )
    try:
        outcome = pusher.run(pusher.push(request))
    finally:
        pusher.close()
    assert outcome.kind == "sent", outcome.reason
    assert fcm.tokens_issued == 1 and len(fcm.accepted()) == 1


def test_without_the_ca_file_the_fake_is_not_trusted(
    other_ca: str, fcm_settings: Settings, fcm: FakeFCM
) -> None:
    """Without FOLLOWUPS_FCM_CA_FILE the environment's CA applies: the token endpoint
    cannot be verified, a transient failure (nothing sent)."""
    pusher = make_pusher(replace(fcm_settings, fcm_ca_file=None, outage_threshold=1))
    request = PushRequest(
        str(uuid.uuid4()), str(uuid.uuid4()), fcm_token(1), "T", "B", False, "fcm"
    )
    try:
        outcome = pusher.run(pusher.push(request))
    finally:
        pusher.close()
    assert (outcome.kind, outcome.reason) == ("transient", "TOKEN_ENDPOINT_UNREACHABLE")
    assert fcm.tokens_issued == 0 and fcm.requests == []


# -- the credentials table ------------------------------------------------------------------


@pytest.mark.postgres
def test_credentials_table_is_closed_to_other_roles(empty_pg_url: str) -> None:
    """Even where default privileges give every new table to PUBLIC (as hosted databases
    do for their API roles), the credentials table has row level security with no policy
    and no privilege for PUBLIC; an app's own new table shows the default privileges
    applied."""
    db = Database(empty_pg_url)
    with db.engine.begin() as conn:
        conn.execute(
            text("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC")
        )
    migrate.upgrade(db)
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE app_notes (id integer)"))
    with db.engine.connect() as conn:
        rls = conn.execute(
            text("SELECT relrowsecurity FROM pg_class WHERE relname = 'followups_push_credentials'")
        ).scalar_one()
        policies = conn.execute(
            text("SELECT count(*) FROM pg_policies WHERE tablename = 'followups_push_credentials'")
        ).scalar_one()

        def public_grants(table: str) -> int:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM information_schema.table_privileges "
                        "WHERE grantee = 'PUBLIC' AND table_name = :t"
                    ),
                    {"t": table},
                ).scalar_one()
            )

        assert (rls, policies) == (True, 0)
        assert public_grants("followups_push_credentials") == 0
        assert public_grants("app_notes") > 0  # the default privileges are in force
    db.close()


# -- test-send ------------------------------------------------------------------------------

runner = CliRunner()


def test_send_shows_the_fcm_message_exactly_as_sent_and_fcms_answer(
    db_url: str, db: Database, fcm: FakeFCM
) -> None:
    """test-send to an FCM token: the printed message is the one FCM received; the answer
    shows the status and FCM's message name; --dry-run sends nothing."""
    token = fcm_token(7)
    fid = app_row(db, device_token=token, urgency="urgent")
    env = fcm_env(fcm)
    dry = runner.invoke(app, ["--database-url", db_url, "test-send", fid, "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert fcm.requests == []
    result = runner.invoke(app, ["--database-url", db_url, "test-send", fid], env=env)
    assert result.exit_code == 0, result.output
    [push] = fcm.requests
    printed = json.loads(result.stdout.split("payload:\n", 1)[1].split("\nattempt", 1)[0])
    assert printed == {"message": push.message}
    assert "to FCM via push backend 'fcm'" in result.stdout
    assert "content-type: application/json; charset=utf-8" in result.stdout
    assert "attempt 1: status 200, accepted, message projects/clara-parents/messages/" in (
        result.stdout
    )
    assert row(db, fid).status == "scheduled" and messages(db, fid) == []
    fcm.respond("UNREGISTERED", token=token)
    failed = runner.invoke(app, ["--database-url", db_url, "test-send", fid], env=env)
    assert failed.exit_code == 1
    assert "status 404, reason UNREGISTERED" in failed.stdout


def test_send_to_an_fcm_token_without_fcm_configured_is_a_usage_error(
    db_url: str, db: Database
) -> None:
    """FOLLOWUPS_PUSH=apns and an FCM token: exit 2 with one line, nothing claimed."""
    fid = app_row(db, device_token=fcm_token(1))
    env = {
        "FOLLOWUPS_PUSH": "apns",
        "FOLLOWUPS_APNS_KEY_FILE": str(Path(__file__)),
    }
    result = runner.invoke(app, ["--database-url", db_url, "test-send", fid, "--dry-run"], env=env)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: the follow-up's device token is an FCM token, but FOLLOWUPS_PUSH=apns does "
        "not turn FCM on"
    )
