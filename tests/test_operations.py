"""Operator commands: stats (table, --json, --check), the success-rate alert's
condition, the heartbeat, cleanup and test-send, on both backends (metrics: test_metrics)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, insert, select

from followup_cli.alerting import raise_alerts
from followup_cli.alerts import WebhookAlerter
from followup_cli.cleanup import cleanup
from followup_cli.db import Database
from followup_cli.delivery import send_due
from followup_cli.monitoring import CheckRules, after_send_due, success_rate_finding
from followup_cli.push.log import LogPusher
from followup_cli.repository import AttemptRecord
from followup_cli.settings import Settings
from followup_cli.tables import (
    follow_up_attempts,
    follow_up_messages,
    follow_up_requests,
    follow_up_requests_archive,
)
from followup_cli.vocabulary import RunEnd
from tests.fakes.apns import FakeAPNs
from tests.fakes.webhook import FakeWebhook
from tests.helpers import TOKEN_A, TOKEN_B, apns_env, app_row, cli, messages, row

NOW = datetime.fromisoformat("2026-11-28T12:00:00+00:00")


def seed(db: Database, rows: list[dict[str, Any]]) -> None:
    """Bulk-insert follow-ups (app columns plus whatever the scenario needs)."""
    base = {
        "conversation_id": None,
        "user_id": "parent",
        "urgency": "routine",
        "display_text": "How is she?",
        "status": "scheduled",
        "device_token": None,
        "created_at": NOW - timedelta(days=1),
    }
    keys = set(base) | {k for r in rows for k in r}
    values = [{**dict.fromkeys(keys), **base, "id": str(uuid.uuid4()), **r} for r in rows]
    for v in values:
        v["conversation_id"] = v["conversation_id"] or str(uuid.uuid4())
    with db.engine.begin() as conn:
        for start in range(0, len(values), 5000):
            conn.execute(insert(follow_up_requests), values[start : start + 5000])


def day_of_mixed_outcomes(db: Database) -> None:
    """18 sent (lag 30 s .. 9 min), 2 failed, 1 cancelled due in the window, 1 overdue."""
    rows: list[dict[str, Any]] = []
    for i in range(18):
        due = NOW - timedelta(hours=20) + timedelta(hours=i)
        rows.append(
            {
                "status": "sent",
                "scheduled_for": due,
                "sent_at": due + timedelta(seconds=30 * (i + 1)),
            }
        )
    rows.append(
        {
            "status": "failed",
            "scheduled_for": NOW - timedelta(hours=3),
            "failed_at": NOW - timedelta(hours=3),
            "failure_reason": "Unregistered",
        }
    )
    rows.append(
        {
            "status": "failed",
            "scheduled_for": NOW - timedelta(hours=2),
            "failed_at": NOW - timedelta(hours=2),
            "failure_reason": "BadDeviceToken",
        }
    )
    rows.append({"status": "cancelled", "scheduled_for": NOW - timedelta(hours=5)})
    rows.append(
        {
            "status": "sent",
            "scheduled_for": NOW - timedelta(days=3),
            "sent_at": NOW - timedelta(days=3),
        }
    )  # outside the window
    rows.append({"status": "scheduled", "scheduled_for": NOW - timedelta(minutes=15)})
    seed(db, rows)


def test_stats_json_over_a_day_of_mixed_outcomes(db_url: str, db: Database) -> None:
    """--json has the documented fields with the right numbers."""
    day_of_mixed_outcomes(db)
    with freeze_time(NOW):
        result = cli(db_url, "stats", "--since", "24h", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["window_seconds"] == 86400
    assert (data["sent"], data["failed"], data["cancelled"]) == (18, 2, 1)
    assert data["success_rate"] == 90.0
    assert data["failures_by_reason"] == {"Unregistered": 1, "BadDeviceToken": 1}
    assert data["lag_seconds"]["max"] == pytest.approx(540, abs=0.01)
    assert data["lag_seconds"]["p50"] == pytest.approx(285, abs=0.01)
    assert data["lag_seconds"]["p95"] == pytest.approx(514.5, abs=0.01)
    assert data["overdue"] == 1
    assert data["oldest_overdue_seconds"] == pytest.approx(900, abs=0.01)
    assert data["last_run_at"] is None
    assert sum(h["sent"] for h in data["sent_per_hour"]) == 18


def test_stats_table_is_readable_plain_text_when_piped(db_url: str, db: Database) -> None:
    """Without a terminal the table is plain aligned text with a bar chart."""
    day_of_mixed_outcomes(db)
    with freeze_time(NOW):
        result = cli(db_url, "stats")
    assert result.exit_code == 0
    out = result.stdout
    assert "success rate                  90.0%" in out
    assert "Unregistered" in out
    assert "sends per hour (UTC):" in out
    assert "#" in out
    assert "\x1b[" not in out  # no colour codes in a pipe


def test_stats_bad_since_is_exit_2(db_url: str) -> None:
    """A malformed window is a usage error."""
    result = cli(db_url, "stats", "--since", "yesterday")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --since must be a number followed by")


def test_check_healthy_after_a_recent_run(db_url: str, db: Database, settings: Settings) -> None:
    """A run a minute ago, nothing overdue, rate fine: exit 0."""
    app_row(db)
    with freeze_time(NOW):
        send_due(db, LogPusher(), settings, WebhookAlerter("http://127.0.0.1:9/"))
    with freeze_time(NOW + timedelta(minutes=1)):
        result = cli(db_url, "stats", "--check")
    assert result.exit_code == 0, result.output
    assert "check: OK" in result.stdout


def test_check_names_each_failing_rule(db_url: str, db: Database, settings: Settings) -> None:
    """Low rate, stale cron and an old overdue follow-up each fail the check."""
    with freeze_time(NOW - timedelta(minutes=30)):
        send_due(db, LogPusher(), settings, WebhookAlerter("http://127.0.0.1:9/"))
    day_of_mixed_outcomes(db)
    with freeze_time(NOW):
        result = cli(db_url, "stats", "--check", "--min-attempts", "10")
        relaxed = cli(
            db_url,
            "stats",
            "--check",
            "--min-attempts",
            "50",
            "--max-run-age",
            "1h",
            "--max-overdue",
            "1h",
        )
        as_json = cli(db_url, "stats", "--check", "--json", "--min-attempts", "10")
    assert result.exit_code == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("check: FAIL")]
    assert len(fails) == 3
    assert "success rate 90.0% is below 95%" in fails[0]
    assert "last send-due run started 30m ago" in fails[1]
    assert "1 follow-up(s) overdue, the oldest by 15m" in fails[2]
    assert relaxed.exit_code == 0, relaxed.output
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["healthy"] is False


def test_check_without_any_run_says_cron_never_ran(db_url: str) -> None:
    """An empty history is unhealthy: nobody is polling."""
    result = cli(db_url, "stats", "--check")
    assert result.exit_code == 1
    assert "send-due has never run" in result.stdout


def outcomes_at(db: Database, at: datetime, sent: int, failed: int) -> None:
    seed(
        db,
        [{"status": "sent", "scheduled_for": at, "sent_at": at} for _ in range(sent)]
        + [
            {"status": "failed", "scheduled_for": at, "failed_at": at, "failure_reason": "Shutdown"}
            for _ in range(failed)
        ],
    )


def test_success_rate_alert_fires_reminds_after_the_interval_and_resolves_once(
    db: Database, webhook: FakeWebhook
) -> None:
    """Below 95 %: one alert, silence until the repeat interval has passed, a reminder;
    one "resolved" when it is back; nothing while it is judged on too few attempts."""
    rules = CheckRules(min_attempts=10)
    alerter = WebhookAlerter(webhook.url)

    def after_a_run() -> str | None:
        finding = success_rate_finding(db, rules)
        return raise_alerts(db, alerter, [finding] if finding else [], [], timedelta(hours=4))

    with freeze_time(NOW):
        assert after_a_run() is None  # nothing attempted yet: not judged
    outcomes_at(db, NOW - timedelta(minutes=5), sent=18, failed=2)
    with freeze_time(NOW):
        assert after_a_run() is not None
    for minutes in (30, 61, 239):
        outcomes_at(db, NOW + timedelta(minutes=minutes - 1), sent=9, failed=1)
        with freeze_time(NOW + timedelta(minutes=minutes)):
            assert after_a_run() is None  # still low: within the repeat interval
    outcomes_at(db, NOW + timedelta(minutes=239), sent=9, failed=1)
    with freeze_time(NOW + timedelta(minutes=241)):
        assert after_a_run() is not None  # four hours on: a reminder
    outcomes_at(db, NOW + timedelta(minutes=241), sent=100, failed=0)
    with freeze_time(NOW + timedelta(minutes=242)):
        assert after_a_run() is not None  # resolved
    with freeze_time(NOW + timedelta(minutes=243)):
        assert after_a_run() is None  # and only once
    texts = webhook.texts()
    assert len(texts) == 3
    assert texts[0].startswith("followups [FIRING success-rate] ")
    assert "is 90.0% (18 sent, 2 failed), below 95%" in texts[0]
    assert texts[1].startswith("followups [STILL FIRING success-rate, for 4h 1m] ")
    assert "below 95%" in texts[1]
    assert texts[2].startswith("followups [RESOLVED success-rate after 4h 2m] ")
    assert "is 98.3% (118 sent, 2 failed)" in texts[2]


def test_heartbeat_is_pinged_after_a_successful_run_only(
    db: Database, settings: Settings, webhook: FakeWebhook
) -> None:
    """The dead-man's switch hears from every completed run (GET), not from stopped ones."""
    hb = replace(settings, heartbeat_url=webhook.url + "/ping")
    report = send_due(db, LogPusher(), hb, WebhookAlerter(webhook.url))
    after_send_due(db, report, hb)
    assert len(webhook.gets) == 1 and webhook.gets[0].endswith("/ping")
    report.stop = RunEnd.OUTAGE
    after_send_due(db, report, hb)
    assert len(webhook.gets) == 1


