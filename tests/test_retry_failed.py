"""retry-failed: failed follow-ups back to scheduled, dead tokens only with a new token or
in-app only, filters, dry run, and bad options."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from followup_cli.db import Database
from followup_cli.tables import follow_up_requests
from tests.fakes.apns import FakeAPNs
from tests.helpers import TOKEN_A, TOKEN_B, apns_env, cli, failed_row, messages, row


def test_transient_failures_are_requeued_and_delivered(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """Requeued follow-ups go out with the next send-due."""
    fid = failed_row(db, "ServiceUnavailable")
    result = cli(db_url, "retry-failed")
    assert result.exit_code == 0, result.output
    assert "Requeued 1 failed follow-up(s)." in result.stdout
    assert f"{fid}  was: ServiceUnavailable" in result.stdout
    r = row(db, fid)
    assert (r.status, r.failure_reason, r.failed_at) == ("scheduled", None, None)
    assert cli(db_url, "send-due", env=apns_env(apns)).exit_code == 0
    assert row(db, fid).status == "sent"
    assert [p.token for p in apns.accepted()] == [TOKEN_A]


def test_dead_token_is_held_back_unless_in_app_only(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """Unregistered: not requeued as is; --in-app-only delivers it without a push."""
    fid = failed_row(db, "Unregistered")
    held = cli(db_url, "retry-failed")
    assert "Requeued 0" in held.stdout and "Held back 1" in held.stdout
    assert row(db, fid).status == "failed"
    done = cli(db_url, "retry-failed", "--in-app-only")
    assert "Requeued 1 failed follow-up(s) (in-app only, no push)." in done.stdout
    assert cli(db_url, "send-due", env=apns_env(apns)).exit_code == 0
    assert row(db, fid).status == "sent"
    assert len(messages(db, fid)) == 1
    assert apns.requests == []


def test_dead_token_is_requeued_once_the_app_stored_a_new_one(db_url: str, db: Database) -> None:
    """A changed device token lifts the hold."""
    fid = failed_row(db, "BadDeviceToken")
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.id == fid)
            .values(device_token=TOKEN_B)
        )
    assert "Requeued 1" in cli(db_url, "retry-failed").stdout
    assert row(db, fid).status == "scheduled"


def test_filters_and_dry_run(db_url: str, db: Database) -> None:
    """--id, --since and --reason combine; --dry-run lists without changing."""
    old = failed_row(db, "ServiceUnavailable", ago=timedelta(days=3))
    recent = failed_row(db, "ServiceUnavailable", ago=timedelta(hours=2))
    other = failed_row(db, "InternalServerError", ago=timedelta(hours=1))
    dry = cli(db_url, "retry-failed", "--since", "24h", "--dry-run")
    assert "Would requeue 2" in dry.stdout
    assert all(row(db, f).status == "failed" for f in (old, recent, other))
    by_reason = cli(db_url, "retry-failed", "--since", "24h", "--reason", "ServiceUnavailable")
    assert "Requeued 1" in by_reason.stdout
    assert [row(db, f).status for f in (old, recent, other)] == ["failed", "scheduled", "failed"]
    unknown = str(uuid.uuid4())
    by_id = cli(db_url, "retry-failed", "--id", other, "--id", unknown)
    assert "Requeued 1" in by_id.stdout
    assert f"{unknown}  is not a failed follow-up" in by_id.stdout
    assert row(db, other).status == "scheduled"
    assert row(db, old).status == "failed"


def test_bad_options_exit_2(db_url: str) -> None:
    """Malformed --id or --since: one line, exit 2."""
    result = cli(db_url, "retry-failed", "--id", "nope")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --id must be a UUID like 3f2b8c1e-..., got 'nope'"
    result = cli(db_url, "retry-failed", "--since", "forever")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --since must be a number followed by")


def test_a_requeued_failure_is_failed_again_with_its_new_reason(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """The loop closes: a requeue that fails again is failed again, with the new reason."""
    fid = failed_row(db, "ServiceUnavailable")
    cli(db_url, "retry-failed")
    apns.respond(410, "Unregistered")
    assert cli(db_url, "send-due", env=apns_env(apns)).exit_code == 0
    r = row(db, fid)
    assert (r.status, r.failure_reason) == ("failed", "Unregistered")
