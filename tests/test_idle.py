"""The idle minute: `followups send-due` with nothing claimable answers from the bare
driver, records its run, and never imports Typer or SQLAlchemy; otherwise the full path."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import func, select, update

from followup_cli.alerts import LogAlerter
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery import send_due
from followup_cli.push.log import LogPusher
from followup_cli.settings import Settings
from followup_cli.tables import follow_up_requests, follow_up_runs
from tests.helpers import app_row, row

PROBE = (
    "import sys; from followup_cli.idle import fast_send_due; "
    "code = fast_send_due(sys.argv[1:]); "
    "print('RESULT', code, 'sqlalchemy' in sys.modules, 'typer' in sys.modules)"
)


def probe(db_url: str, *args: str) -> tuple[str, str]:
    env = {**os.environ, "FOLLOWUPS_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout, done.stderr


def runs(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(follow_up_runs)) or 0)


def test_nothing_due_is_answered_without_the_heavy_imports(db_url: str, db: Database) -> None:
    """Future and cancelled rows only: exit 0, a run recorded, no SQLAlchemy, no Typer."""
    app_row(db, scheduled_for=utcnow() + timedelta(hours=1))
    app_row(db, status="cancelled")
    out, _ = probe(db_url, "send-due")
    assert "send-due: claimed 0, sent 0" in out
    assert "RESULT 0 False False" in out
    assert runs(db) == 1


def test_something_due_takes_the_full_path(db_url: str, db: Database) -> None:
    """A claimable row: the fast path steps aside and changes nothing."""
    fid = app_row(db)
    out, _ = probe(db_url, "send-due")
    assert "RESULT None" in out
    assert row(db, fid).status == "scheduled"
    assert runs(db) == 0


def test_due_but_leased_elsewhere_is_idle(db_url: str, db: Database) -> None:
    """A due row another live run holds is not claimable: idle."""
    fid = app_row(db)
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.id == fid)
            .values(claimed_by="other", claim_expires_at=utcnow() + timedelta(minutes=1))
        )
    out, _ = probe(db_url, "send-due")
    assert "RESULT 0" in out


def test_held_row_is_idle_on_both_paths(db_url: str, db: Database, settings: Settings) -> None:
    """A due row held after the database refused it: neither path claims it."""
    fid = app_row(db)
    with db.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(follow_up_requests.c.id == fid)
            .values(held_at=utcnow(), failure_reason="database_rejected")
        )
    out, _ = probe(db_url, "send-due")
    assert "RESULT 0" in out
    report = send_due(db, LogPusher(), settings, LogAlerter())
    assert report.claimed == 0
    assert (row(db, fid).status, row(db, fid).claimed_by) == ("scheduled", None)


def test_other_arguments_take_the_full_path(db_url: str) -> None:
    """Only a bare `send-due` (optionally --quiet) is handled here."""
    for args in (["send-due", "--limit", "5"], ["stats"], ["--log-format", "json", "send-due"]):
        out, _ = probe(db_url, *args)
        assert "RESULT None" in out, args


def test_whole_command_delivers_when_due_and_idles_otherwise(db_url: str, db: Database) -> None:
    """Through the real entry point: first run delivers, second is idle; both recorded."""
    app_row(db)
    env = {**os.environ, "FOLLOWUPS_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "followup_cli", "send-due"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    second = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0 and "claimed 1, sent 1" in first.stdout
    assert second.returncode == 0 and "claimed 0, sent 0" in second.stdout
    assert runs(db) == 2