@pytest.mark.slow
def test_cleanup_batches_through_100k_rows_and_keeps_what_it_must(db: Database) -> None:
    """Old sent/cancelled go in batches; failed, scheduled, recent ones and messages stay."""
    old = NOW - timedelta(days=120)
    rows: list[dict[str, Any]] = [
        {"status": "sent", "scheduled_for": old, "sent_at": old} for _ in range(90_000)
    ]
    rows += [
        {"status": "cancelled", "scheduled_for": old, "created_at": old} for _ in range(10_000)
    ]
    rows += [{"status": "failed", "scheduled_for": old, "failed_at": old} for _ in range(50)]
    rows += [{"status": "scheduled", "scheduled_for": old} for _ in range(5)]
    rows += [
        {
            "status": "sent",
            "scheduled_for": NOW - timedelta(days=10),
            "sent_at": NOW - timedelta(days=10),
        }
        for _ in range(20)
    ]
    seed(db, rows)
    some_sent = _ids(db, "sent", limit=3)
    with db.engine.begin() as conn:
        conn.execute(
            insert(follow_up_messages),
            [
                {
                    "id": str(uuid.uuid4()),
                    "follow_up_id": fid,
                    "message_content": "kept",
                    "conversation_id": str(uuid.uuid4()),
                    "user_id": "parent",
                    "is_from_user": False,
                }
                for fid in some_sent
            ],
        )
    batches: list[int] = []
    with freeze_time(NOW):
        report = cleanup(db, timedelta(days=90), batch_size=5000, progress=batches.append)
    assert (report.sent, report.cancelled) == (90_000, 10_000)
    assert len(batches) == 20 and max(batches) == 5000
    assert _count(db, "sent") == 20
    assert _count(db, "cancelled") == 0
    assert _count(db, "failed") == 50
    assert _count(db, "scheduled") == 5
    assert len(messages(db)) == 3


