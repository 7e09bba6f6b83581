"""The statements of retry-failed: find failed and held follow-ups, requeue them, and
tell which already had a push accepted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from followup_cli.repository.base import _NOT_RETRYING, RepositoryBase, _aware
from followup_cli.repository.rows import FailedFollowUp
from followup_cli.tables import follow_up_attempts, follow_up_requests
from followup_cli.vocabulary import Outcome, Status

requests = follow_up_requests.c


class RequeueStatements(RepositoryBase):
    """retry-failed."""

    def find_failed(
        self,
        ids: Sequence[str] = (),
        failed_since: datetime | None = None,
        reason: str | None = None,
    ) -> list[FailedFollowUp]:
        """Failed follow-ups, and held ones, matching every given filter, oldest first."""
        held = and_(requests.status == Status.SCHEDULED, requests.held_at.is_not(None))
        when = func.coalesce(requests.failed_at, requests.held_at)
        stmt = select(
            requests.id,
            requests.status,
            requests.failure_reason,
            requests.failure_detail,
            when.label("failed_at"),
            requests.device_token,
            requests.failed_device_token,
        )
        stmt = stmt.where(or_(requests.status == Status.FAILED, held))
        if ids:
            stmt = stmt.where(requests.id.in_(list(ids)))
        if failed_since is not None:
            stmt = stmt.where(when >= failed_since)
        if reason is not None:
            # APNs writes Unregistered, FCM UNREGISTERED: one --reason finds both.
            stmt = stmt.where(func.lower(requests.failure_reason) == reason.lower())
        stmt = stmt.order_by(when, requests.id)
        return [
            FailedFollowUp(
                id=row.id,
                reason=row.failure_reason,
                failed_at=_aware(row.failed_at),
                token_changed=(row.device_token or None) != (row.failed_device_token or None),
                held=row.status == Status.SCHEDULED,
                detail=row.failure_detail,
            )
            for row in self.conn.execute(stmt)
        ]

    def failure_reasons(self) -> dict[str, int]:
        """How many failed or held follow-ups there are for each reason on record."""
        held = and_(requests.status == Status.SCHEDULED, requests.held_at.is_not(None))
        stmt = (
            select(requests.failure_reason, func.count())
            .where(or_(requests.status == Status.FAILED, held))
            .group_by(requests.failure_reason)
        )
        return {str(reason or "-"): int(n) for reason, n in self.conn.execute(stmt)}

    def requeue(self, ids: Sequence[str], in_app_only: bool) -> int:
        """failed -> scheduled, and held rows released, so the next send-due delivers them."""
        if not ids:
            return 0
        values: dict[str, Any] = {
            "status": Status.SCHEDULED,
            "failure_reason": None,
            "failure_detail": None,
            "failed_at": None,
            "held_at": None,
            "claimed_by": None,
            "claim_expires_at": None,
            **_NOT_RETRYING,
        }
        if in_app_only:
            values["in_app_only"] = True
        held = and_(requests.status == Status.SCHEDULED, requests.held_at.is_not(None))
        stmt = (
            update(follow_up_requests)
            .where(requests.id.in_(list(ids)), or_(requests.status == Status.FAILED, held))
            .values(**values)
        )
        return self.conn.execute(stmt).rowcount

    def pushed_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these follow-ups APNs has already accepted a push for (tests apart)."""
        if not ids:
            return set()
        attempts = follow_up_attempts.c
        stmt = select(attempts.follow_up_id).where(
            attempts.follow_up_id.in_(list(ids)),
            attempts.outcome == Outcome.SENT,
            attempts.is_test.is_(False),
        )
        return set(self.conn.scalars(stmt.distinct()))
