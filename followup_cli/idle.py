"""The idle minute, made cheap.

Cron starts `followups send-due` 1,440 times a day and most minutes nothing is due.
Importing the full stack (Typer, SQLAlchemy, the push layer) costs several tenths of a
second; this module answers "is anything claimable?" with the bare driver (sqlite3 or
psycopg) and, when the answer is no, records the run and exits. When something is
claimable it returns None and the normal path runs (and re-checks everything itself).

It is part of the repository layer: its two statements mirror Repository.claim_due's
filter and Repository.record_run, and must be kept in step with them (tests compare the
fast and the full path on the same rows).
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from followup_cli.clock import utcnow
from followup_cli.report import RunReport
from followup_cli.settings import POSTGRES_CONNECT_ARGS, SQLITE_BUSY_TIMEOUT_SECONDS, Settings

# The same filter as Repository.claim_due, minus the per-conversation ordering (which
# can only make fewer rows claimable, never more).
_CLAIMABLE = (
    "SELECT COUNT(*) FROM follow_up_requests "
    "WHERE status = 'scheduled' AND scheduled_for <= {p} "
    "AND (claim_expires_at IS NULL OR claim_expires_at <= {p}) AND held_at IS NULL "
    "AND (retry_at IS NULL OR retry_at <= {p})"
)
_RECORD_RUN = (
    "INSERT INTO follow_up_runs (id, host, pid, started_at, finished_at, push_backend, "
    "claimed, sent, failed, skipped, outcome) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, 0, 0, 0, 0, 'completed')"
)


def _sqlite_time(value: datetime) -> str:
    # The text form SQLAlchemy's SQLite DateTime writes: naive UTC, microseconds.
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _connect(url: str) -> tuple[Any, str, Any] | None:
    """(connection, placeholder, time adapter) for the bare driver, or None when this URL
    is not one the fast path handles (the normal path then takes over)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        path = url[len("sqlite:///") :].split("?", 1)[0]
        if not path or path == ":memory:" or not os.path.exists(path):
            return None
        return sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS), "?", _sqlite_time
    if url.startswith("postgresql+psycopg://"):
        import psycopg

        conninfo = "postgresql://" + url[len("postgresql+psycopg://") :]
        pg = psycopg.connect(conninfo, **POSTGRES_CONNECT_ARGS)
        return pg, "%s", lambda value: value
    return None


def try_idle_run(settings: Settings) -> RunReport | None:
    """A completed, recorded run report when nothing is claimable; else None."""
    started = utcnow()
    opened = _connect(settings.database_url)
    if opened is None:
        return None
    conn, p, at = opened
    try:
        cursor = conn.cursor()
        cursor.execute(_CLAIMABLE.format(p=p), (at(started),) * 3)
        (claimable,) = cursor.fetchone()
        if claimable:
            return None
        report = RunReport(run_id=str(uuid.uuid4()), push_backend=settings.push, started_at=started)
        report.finished_at = utcnow()
        cursor.execute(
            _RECORD_RUN.format(p=p),
            (
                report.run_id,
                socket.gethostname(),
                os.getpid(),
                at(report.started_at),
                at(report.finished_at),
                settings.push,
            ),
        )
        conn.commit()
        return report
    finally:
        conn.close()


def fast_send_due(argv: list[str]) -> int | None:
    """`followups [--quiet] send-due` with nothing claimable: the whole run, without
    importing Typer or SQLAlchemy. Returns the exit code, or None to take the normal
    path (any other arguments, something to deliver, a Pushgateway to push metrics to,
    or any error: the normal path then reports it in its usual form)."""
    if [a for a in argv if a not in ("--quiet", "-q")] != ["send-due"]:
        return None
    if argv[-1] != "send-due":  # global options must come before the command
        return None
    from followup_cli import settings as settings_mod

    try:
        settings = settings_mod.from_env()
        if settings.pushgateway_url:  # metrics go through prometheus-client, on the full path
            return None
        settings_mod.require_push_config(settings, load_key=False)
        report = try_idle_run(settings)
    except Exception:  # the normal path reports it properly
        return None
    if report is None:
        return None
    if settings.heartbeat_url:
        import logging

        from followup_cli import logsetup
        from followup_cli.alerts import ping_heartbeat

        logsetup.configure(logging.WARNING, settings.log_format)
        ping_heartbeat(settings.heartbeat_url)
    from followup_cli import render

    render.send_due_summary(report)
    sys.stdout.flush()
    return 0
