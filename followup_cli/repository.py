"""The only module that speaks SQL. One method per statement; never commits.

A Repository wraps one connection inside one transaction (see Database.transaction);
the caller decides where a unit of work begins and ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, or_, select, update

from followup_cli.tables import (
    CANCELLED,
    FAILED,
    SCHEDULED,
    SENT,
    follow_up_attempts,
    follow_up_messages,
    follow_up_requests,
    follow_up_runs,
    provider_review_requests,
)

r = follow_up_requests.c

# Serializes claims between concurrent runners (transaction-scoped, so it works through
# PgBouncer in transaction mode). Claims are one short statement, so the wait is short,
# and it makes the per-conversation ordering check see every committed claim.
CLAIM_LOCK_KEY = 0x466F6C6C6F7775  # "Followu"


@dataclass(frozen=True)
class DueFollowUp:
    id: str
    conversation_id: str | None
    user_id: str | None
    scheduled_for: datetime
    urgency: str | None
    display_text: str | None
    device_token: str | None
    provider_name: str | None
    in_app_only: bool


@dataclass(frozen=True)
class Message:
    follow_up_id: str
    conversation_id: str | None
    user_id: str | None
    content: str
    timestamp: datetime


@dataclass(frozen=True)
class Failure:
    follow_up_id: str
    reason: str


@dataclass(frozen=True)
class FailedFollowUp:
    id: str
    reason: str | None
    failed_at: datetime | None
    # The app stored a different token since the failure.
    token_changed: bool


@dataclass(frozen=True)
class AttemptRecord:
    follow_up_id: str
    attempted_at: datetime
    attempt: int
    outcome: str
    reason: str | None = None
    status_code: int | None = None
    apns_id: str | None = None
    is_test: bool = False


@dataclass(frozen=True)
class RunRecord:
    id: str
    host: str
    pid: int
    started_at: datetime
    finished_at: datetime
    push_backend: str
    claimed: int
    sent: int
    failed: int
    skipped: int
    outcome: str


_DUE_COLUMNS = (
    r.id,
    r.conversation_id,
    r.user_id,
    r.scheduled_for,
    r.urgency,
    r.display_text,
    r.device_token,
    r.provider_name,
    r.in_app_only,
)


def _due(row: Any) -> DueFollowUp:
    return DueFollowUp(
        id=row.id,
        conversation_id=row.conversation_id,
        user_id=row.user_id,
        scheduled_for=row.scheduled_for,
        urgency=row.urgency,
        display_text=row.display_text,
        device_token=row.device_token,
        provider_name=row.provider_name,
        in_app_only=bool(row.in_app_only),
    )


class Repository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    # -- send-due -------------------------------------------------------------------

    def claim_due(
        self, run_id: str, due_before: datetime, now: datetime, lease_until: datetime, limit: int
    ) -> list[DueFollowUp]:
        """Lease up to `limit` follow-ups due at `due_before` to this run, oldest first.

        Skips rows leased by a live run, rows locked by another transaction (SKIP
        LOCKED), and rows whose conversation has an earlier follow-up still leased
        elsewhere, so one conversation's follow-ups go out in order even across runners.
        """
        if self.dialect == "postgresql":
            self.conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
        earlier = follow_up_requests.alias("earlier")
        e = earlier.c
        candidates = (
            select(r.id)
            .where(
                r.status == SCHEDULED,
                r.scheduled_for <= due_before,
                or_(r.claim_expires_at.is_(None), r.claim_expires_at <= now),
                ~exists().where(
                    e.conversation_id == r.conversation_id,
                    e.status == SCHEDULED,
                    e.claim_expires_at > now,
                    or_(
                        e.scheduled_for < r.scheduled_for,
                        and_(e.scheduled_for == r.scheduled_for, e.id < r.id),
                    ),
                ),
            )
            .order_by(r.scheduled_for, r.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=follow_up_requests)
        )
        stmt = (
            update(follow_up_requests)
            .where(r.id.in_(candidates.scalar_subquery()))
            .values(claimed_by=run_id, claim_expires_at=lease_until)
            .returning(*_DUE_COLUMNS)
        )
        rows = [_due(row) for row in self.conn.execute(stmt)]
        rows.sort(key=lambda f: (f.scheduled_for, f.id))
        return rows

    def still_claimed(self, run_id: str, ids: Sequence[str]) -> set[str]:
        """Which of these are still scheduled and leased to this run (not cancelled since)."""
        if not ids:
            return set()
        stmt = select(r.id).where(
            r.id.in_(list(ids)), r.status == SCHEDULED, r.claimed_by == run_id
        )
        return set(self.conn.scalars(stmt))

    def renew_claims(self, run_id: str, lease_until: datetime) -> int:
        """Extend the lease of everything this run still holds."""
        stmt = (
            update(follow_up_requests)
            .where(r.claimed_by == run_id, r.status == SCHEDULED)
            .values(claim_expires_at=lease_until)
        )
        return self.conn.execute(stmt).rowcount

    def mark_sent(self, run_id: str, ids: Sequence[str], sent_at: datetime) -> set[str]:
        """scheduled -> sent for rows this run still holds; returns the ids changed.

        The status guard means a follow-up cancelled meanwhile stays cancelled, and one
        whose lease passed to another run is left to that run.
        """
        if not ids:
            return set()
        stmt = (
            update(follow_up_requests)
            .where(r.id.in_(list(ids)), r.status == SCHEDULED, r.claimed_by == run_id)
            .values(
                status=SENT,
                sent_at=sent_at,
                claimed_by=None,
                claim_expires_at=None,
                failure_reason=None,
            )
            .returning(r.id)
        )
        return set(self.conn.scalars(stmt))

    def insert_messages(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        self.conn.execute(
            insert(follow_up_messages),
            [
                {
                    "id": str(uuid.uuid4()),
                    "conversation_id": m.conversation_id,
                    "user_id": m.user_id,
                    "message_content": m.content,
                    "is_from_user": False,
                    "follow_up_id": m.follow_up_id,
                    "timestamp": m.timestamp,
                }
                for m in messages
            ],
        )

    def mark_failed(
        self, run_id: str, failures: Sequence[Failure], failed_at: datetime
    ) -> set[str]:
        """scheduled -> failed, with its reason, for rows this run still holds.

        One statement per distinct reason (there are few). The token the failure
        happened with is kept, so a requeue can tell whether the app has a new one.
        """
        changed: set[str] = set()
        by_reason: dict[str, list[str]] = {}
        for f in failures:
            by_reason.setdefault(f.reason, []).append(f.follow_up_id)
        for reason, ids in by_reason.items():
            stmt = (
                update(follow_up_requests)
                .where(r.id.in_(ids), r.status == SCHEDULED, r.claimed_by == run_id)
                .values(
                    status=FAILED,
                    failure_reason=reason,
                    failed_device_token=r.device_token,
                    failed_at=failed_at,
                    claimed_by=None,
                    claim_expires_at=None,
                )
                .returning(r.id)
            )
            changed.update(self.conn.scalars(stmt))
        return changed

    def release(self, run_id: str, ids: Sequence[str]) -> None:
        """Give leased rows back untouched, for the next run."""
        if not ids:
            return
        self.conn.execute(
            update(follow_up_requests)
            .where(r.id.in_(list(ids)), r.claimed_by == run_id)
            .values(claimed_by=None, claim_expires_at=None)
        )

    def record_attempts(self, run_id: str | None, attempts: Sequence[AttemptRecord]) -> None:
        if not attempts:
            return
        self.conn.execute(
            insert(follow_up_attempts),
            [
                {
                    "follow_up_id": a.follow_up_id,
                    "run_id": run_id,
                    "attempted_at": a.attempted_at,
                    "attempt": a.attempt,
                    "outcome": a.outcome,
                    "reason": a.reason,
                    "status_code": a.status_code,
                    "apns_id": a.apns_id,
                    "is_test": a.is_test,
                }
                for a in attempts
            ],
        )

    def record_run(self, run: RunRecord) -> None:
        self.conn.execute(
            insert(follow_up_runs).values(
                id=run.id,
                host=run.host,
                pid=run.pid,
                started_at=run.started_at,
                finished_at=run.finished_at,
                push_backend=run.push_backend,
                claimed=run.claimed,
                sent=run.sent,
                failed=run.failed,
                skipped=run.skipped,
                outcome=run.outcome,
            )
        )

    # -- retry-failed ---------------------------------------------------------------------

    def find_failed(
        self,
        ids: Sequence[str] = (),
        failed_since: datetime | None = None,
        reason: str | None = None,
    ) -> list[FailedFollowUp]:
        """Failed follow-ups matching every given filter, oldest failure first."""
        stmt = select(r.id, r.failure_reason, r.failed_at, r.device_token, r.failed_device_token)
        stmt = stmt.where(r.status == FAILED)
        if ids:
            stmt = stmt.where(r.id.in_(list(ids)))
        if failed_since is not None:
            stmt = stmt.where(r.failed_at >= failed_since)
        if reason is not None:
            stmt = stmt.where(r.failure_reason == reason)
        stmt = stmt.order_by(r.failed_at, r.id)
        return [
            FailedFollowUp(
                id=row.id,
                reason=row.failure_reason,
                failed_at=row.failed_at,
                token_changed=(row.device_token or None) != (row.failed_device_token or None),
            )
            for row in self.conn.execute(stmt)
        ]

    def requeue(self, ids: Sequence[str], in_app_only: bool) -> int:
        """failed -> scheduled, so the next send-due delivers them."""
        if not ids:
            return 0
        values: dict[str, Any] = {
            "status": SCHEDULED,
            "failure_reason": None,
            "failed_at": None,
            "claimed_by": None,
            "claim_expires_at": None,
        }
        if in_app_only:
            values["in_app_only"] = True
        stmt = (
            update(follow_up_requests)
            .where(r.id.in_(list(ids)), r.status == FAILED)
            .values(**values)
        )
        return self.conn.execute(stmt).rowcount

    # -- schedule / cancel (what the app does) --------------------------------------

    def insert_follow_up(self, values: dict[str, Any]) -> None:
        self.conn.execute(insert(follow_up_requests).values(**values))

    def set_review_flag(self, conversation_id: str, scheduled: bool) -> None:
        """provider_review_requests.schedule_followup for a conversation; creates the
        review row when the conversation has none (local and QA databases)."""
        p = provider_review_requests.c
        changed = self.conn.execute(
            update(provider_review_requests)
            .where(p.conversation_id == conversation_id)
            .values(schedule_followup=scheduled)
        ).rowcount
        if not changed and scheduled:
            self.conn.execute(
                insert(provider_review_requests).values(
                    id=str(uuid.uuid4()), conversation_id=conversation_id, schedule_followup=True
                )
            )

    def cancel_follow_up(self, follow_up_id: str) -> tuple[str, str | None] | None:
        """scheduled -> cancelled. Returns (status after, conversation_id), or None if unknown."""
        row = self.conn.execute(
            update(follow_up_requests)
            .where(r.id == follow_up_id, r.status == SCHEDULED)
            .values(status=CANCELLED, claimed_by=None, claim_expires_at=None)
            .returning(r.status, r.conversation_id)
        ).first()
        if row is not None:
            return row.status, row.conversation_id
        current = self.conn.execute(
            select(r.status, r.conversation_id).where(r.id == follow_up_id)
        ).first()
        return None if current is None else (current.status, current.conversation_id)

    def get_follow_up(self, follow_up_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(follow_up_requests).where(r.id == follow_up_id)).first()
        return None if row is None else dict(row._mapping)
