"""The statements of stats and monitoring: sends, failures, lag, backlog, retrying and
held follow-ups, the last run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Float, cast, func, select

from followup_cli.repository.base import RepositoryBase, _aware
from followup_cli.repository.rows import LastRun
from followup_cli.tables import follow_up_attempts, follow_up_requests, follow_up_runs
from followup_cli.vocabulary import Outcome, Status

requests = follow_up_requests.c


class StatsStatements(RepositoryBase):
    """stats, stats --check and the metrics."""

    def count_sent_since(self, since: datetime) -> int:
        return int(
            self.conn.scalar(
                select(func.count()).where(
                    requests.status == Status.SENT, requests.sent_at >= since
                )
            )
            or 0
        )

    def failures_by_reason_since(self, since: datetime) -> dict[str, int]:
        stmt = (
            select(requests.failure_reason, func.count())
            .where(requests.status == Status.FAILED, requests.failed_at >= since)
            .group_by(requests.failure_reason)
        )
        return {reason or "unknown": int(n) for reason, n in self.conn.execute(stmt)}

    def count_cancelled_due_between(self, since: datetime, until: datetime) -> int:
        """Cancelled follow-ups that were due in the window (the app records no cancel time)."""
        return int(
            self.conn.scalar(
                select(func.count()).where(
                    requests.status == Status.CANCELLED,
                    requests.scheduled_for >= since,
                    requests.scheduled_for <= until,
                )
            )
            or 0
        )

    def count_pushed_since(self, since: datetime) -> int:
        """Sent follow-ups that went out as a push (not test pushes)."""
        attempts = follow_up_attempts.c
        stmt = select(func.count(func.distinct(attempts.follow_up_id))).where(
            attempts.outcome == Outcome.SENT,
            attempts.is_test.is_(False),
            attempts.attempted_at >= since,
        )
        return int(self.conn.scalar(stmt) or 0)

    def lag_seconds_since(self, since: datetime) -> tuple[float, float, float] | None:
        """p50, p95 and max of sent_at - scheduled_for for follow-ups sent in the window."""
        where = (requests.status == Status.SENT, requests.sent_at >= since)
        if self.dialect == "postgresql":
            lag = func.extract("epoch", requests.sent_at - requests.scheduled_for)
            found = self.conn.execute(
                select(
                    func.percentile_cont(0.5).within_group(lag),
                    func.percentile_cont(0.95).within_group(lag),
                    func.max(lag),
                ).where(*where)
            ).one()
            if found[2] is None:
                return None
            return float(found[0]), float(found[1]), float(found[2])
        # SQLite has no percentile function: read the lags, sorted, and pick.
        seconds = cast(
            (func.julianday(requests.sent_at) - func.julianday(requests.scheduled_for)) * 86400,
            Float,
        )
        values = [
            float(v) for v in self.conn.scalars(select(seconds).where(*where).order_by(seconds))
        ]
        if not values:
            return None
        return _percentile(values, 0.5), _percentile(values, 0.95), values[-1]

    def backlog(self, now: datetime) -> tuple[int, datetime | None]:
        """Scheduled follow-ups already due (held ones apart), and the oldest due time."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(requests.scheduled_for)).where(
                requests.status == Status.SCHEDULED,
                requests.scheduled_for <= now,
                requests.held_at.is_(None),
            )
        ).one()
        return int(count or 0), _aware(oldest)

    def retrying(self) -> tuple[int, datetime | None]:
        """Follow-ups waiting to be tried again after transient failures, and the
        earliest first failure among them."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(requests.retrying_since)).where(
                requests.status == Status.SCHEDULED,
                requests.retry_at.is_not(None),
                requests.held_at.is_(None),
            )
        ).one()
        return int(count or 0), _aware(oldest)

    def held(self) -> tuple[int, datetime | None]:
        """Follow-ups held because the database refused to record them, and the oldest
        hold."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(requests.held_at)).where(
                requests.held_at.is_not(None), requests.status == Status.SCHEDULED
            )
        ).one()
        return int(count or 0), _aware(oldest)

    def last_run(self) -> LastRun | None:
        runs = follow_up_runs.c
        found = self.conn.execute(
            select(follow_up_runs).order_by(runs.started_at.desc()).limit(1)
        ).first()
        if found is None:
            return None
        return LastRun(
            id=found.id,
            host=found.host,
            started_at=found.started_at,
            finished_at=found.finished_at,
            claimed=found.claimed,
            sent=found.sent,
            failed=found.failed,
            outcome=found.outcome,
        )

    def sent_per_hour_since(self, since: datetime) -> list[tuple[str, int]]:
        """(hour as 'YYYY-MM-DD HH:00' UTC, sends) for hours that had any."""
        if self.dialect == "postgresql":
            hour = func.to_char(
                func.date_trunc("hour", func.timezone("UTC", requests.sent_at)),
                "YYYY-MM-DD HH24:00",
            )
        else:
            hour = func.strftime("%Y-%m-%d %H:00", requests.sent_at)
        stmt = (
            select(hour.label("hour"), func.count())
            .where(requests.status == Status.SENT, requests.sent_at >= since)
            .group_by("hour")
            .order_by("hour")
        )
        return [(str(h), int(n)) for h, n in self.conn.execute(stmt)]

    def skipped_by_reason_since(self, since: datetime) -> dict[str, int]:
        """Follow-ups delivered in-app only although they had a device token, by why there
        was no push (invalid_device_token, fcm_not_configured, ...)."""
        attempts = follow_up_attempts.c
        stmt = (
            select(attempts.reason, func.count(func.distinct(attempts.follow_up_id)))
            .where(
                attempts.outcome == Outcome.SKIPPED,
                attempts.is_test.is_(False),
                attempts.attempted_at >= since,
            )
            .group_by(attempts.reason)
        )
        return {reason or "unknown": int(n) for reason, n in self.conn.execute(stmt)}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation, as PostgreSQL's percentile_cont."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
