"""Rows the app's database refuses, on PostgreSQL with the app's own constraints, foreign
keys and triggers: the other follow-ups of the batch are sent and pushed exactly once,
the refused one is pushed at most once and ends failed or held, and exactly one alert
names it, over three runs.

Each test adds to the migrated schema what a real app database might have, then runs
send-due three times through the real APNs client against the fake APNs. Between the
runs, any lease still held is expired (as the passage of time would) so that a row
left behind would be claimed and pushed again.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.report import RunReport
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_attempts, follow_up_messages, follow_up_requests
from followup_cli.vocabulary import FailureReason
from tests.fakes.apns import FakeAPNs
from tests.fakes.webhook import FakeWebhook
from tests.helpers import apns_token, deliver, due_rows, execute, messages, row

pytestmark = pytest.mark.postgres
r = follow_up_requests.c


@pytest.fixture
def db_url(pg_db_url: str) -> str:
    """These tests are about PostgreSQL's refusals: the shared fixtures use PostgreSQL."""
    return pg_db_url


def run_three_times(db: Database, settings: Settings, webhook: FakeWebhook) -> list[RunReport]:
    """Three cron runs; before the 2nd and 3rd, every lease still held has run out."""
    reports = []
    for _ in range(3):
        with db.engine.begin() as conn:
            conn.execute(
                update(follow_up_requests)
                .where(r.claimed_by.is_not(None))
                .values(claim_expires_at=utcnow() - timedelta(seconds=1))
            )
        reports.append(deliver(db, settings, webhook))
    return reports


def pushes_per_row(apns: FakeAPNs, ids: list[str]) -> dict[str, int]:
    """How many requests reached APNs for each follow-up (accepted or not)."""
    counts = Counter(p.headers.get("apns-collapse-id") for p in apns.requests)
    return {fid: counts[fid] for fid in ids}


def check_outcome(
    db: Database,
    apns: FakeAPNs,
    webhook: FakeWebhook,
    ids: list[str],
    refused: str,
    *,
    status: str,
    detail_has: str,
    never_in_alert: list[str],
) -> None:
    """The common assertions of every case."""
    others = [fid for fid in ids if fid != refused]
    pushes = pushes_per_row(apns, ids)
    accepted = Counter(apns.collapse_ids())
    assert {fid: pushes[fid] for fid in others} == dict.fromkeys(others, 1)
    assert {fid: accepted[fid] for fid in others} == dict.fromkeys(others, 1)
    assert pushes[refused] <= 1
    for fid in others:
        assert row(db, fid).status == "sent"
        assert len(messages(db, fid)) == 1
    bad = row(db, refused)
    assert bad.status == status
    assert (bad.failure_reason, bad.claimed_by) == (FailureReason.DATABASE_REJECTED, None)
    if status == "scheduled":
        assert bad.held_at is not None
    assert detail_has in bad.failure_detail
    assert messages(db, refused) == []
    naming = [t for t in webhook.texts() if refused in t]
    assert len(naming) == 1, webhook.texts()
    assert detail_has in naming[0]
    for secret in never_in_alert:
        assert secret not in naming[0]
        assert secret not in bad.failure_detail
    with db.engine.connect() as conn:
        leased = conn.scalar(select(func.count()).where(r.claimed_by.is_not(None)))
        # The refused row's push attempt is on record, with APNs' answer.
        outcomes = list(
            conn.scalars(
                select(follow_up_attempts.c.outcome).where(
                    follow_up_attempts.c.follow_up_id == refused
                )
            )
        )
    assert leased == 0
    assert len(outcomes) == pushes[refused]


