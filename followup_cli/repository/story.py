"""The statements of `show`: one follow-up's row, its attempts, its in-app message's time
and the runs that handled it. Read only; the text columns are never selected."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select

from followup_cli.repository.base import RepositoryBase
from followup_cli.repository.rows import StoredAttempt, StoredFollowUp, StoredRun
from followup_cli.tables import (
    follow_up_attempts,
    follow_up_messages,
    follow_up_requests,
    follow_up_runs,
)

requests = follow_up_requests.c
attempts = follow_up_attempts.c
messages = follow_up_messages.c
runs = follow_up_runs.c


class StoryStatements(RepositoryBase):
    """show: one follow-up's whole story, for support."""

    def stored_follow_up(self, follow_up_id: str) -> StoredFollowUp | None:
        found = self.conn.execute(
            select(
                requests.id,
                requests.conversation_id,
                requests.status,
                requests.scheduled_for,
                requests.device_token,
                requests.in_app_only,
                requests.sent_at,
                requests.failed_at,
                requests.failure_reason,
                requests.failure_detail,
                requests.held_at,
                requests.retry_at,
                requests.retrying_since,
                requests.retry_count,
                requests.claimed_by,
                requests.claim_expires_at,
            ).where(requests.id == follow_up_id)
        ).first()
        if found is None:
            return None
        return StoredFollowUp(**{**found._asdict(), "in_app_only": bool(found.in_app_only)})

    def stored_attempts(self, follow_up_id: str) -> list[StoredAttempt]:
        """Every attempt, in the order they were made (test-send's included)."""
        rows = self.conn.execute(
            select(
                attempts.run_id,
                attempts.attempted_at,
                attempts.attempt,
                attempts.outcome,
                attempts.reason,
                attempts.status_code,
                attempts.apns_id,
                attempts.is_test,
            )
            .where(attempts.follow_up_id == follow_up_id)
            .order_by(attempts.attempted_at, attempts.id)
        ).all()
        return [StoredAttempt(**{**r._asdict(), "is_test": bool(r.is_test)}) for r in rows]

    def message_time(self, follow_up_id: str) -> datetime | None:
        """When the in-app message was written, or None when there is none."""
        return self.conn.scalar(
            select(messages.timestamp)
            .where(messages.follow_up_id == follow_up_id)
            .order_by(messages.timestamp)
            .limit(1)
        )

    def stored_runs(self, run_ids: Collection[str]) -> list[StoredRun]:
        """The recorded runs among `run_ids`, oldest first (a run still going, or one that
        died, has no row)."""
        if not run_ids:
            return []
        rows = self.conn.execute(
            select(runs.id, runs.host, runs.started_at, runs.outcome)
            .where(runs.id.in_(sorted(run_ids)))
            .order_by(runs.started_at, runs.id)
        ).all()
        return [StoredRun(**r._asdict()) for r in rows]