def test_cleanup_archive_moves_rows_and_dry_run_changes_nothing(db_url: str, db: Database) -> None:
    """--dry-run only counts; --archive moves instead of deleting."""
    old = NOW - timedelta(days=100)
    seed(
        db,
        [{"status": "sent", "scheduled_for": old, "sent_at": old} for _ in range(7)]
        + [{"status": "cancelled", "scheduled_for": old, "created_at": old} for _ in range(3)],
    )
    with freeze_time(NOW):
        dry = cli(db_url, "cleanup", "--dry-run")
        assert "Would remove 10 follow-up(s)" in dry.stdout
        assert _count(db, "sent") == 7
        done = cli(db_url, "cleanup", "--archive", "--batch-size", "4")
    assert done.exit_code == 0, done.output
    assert "Archived 10 follow-up(s)" in done.stdout
    with db.engine.connect() as conn:
        archived = conn.scalar(select(func.count()).select_from(follow_up_requests_archive))
    assert archived == 10
    assert _count(db, "sent") == 0


def _count(db: Database, status: str) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.scalar(select(func.count()).where(follow_up_requests.c.status == status)) or 0
        )


def _ids(db: Database, status: str, limit: int) -> list[str]:
    with db.engine.connect() as conn:
        return list(
            conn.scalars(
                select(follow_up_requests.c.id)
                .where(follow_up_requests.c.status == status)
                .limit(limit)
            )
        )