def test_missing_conversation_foreign_key_fails_one_row_and_sends_the_rest(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """60 due, one belongs to a conversation that is gone: 59 sent once, 1 failed once."""
    execute(
        db,
        "CREATE TABLE conversations (id uuid PRIMARY KEY)",
        "ALTER TABLE follow_up_messages ADD CONSTRAINT follow_up_messages_conversation_fk "
        "FOREIGN KEY (conversation_id) REFERENCES conversations (id)",
    )
    gone = str(uuid.uuid4())
    ids = due_rows(db, 60, conversation_id={17: gone})
    with db.engine.begin() as conn:
        kept = [c for c in conn.scalars(select(r.conversation_id)) if c != gone]
        conn.execute(text("INSERT INTO conversations (id) VALUES (:id)"), [{"id": c} for c in kept])

    reports = run_three_times(db, apns_settings, webhook)

    assert [(x.claimed, x.sent, x.failed, x.held) for x in reports] == [
        (60, 59, 1, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
    ]
    assert all(x.exit_code == 0 for x in reports)
    check_outcome(
        db,
        apns,
        webhook,
        ids,
        ids[17],
        status="failed",
        detail_has="follow_up_messages_conversation_fk",
        never_in_alert=[gone, "Maya"],
    )


def test_status_check_without_failed_holds_the_dead_token_and_sends_the_rest(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A CHECK allowing only the documented statuses; one dead token: held, 19 sent."""
    execute(
        db,
        "ALTER TABLE follow_up_requests ADD CONSTRAINT follow_up_requests_status_check "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled'))",
    )
    ids = due_rows(db, 20)
    apns.respond(410, "Unregistered", token=apns_token(5))

    reports = run_three_times(db, apns_settings, webhook)

    assert [(x.claimed, x.sent, x.failed, x.held) for x in reports] == [
        (20, 19, 0, 1),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
    ]
    check_outcome(
        db,
        apns,
        webhook,
        ids,
        ids[5],
        status="scheduled",
        detail_has="follow_up_requests_status_check",
        never_in_alert=["Maya", apns_token(5)],
    )
    # Held, not failed: the failure alert does not name it a second time.
    assert not any("could not be delivered" in t for t in webhook.texts())

    # Once the constraint allows 'failed', retry-failed releases it. APNs never accepted
    # its push, so it is pushed again (and now fails as Unregistered, for good).
    from followup_cli.requeue import retry_failed

    execute(db, "ALTER TABLE follow_up_requests DROP CONSTRAINT follow_up_requests_status_check")
    released = retry_failed(db, reason=FailureReason.DATABASE_REJECTED)
    assert ([f.id for f in released.requeued], released.already_pushed) == ([ids[5]], set())
    assert row(db, ids[5]).in_app_only is False
    again = run_three_times(db, apns_settings, webhook)[0]
    assert (again.claimed, again.failed) == (1, 1)
    assert (row(db, ids[5]).status, row(db, ids[5]).failure_reason) == ("failed", "Unregistered")


def test_trigger_raising_for_one_row_fails_it_without_its_message_text(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A trigger whose RAISE message carries the row's text: only its function is kept."""
    execute(
        db,
        """CREATE FUNCTION app_reject_flagged() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF strpos(NEW.message_content, 'flagged') > 0 THEN
                RAISE EXCEPTION USING MESSAGE = 'message refused: ' || NEW.message_content;
            END IF;
            RETURN NEW;
        END $$""",
        "CREATE TRIGGER app_messages_guard BEFORE INSERT ON follow_up_messages "
        "FOR EACH ROW EXECUTE FUNCTION app_reject_flagged()",
    )
    ids = due_rows(db, 20, display_text={9: "Maya's rash, flagged by the nurse"})

    reports = run_three_times(db, apns_settings, webhook)

    assert [(x.sent, x.failed) for x in reports] == [(19, 1), (0, 0), (0, 0)]
    check_outcome(
        db,
        apns,
        webhook,
        ids,
        ids[9],
        status="failed",
        detail_has="app_reject_flagged",
        never_in_alert=["Maya", "rash", "message refused"],
    )
    assert "SQLSTATE P0001" in row(db, ids[9]).failure_detail


def test_value_too_long_for_a_narrowed_column_fails_only_that_row(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """message_content narrowed by the app to 40 characters; one longer text."""
    execute(db, "ALTER TABLE follow_up_messages ALTER COLUMN message_content TYPE varchar(40)")
    long_text = "Maya's fever: please measure again tonight and tell us"
    ids = due_rows(db, 20, display_text={0: long_text})

    reports = run_three_times(db, apns_settings, webhook)

    assert [(x.sent, x.failed) for x in reports] == [(19, 1), (0, 0), (0, 0)]
    check_outcome(
        db,
        apns,
        webhook,
        ids,
        ids[0],
        status="failed",
        detail_has="value too long for type character varying(40)",
        never_in_alert=["Maya", "fever"],
    )


def test_foreign_key_and_status_check_together_hold_the_row_with_both_reasons(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """The message is refused and so is marking it failed: held, both names recorded."""
    execute(
        db,
        "CREATE TABLE conversations (id uuid PRIMARY KEY)",
        "ALTER TABLE follow_up_messages ADD CONSTRAINT follow_up_messages_conversation_fk "
        "FOREIGN KEY (conversation_id) REFERENCES conversations (id)",
        "ALTER TABLE follow_up_requests ADD CONSTRAINT follow_up_requests_status_check "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled'))",
    )
    gone = str(uuid.uuid4())
    ids = due_rows(db, 10, conversation_id={3: gone})
    with db.engine.begin() as conn:
        kept = [c for c in conn.scalars(select(r.conversation_id)) if c != gone]
        conn.execute(text("INSERT INTO conversations (id) VALUES (:id)"), [{"id": c} for c in kept])

    reports = run_three_times(db, apns_settings, webhook)

    assert [(x.sent, x.failed, x.held) for x in reports] == [(9, 0, 1), (0, 0, 0), (0, 0, 0)]
    check_outcome(
        db,
        apns,
        webhook,
        ids,
        ids[3],
        status="scheduled",
        detail_has="follow_up_messages_conversation_fk",
        never_in_alert=[gone, "Maya"],
    )
    assert "follow_up_requests_status_check" in row(db, ids[3]).failure_detail


def test_every_row_refused_is_each_set_aside_once(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A trigger that refuses every message: all held or failed, none pushed twice."""
    execute(
        db,
        """CREATE FUNCTION app_read_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'maintenance'; END $$""",
        "CREATE TRIGGER app_freeze BEFORE INSERT ON follow_up_messages "
        "FOR EACH ROW EXECUTE FUNCTION app_read_only()",
    )
    ids = due_rows(db, 12)
    reports = run_three_times(db, apns_settings, webhook)
    assert [(x.sent, x.failed) for x in reports] == [(0, 12), (0, 0), (0, 0)]
    assert pushes_per_row(apns, ids) == dict.fromkeys(ids, 1)
    [alert] = [t for t in webhook.texts() if "refused" in t]
    assert all(fid in alert for fid in ids)


def test_held_row_shows_in_stats_fails_the_check_and_retry_failed_releases_it(
    db_url: str, db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """After the cause is fixed, retry-failed releases the held row and it is delivered."""
    from typer.testing import CliRunner

    from followup_cli.cli import app

    execute(
        db,
        "ALTER TABLE follow_up_requests ADD CONSTRAINT follow_up_requests_status_check "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled'))",
        "ALTER TABLE follow_up_messages ALTER COLUMN message_content TYPE varchar(30)",
    )
    [held] = due_rows(db, 1, display_text={0: "a text longer than thirty characters"})
    report = run_three_times(db, apns_settings, webhook)[0]
    assert report.held == 1

    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["--database-url", db_url, *args])

    stats = cli("stats", "--json", "--check")
    assert stats.exit_code == 1
    assert '"held": 1' in stats.stdout
    assert "held because the database refused" in stats.stdout
    assert cli("stats").stdout.count("held: refused by the database") == 1

    execute(
        db,
        "ALTER TABLE follow_up_requests DROP CONSTRAINT follow_up_requests_status_check",
        "ALTER TABLE follow_up_messages ALTER COLUMN message_content TYPE text",
    )
    retried = cli("retry-failed", "--reason", FailureReason.DATABASE_REJECTED)
    assert retried.exit_code == 0, retried.stdout
    assert "Requeued 1 failed or held follow-up(s)." in retried.stdout
    assert "already pushed, so in-app only" in retried.stdout
    assert (row(db, held).held_at, row(db, held).in_app_only) == (None, True)

    again = deliver(db, apns_settings, webhook)
    assert (again.sent, again.pushed, again.in_app_only) == (1, 0, 1)
    assert row(db, held).status == "sent"
    assert len(messages(db, held)) == 1
    assert apns.collapse_ids().count(held) == 1  # the parent got one push in all


def test_alert_and_detail_never_carry_values_from_the_detail_line(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A unique constraint the app added: PostgreSQL's DETAIL names the key's value."""
    execute(
        db,
        "CREATE UNIQUE INDEX app_one_message_per_user ON follow_up_messages (user_id)",
    )
    with db.engine.begin() as conn:
        conn.execute(
            insert(follow_up_messages).values(
                id=str(uuid.uuid4()),
                conversation_id=str(uuid.uuid4()),
                user_id="parent-maya-7",
                message_content="earlier",
                is_from_user=True,
            )
        )
    ids = due_rows(db, 5, user_id={0: "parent-maya-7", 1: "p1", 2: "p2", 3: "p3", 4: "p4"})
    run_three_times(db, apns_settings, webhook)
    check_outcome(
        db,
        apns,
        webhook,
        ids,
        ids[0],
        status="failed",
        detail_has="app_one_message_per_user",
        never_in_alert=["parent-maya-7", "Maya"],
    )


def test_a_row_that_cannot_even_be_held_is_named_as_unrecorded(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """Status CHECK without 'failed' and a trigger refusing this tool's hold: the others are
    sent, the alert says the row returns after its lease, its attempt is on record."""
    execute(
        db,
        "ALTER TABLE follow_up_requests ADD CONSTRAINT follow_up_requests_status_check "
        "CHECK (status IN ('scheduled', 'sent', 'cancelled'))",
        """CREATE FUNCTION app_no_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.held_at IS NOT NULL THEN RAISE EXCEPTION 'no'; END IF; RETURN NEW; END $$""",
        "CREATE TRIGGER app_no_hold_trigger BEFORE UPDATE ON follow_up_requests "
        "FOR EACH ROW EXECUTE FUNCTION app_no_hold()",
    )
    ids = due_rows(db, 5)
    apns.respond(410, "Unregistered", token=apns_token(2))
    report = deliver(db, apns_settings, webhook)
    assert (report.sent, report.failed, report.held, report.skipped) == (4, 0, 0, 1)
    [refused] = report.refused
    assert (refused.follow_up_id, refused.outcome) == (ids[2], "unrecorded")
    [alert] = [t for t in webhook.texts() if ids[2] in t]
    assert "not recorded, back in the queue after its lease" in alert
    stuck = row(db, ids[2])
    assert (stuck.status, stuck.held_at, stuck.claimed_by) == ("scheduled", None, report.run_id)
    with db.engine.connect() as conn:
        attempts = conn.scalar(
            select(func.count()).where(follow_up_attempts.c.follow_up_id == ids[2])
        )
    assert attempts == 1
