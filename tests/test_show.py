"""`followups show ID`: one follow-up's whole story, through the real CLI, on SQLite and
PostgreSQL; never its text, the child's name or the whole device token."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_requests
from tests.fakes.apns import FakeAPNs
from tests.helpers import TOKEN_A, apns_env, app_row, attempts, cli, due_again, row

r = follow_up_requests.c
TEXT = "How is Maya's fever today?"


def show(db_url: str, follow_up_id: str, *more: str) -> Any:
    result = cli(db_url, "show", follow_up_id, *more)
    # Whatever the command says, it never says the message, the child or the whole token.
    for secret in (TEXT, "Maya", TOKEN_A):
        assert secret not in result.output
    return result


def test_a_follow_up_that_failed_twice_then_was_sent(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """Two 503s, then APNs takes it: three attempts in order with their answers, the run
    and host, the in-app message's time, the lateness, the token masked."""
    fid = app_row(db, display_text=TEXT, scheduled_for=utcnow() - timedelta(minutes=5))
    apns.respond(503, "ServiceUnavailable", times=2)
    sent = cli(db_url, "send-due", env=apns_env(apns))
    assert sent.exit_code == 0, sent.output
    assert attempts(db, fid) == [
        (1, "transient", "ServiceUnavailable"),
        (2, "transient", "ServiceUnavailable"),
        (3, "sent", None),
    ]
    stored = row(db, fid)

    result = show(db_url, fid)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"follow-up {fid}\n")
    assert "  status          sent\n" in out
    assert "  late            5." in out  # minutes
    assert "aaaaaaaa\u2026 (APNs)" in out
    assert "  held            no\n" in out
    assert "  retrying        no\n" in out
    assert "  claimed         no\n" in out
    assert "attempts: 3\n" in out
    lines = out.splitlines()
    first = lines.index("attempts: 3")
    tried = lines[first + 1 : first + 4]
    assert [line.split()[3] for line in tried] == ["#1", "#2", "#3"]
    assert "status 503  reason ServiceUnavailable  APNs" in tried[0]
    assert "status 503  reason ServiceUnavailable  APNs" in tried[1]
    assert "sent       status 200  reason -  APNs  apns-id " in tried[2]
    assert "runs: 1\n" in out and "completed" in out

    data = json.loads(show(db_url, fid, "--json").stdout)
    assert data["id"] == fid
    assert data["status"] == "sent"
    assert data["sent_at"] == stored.sent_at.isoformat()
    assert data["lateness_seconds"] == (stored.sent_at - stored.scheduled_for).total_seconds()
    assert data["message_at"] is not None
    assert data["device_token"] == "aaaaaaaa\u2026"
    assert data["service"] == "apns"
    assert data["claimed_now"] is False
    assert [
        (a["attempt"], a["outcome"], a["reason"], a["status_code"], a["service"])
        for a in data["attempts"]
    ] == [
        (1, "transient", "ServiceUnavailable", 503, "apns"),
        (2, "transient", "ServiceUnavailable", 503, "apns"),
        (3, "sent", None, 200, "apns"),
    ]
    accepted = [p.apns_id for p in apns.accepted()]
    assert data["attempts"][2]["provider_id"] in accepted
    [run] = data["runs"]
    assert run["id"] == data["attempts"][0]["run_id"]
    assert run["outcome"] == "completed" and run["host"]


def test_a_follow_up_waiting_to_be_retried_then_sent_by_the_next_run(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """Three 503s leave it scheduled with a retry time (and the run stopped, as in an
    outage); the next run sends it, and show tells both runs apart."""
    fid = app_row(db, display_text=TEXT)
    apns.respond(503, "ServiceUnavailable", times=3)
    assert cli(db_url, "send-due", env=apns_env(apns)).exit_code == 1

    waiting = json.loads(show(db_url, fid, "--json").stdout)
    assert waiting["status"] == "scheduled"
    assert waiting["retry_at"] is not None and waiting["retry_count"] == 1
    assert waiting["lateness_seconds"] > 0  # overdue already
    assert waiting["message_at"] is None
    assert "  retrying        next at " in show(db_url, fid).stdout

    due_again(db)
    assert cli(db_url, "send-due", env=apns_env(apns)).exit_code == 0
    data = json.loads(show(db_url, fid, "--json").stdout)
    assert data["status"] == "sent" and data["retry_at"] is None
    assert [a["outcome"] for a in data["attempts"]] == ["transient"] * 3 + ["sent"]
    assert len(data["runs"]) == 2
    assert data["attempts"][0]["run_id"] != data["attempts"][3]["run_id"]


def test_a_held_follow_up(db_url: str, db: Database) -> None:
    """A follow-up the database refused to record shows as held, with why."""
    fid = app_row(db, display_text=TEXT)
    held_at = utcnow()
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(r.id == fid)
            .values(
                held_at=held_at,
                failure_reason="database_rejected",
                failure_detail="check constraint follow_up_requests_status_check",
            )
        )
    result = show(db_url, fid)
    assert result.exit_code == 0, result.output
    assert "  held            since " in result.stdout
    assert (
        "  failure         database_rejected (check constraint "
        "follow_up_requests_status_check)\n" in result.stdout
    )
    assert "attempts: 0\n" in result.stdout
    data = json.loads(show(db_url, fid, "--json").stdout)
    assert data["held_at"] == held_at.isoformat()
    assert data["failure_detail"] == "check constraint follow_up_requests_status_check"


def test_an_unknown_id_exits_1(db_url: str) -> None:
    missing = str(uuid.uuid4())
    result = cli(db_url, "show", missing)
    assert result.exit_code == 1
    assert result.stderr == f"Error: no follow-up with id {missing}\n"


def test_a_malformed_id_exits_2(db_url: str) -> None:
    result = cli(db_url, "show", "not-a-uuid")
    assert result.exit_code == 2
    assert result.stderr == "Error: id must be a UUID like 3f2b8c1e-..., got 'not-a-uuid'\n"
