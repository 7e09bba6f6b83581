"""stats, stats --check, the success-rate alert's condition, the heartbeat, and when to
publish metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from followup_cli.alerting import Finding, Fingerprint
from followup_cli.alerts import ping_heartbeat
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.report import RunReport
from followup_cli.repository import AlertState, LastRun, Repository
from followup_cli.settings import Settings, default

log = logging.getLogger("followups.monitoring")


@dataclass(frozen=True)
class CheckRules:
    """stats --check's rules. The defaults are the FOLLOWUPS_CHECK_* settings' own."""

    min_success_rate: float = default("check_min_success_rate")  # percent
    min_attempts: int = default("check_min_attempts")  # below this many sent+failed, not judged
    max_run_age: timedelta = default("check_max_run_age")
    max_overdue: timedelta = default("check_max_overdue")

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckRules:
        return cls(
            min_success_rate=settings.check_min_success_rate,
            min_attempts=settings.check_min_attempts,
            max_run_age=settings.check_max_run_age,
            max_overdue=settings.check_max_overdue,
        )


@dataclass
class Stats:
    window: timedelta
    generated_at: datetime
    sent: int
    failed: int
    cancelled: int
    pushed: int
    failures_by_reason: dict[str, int]
    lag: tuple[float, float, float] | None
    overdue: int
    oldest_overdue_since: datetime | None
    last_run: LastRun | None
    sent_per_hour: list[tuple[str, int]] = field(default_factory=list)
    # Held: the database refused even to mark them failed; no run claims them.
    held: int = 0
    oldest_held_since: datetime | None = None
    # Waiting to be tried again after transient failures (counted in `overdue` too).
    retrying: int = 0
    oldest_retrying_since: datetime | None = None
    # Follow-ups with a device token that went in-app only, by why there was no push
    # (invalid_device_token, fcm_not_configured, apns_not_configured).
    no_push_by_reason: dict[str, int] = field(default_factory=dict)
    # App tables whose row level security hides follow-ups from, or refuses the writes
    # of, the role these figures were read as (PostgreSQL): "table (missing commands)".
    hidden: tuple[str, ...] = ()
    # The admin alerts firing now (alerting.py), oldest first.
    alerts_firing: list[AlertState] = field(default_factory=list)

    @property
    def in_app_only(self) -> int:
        return max(0, self.sent - self.pushed)

    @property
    def success_rate(self) -> float | None:
        """Percent of attempted deliveries that were sent; None when nothing was attempted."""
        attempted = self.sent + self.failed
        return None if attempted == 0 else 100.0 * self.sent / attempted

    @property
    def oldest_overdue_seconds(self) -> float | None:
        if self.oldest_overdue_since is None:
            return None
        return max(0.0, (self.generated_at - self.oldest_overdue_since).total_seconds())

    @property
    def last_run_age_seconds(self) -> float | None:
        if self.last_run is None:
            return None
        return max(0.0, (self.generated_at - self.last_run.started_at).total_seconds())

    def cron_alive(self, rules: CheckRules) -> bool:
        age = self.last_run_age_seconds
        return age is not None and age <= rules.max_run_age.total_seconds()

    def as_json(self, rules: CheckRules) -> dict[str, Any]:
        p50, p95, worst = self.lag if self.lag else (None, None, None)
        run = self.last_run
        return {
            "generated_at": self.generated_at.isoformat(),
            "window_seconds": int(self.window.total_seconds()),
            "sent": self.sent,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "pushed": self.pushed,
            "in_app_only": self.in_app_only,
            "success_rate": None if self.success_rate is None else round(self.success_rate, 2),
            "failures_by_reason": self.failures_by_reason,
            "no_push_by_reason": self.no_push_by_reason,
            "lag_seconds": {"p50": p50, "p95": p95, "max": worst},
            "overdue": self.overdue,
            "oldest_overdue_seconds": self.oldest_overdue_seconds,
            "held": self.held,
            "retrying": self.retrying,
            "hidden_by_row_security": list(self.hidden),
            "oldest_retrying_seconds": None
            if self.oldest_retrying_since is None
            else max(0.0, (self.generated_at - self.oldest_retrying_since).total_seconds()),
            "last_run_at": run.started_at.isoformat() if run else None,
            "last_run": None
            if run is None
            else {
                "started_at": run.started_at.isoformat(),
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "duration_seconds": (run.finished_at - run.started_at).total_seconds()
                if run.finished_at
                else None,
                "host": run.host,
                "claimed": run.claimed,
                "sent": run.sent,
                "failed": run.failed,
                "outcome": run.outcome,
            },
            "cron_alive": self.cron_alive(rules),
            "sent_per_hour": [{"hour": h, "sent": n} for h, n in self.sent_per_hour],
            "alerts_firing": [
                {
                    "fingerprint": a.fingerprint,
                    "since": a.changed_at.isoformat() if a.changed_at else None,
                    "last_posted_at": a.last_alert_at.isoformat() if a.last_alert_at else None,
                }
                for a in self.alerts_firing
            ],
        }


def gather(db: Database, window: timedelta, *, per_hour: bool = True) -> Stats:
    now = utcnow()
    since = now - window
    with db.transaction() as repo:
        overdue, oldest = repo.backlog(now)
        held, oldest_held = repo.held()
        retrying, oldest_retrying = repo.retrying()
        return Stats(
            window=window,
            generated_at=now,
            sent=repo.count_sent_since(since),
            failed=sum((failures := repo.failures_by_reason_since(since)).values()),
            cancelled=repo.count_cancelled_due_between(since, now),
            pushed=repo.count_pushed_since(since),
            failures_by_reason=failures,
            lag=repo.lag_seconds_since(since),
            overdue=overdue,
            oldest_overdue_since=oldest,
            last_run=repo.last_run(),
            sent_per_hour=repo.sent_per_hour_since(since) if per_hour else [],
            held=held,
            oldest_held_since=oldest_held,
            retrying=retrying,
            oldest_retrying_since=oldest_retrying,
            no_push_by_reason=repo.skipped_by_reason_since(since),
            hidden=_hidden(repo),
            alerts_firing=repo.firing_alerts(),
        )


def _hidden(repo: Repository) -> tuple[str, ...]:
    """What row level security keeps from the connected role, as send-due would run."""
    if repo.dialect != "postgresql":
        return ()
    from followup_cli.schemacheck import policy_gaps

    role = repo.role_facts(repo.current_role())
    if role is None:
        return ()
    return tuple(f"{gap.table} ({', '.join(gap.missing)})" for gap in policy_gaps(repo, role))


def check(stats: Stats, rules: CheckRules) -> list[str]:
    """The monitoring rules that fail, as one sentence each; empty means healthy."""
    problems = []
    rate = stats.success_rate
    attempted = stats.sent + stats.failed
    if rate is not None and attempted >= rules.min_attempts and rate < rules.min_success_rate:
        problems.append(
            f"success rate {rate:.1f}% is below {rules.min_success_rate:g}% "
            f"({stats.sent} sent, {stats.failed} failed)"
        )
    age = stats.last_run_age_seconds
    if age is None:
        problems.append("send-due has never run against this database (is cron installed?)")
    elif age > rules.max_run_age.total_seconds():
        problems.append(
            f"last send-due run started {_human(age)} ago "
            f"(more than {_human(rules.max_run_age.total_seconds())}): is cron running?"
        )
    oldest = stats.oldest_overdue_seconds
    if oldest is not None and oldest > rules.max_overdue.total_seconds():
        problems.append(
            f"{stats.overdue} follow-up(s) overdue, the oldest by {_human(oldest)} "
            f"(more than {_human(rules.max_overdue.total_seconds())})"
        )
    if stats.hidden:
        problems.append(
            f"row level security gives this role no policy on {', '.join(stats.hidden)}: "
            "send-due run as it sees nothing due there or cannot record a delivery, and "
            "these figures miss what it hides (`followups db check` gives the policy)"
        )
    if stats.held:
        problems.append(
            f"{stats.held} follow-up(s) held because the database refused to record them "
            "(see `followups stats`; once the cause is fixed: "
            "`followups retry-failed --reason database_rejected`)"
        )
    return problems


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


def overdue_now(db: Database) -> int:
    """How many follow-ups are due now and not yet sent."""
    with db.transaction() as repo:
        overdue, _ = repo.backlog(utcnow())
    return overdue


def backlog_size(db: Database, limit: int | None) -> int:
    """How many follow-ups a send-due run would deliver now: its progress bar's length."""
    overdue = overdue_now(db)
    return overdue if limit is None else min(overdue, limit)