# -- test-send --------------------------------------------------------------------------


def test_send_prints_exactly_what_apns_received_and_changes_nothing(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """The printed payload and headers are what went out; the follow-up is untouched."""
    fid = app_row(db, scheduled_for=NOW.replace(year=2099), urgency="urgent")
    result = cli(db_url, "test-send", fid, env=apns_env(apns))
    assert result.exit_code == 0, result.output
    [push] = apns.requests
    printed = json.loads(result.stdout.split("payload:\n", 1)[1].split("\nattempt", 1)[0])
    assert printed == push.payload
    assert f"apns-collapse-id: {fid}" in result.stdout
    assert "attempt 1: status 200, accepted, apns-id " + push.apns_id in result.stdout
    assert row(db, fid).status == "scheduled"
    assert messages(db, fid) == []
    a = follow_up_attempts.c
    with db.engine.connect() as conn:
        assert conn.execute(select(a.is_test).where(a.follow_up_id == fid)).scalar_one() is True


def test_send_to_another_token_and_mark_sent(db_url: str, db: Database, apns: FakeAPNs) -> None:
    """--to overrides the token; --mark-sent finishes the follow-up like send-due."""
    fid = app_row(db, device_token=None)
    result = cli(db_url, "test-send", fid, "--to", TOKEN_B, "--mark-sent", env=apns_env(apns))
    assert result.exit_code == 0, result.output
    assert [r.token for r in apns.requests] == [TOKEN_B]
    assert row(db, fid).status == "sent"
    assert len(messages(db, fid)) == 1


def test_send_dry_run_sends_nothing(db_url: str, db: Database, apns: FakeAPNs) -> None:
    """--dry-run prints the payload without a push."""
    fid = app_row(db)
    result = cli(db_url, "test-send", fid, "--dry-run", env=apns_env(apns))
    assert result.exit_code == 0
    assert '"follow_up_id": "' + fid in result.stdout
    assert apns.requests == []


def test_send_refusals_and_failures(db_url: str, db: Database, apns: FakeAPNs) -> None:
    """Cancelled (without --force), unknown, malformed, tokenless and rejected cases."""
    env = apns_env(apns)
    cancelled = app_row(db, status="cancelled")
    r = cli(db_url, "test-send", cancelled, env=env)
    assert r.exit_code == 1 and "is cancelled; use --force" in r.stderr
    assert cli(db_url, "test-send", cancelled, "--force", env=env).exit_code == 0
    unknown = str(uuid.uuid4())
    r = cli(db_url, "test-send", unknown, env=env)
    assert (r.exit_code, r.stderr.strip()) == (1, f"Error: no follow-up with id {unknown}")
    r = cli(db_url, "test-send", "12345", env=env)
    assert r.exit_code == 2 and r.stderr.startswith("Error: id must be a UUID")
    tokenless = app_row(db, device_token=None)
    r = cli(db_url, "test-send", tokenless, env=env)
    assert r.exit_code == 2 and "has no device token; give one with --to" in r.stderr
    r = cli(db_url, "test-send", tokenless, "--to", "zz", env=env)
    assert r.exit_code == 2 and "--to is neither an APNs device token" in r.stderr
    rejected = app_row(db, device_token=TOKEN_A)
    apns.respond(410, "Unregistered", token=TOKEN_A)
    r = cli(db_url, "test-send", rejected, "--mark-sent", env=env)
    assert r.exit_code == 1
    assert "status 410, reason Unregistered" in r.stdout
    assert (row(db, rejected).status, row(db, rejected).claimed_by) == ("scheduled", None)


def test_test_sends_do_not_count_in_the_success_rate(db_url: str, db: Database) -> None:
    """Attempts recorded as tests are left out of stats."""
    fid = app_row(db)
    with db.transaction() as repo:
        repo.record_attempts("qa", [AttemptRecord(fid, NOW, 1, "sent", is_test=True)])
    with freeze_time(NOW + timedelta(minutes=1)):
        data = json.loads(cli(db_url, "stats", "--json").stdout)
    assert (data["sent"], data["pushed"], data["success_rate"]) == (0, 0, None)