def success_rate_finding(
    db: Database, rules: CheckRules, window: timedelta = timedelta(hours=1)
) -> Finding | None:
    """The success-rate alert's condition after a run: the last hour's rate below the
    minimum (present) or not (gone); None when too few follow-ups were attempted to say."""
    since = utcnow() - window
    with db.transaction() as repo:
        sent = repo.count_sent_since(since)
        failed = sum(repo.failures_by_reason_since(since).values())
    attempted = sent + failed
    if attempted < rules.min_attempts:
        return None
    rate = 100.0 * sent / attempted
    counts = f"({sent} sent, {failed} failed)"
    if rate < rules.min_success_rate:
        return Finding(
            Fingerprint.SUCCESS_RATE,
            True,
            f"success rate over the last hour is {rate:.1f}% {counts}, below "
            f"{rules.min_success_rate:g}%. Run `followups stats --since 1h` for the reasons.",
        )
    return Finding(
        Fingerprint.SUCCESS_RATE,
        False,
        f"success rate over the last hour is {rate:.1f}% {counts}.",
    )


def after_send_due(
    db: Database,
    report: RunReport,
    settings: Settings,
    metrics_file: Path | None = None,
) -> None:
    """What follows a send-due run: the metrics (file and/or Pushgateway), and the
    heartbeat on success."""
    if metrics_file is not None or settings.pushgateway_url:
        from followup_cli import metrics

        overdue = overdue_now(db)
        metrics.publish(
            metrics.RunMetrics(
                started_at=report.started_at,
                finished_at=report.finished_at or utcnow(),
                deliveries={
                    "pushed": report.pushed,
                    "in_app_only": report.in_app_only,
                    "failed": report.failed,
                    "skipped": report.skipped,
                },
                overdue=overdue,
                ok=report.exit_code == 0,
            ),
            metrics_file=metrics_file,
            pushgateway_url=settings.pushgateway_url,
        )
    if settings.heartbeat_url and report.exit_code == 0:
        ping_heartbeat(settings.heartbeat_url)
