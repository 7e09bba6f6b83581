"""The statements of send-due: claim due follow-ups (in each conversation's order), renew
the lease, finish them (sent, failed, deferred, held, released), record attempts and
runs; and test-send's lease of one follow-up."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, literal, or_, select, update

from followup_cli.repository.base import _NOT_RETRYING, RepositoryBase, _aware, _one_of
from followup_cli.repository.rows import AttemptRecord, DueFollowUp, Failure, Message, RunRecord
from followup_cli.tables import (
    follow_up_attempts,
    follow_up_messages,
    follow_up_requests,
    follow_up_runs,
)
from followup_cli.vocabulary import Status

requests = follow_up_requests.c


# Serializes claims between concurrent runners (transaction-scoped, so it works through
# PgBouncer in transaction mode). Claims are one short statement, so the wait is short,
# and it makes the per-conversation ordering check see every committed claim.
CLAIM_LOCK_KEY = 0x466F6C6C6F7775  # "Followu"


_DUE_COLUMNS = (
    requests.id,
    requests.conversation_id,
    requests.user_id,
    requests.scheduled_for,
    requests.urgency,
    requests.display_text,
    requests.device_token,
    requests.provider_name,
    requests.in_app_only,
    requests.retrying_since,
    requests.retry_count,
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
        retrying_since=_aware(row.retrying_since),
        retry_count=int(row.retry_count or 0),
    )


class DeliveryStatements(RepositoryBase):
    """send-due; and test-send's look-up and lease of one follow-up."""

    def claim_due(
        self, run_id: str, due_before: datetime, now: datetime, lease_until: datetime, limit: int
    ) -> list[DueFollowUp]:
        """Lease up to `limit` follow-ups due at `due_before` to this run, oldest first.

        Skips rows leased by a live run, rows locked by another transaction (SKIP
        LOCKED), held rows, rows waiting to be retried (retry_at still ahead), and the
        rows of a conversation that must wait: one with a follow-up leased right now, or
        an earlier one held or waiting to be retried. This is where the order of a
        conversation is kept, across batches, runs and runners: nothing else lets a
        later follow-up overtake an earlier one that is still scheduled.
        """
        if self.dialect == "postgresql":
            self.conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
        leased = follow_up_requests.alias("leased").c
        # Conversations with a follow-up in flight (leased by any run, this one too):
        # they wait until it is finished, so their follow-ups go out one after another,
        # in order. NOT IN over this small set becomes one hashed lookup whatever the
        # planner estimates (a correlated NOT EXISTS was planned as a nested loop over
        # every leased row once several runners held thousands).
        in_flight = select(leased.conversation_id).where(
            leased.status == Status.SCHEDULED,
            leased.claimed_by.is_not(None),
            leased.claim_expires_at > now,
            leased.conversation_id.is_not(None),
        )
        # An earlier follow-up of the conversation that is still scheduled but cannot go
        # now (held, or its next try still ahead): the later ones wait behind it. Few
        # rows are ever in that state (ix_follow_up_requests_waiting).
        waiting = follow_up_requests.alias("waiting").c
        blocked_behind = (
            select(literal(1))
            .where(
                waiting.conversation_id == requests.conversation_id,
                waiting.status == Status.SCHEDULED,
                or_(waiting.held_at.is_not(None), waiting.retry_at > now),
                or_(
                    waiting.scheduled_for < requests.scheduled_for,
                    and_(waiting.scheduled_for == requests.scheduled_for, waiting.id < requests.id),
                ),
            )
            .exists()
        )
        candidates = (
            select(requests.id)
            .where(
                requests.status == Status.SCHEDULED,
                requests.scheduled_for <= due_before,
                or_(requests.claim_expires_at.is_(None), requests.claim_expires_at <= now),
                requests.held_at.is_(None),
                or_(requests.retry_at.is_(None), requests.retry_at <= now),
                or_(
                    requests.conversation_id.is_(None),
                    and_(requests.conversation_id.not_in(in_flight), ~blocked_behind),
                ),
            )
            .order_by(requests.scheduled_for, requests.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=follow_up_requests)
        )
        stmt = (
            update(follow_up_requests)
            .where(requests.id.in_(candidates.scalar_subquery()))
            .values(claimed_by=run_id, claim_expires_at=lease_until)
            .returning(*_DUE_COLUMNS)
        )
        rows = [_due(row) for row in self.conn.execute(stmt)]
        rows.sort(key=lambda f: (f.scheduled_for, f.id))
        return rows

    def _held_by_run(self, run_id: str, ids: Sequence[str]) -> Any:
        """Of these follow-ups, those still scheduled and leased to this run: what every
        statement of the run's finish (and the cancel gate) may touch. A follow-up the
        app cancelled, or whose lease passed to another run, is left alone."""
        return and_(
            _one_of(self.dialect, requests.id, ids),
            requests.status == Status.SCHEDULED,
            requests.claimed_by == run_id,
        )

    def still_claimed(self, run_id: str, ids: Sequence[str]) -> set[str]:
        """Which of these are still scheduled and leased to this run (not cancelled since)."""
        if not ids:
            return set()
        stmt = select(requests.id).where(self._held_by_run(run_id, ids))
        return set(self.conn.scalars(stmt))

    def renew_claims(self, run_id: str, lease_until: datetime) -> int:
        """Extend the lease of everything this run still holds."""
        stmt = (
            update(follow_up_requests)
            .where(requests.claimed_by == run_id, requests.status == Status.SCHEDULED)
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
            .where(self._held_by_run(run_id, ids))
            .values(
                status=Status.SENT,
                sent_at=sent_at,
                claimed_by=None,
                claim_expires_at=None,
                failure_reason=None,
                failure_detail=None,
                **_NOT_RETRYING,
            )
            .returning(requests.id)
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
        self,
        run_id: str,
        failures: Sequence[Failure],
        failed_at: datetime,
        detail: str | None = None,
        *,
        in_app_only: bool = False,
    ) -> set[str]:
        """scheduled -> failed, with its reason, for rows this run still holds.

        One statement per distinct reason (there are few). The token the failure
        happened with is kept, so a requeue can tell whether the app has a new one.
        `detail` is the database's one-line reason when it refused the delivery;
        `in_app_only` marks rows whose push was accepted, so a requeue does not push again.
        """
        changed: set[str] = set()
        by_reason: dict[str, list[str]] = {}
        for f in failures:
            by_reason.setdefault(f.reason, []).append(f.follow_up_id)
        extra: dict[str, Any] = {"in_app_only": True} if in_app_only else {}
        for reason, ids in by_reason.items():
            stmt = (
                update(follow_up_requests)
                .where(self._held_by_run(run_id, ids))
                .values(
                    status=Status.FAILED,
                    failure_reason=reason,
                    failure_detail=detail,
                    failed_device_token=requests.device_token,
                    failed_at=failed_at,
                    claimed_by=None,
                    claim_expires_at=None,
                    **_NOT_RETRYING,
                    **extra,
                )
                .returning(requests.id)
            )
            changed.update(self.conn.scalars(stmt))
        return changed

    def defer(self, run_id: str, retry_at: dict[datetime, list[str]], now: datetime) -> set[str]:
        """Rows this run still holds whose attempts all failed for transient reasons: they
        stay scheduled, no run claims them before their `retry_at` (nor the later
        follow-ups of their conversation), and each keeps the time of its first such
        failure. Returns the ids changed."""
        changed: set[str] = set()
        for at, ids in retry_at.items():
            stmt = (
                update(follow_up_requests)
                .where(self._held_by_run(run_id, ids))
                .values(
                    retry_at=at,
                    retrying_since=func.coalesce(requests.retrying_since, now),
                    retry_count=func.coalesce(requests.retry_count, 0) + 1,
                    claimed_by=None,
                    claim_expires_at=None,
                )
                .returning(requests.id)
            )
            changed.update(self.conn.scalars(stmt))
        return changed

    def hold(
        self,
        run_id: str,
        follow_up_id: str,
        reason: str,
        detail: str,
        held_at: datetime,
        *,
        in_app_only: bool = False,
    ) -> bool:
        """Keep a row this run holds out of every claim, touching only this tool's columns
        (its status stays as the app's constraints allow). True if it was held.
        `in_app_only` as for mark_failed."""
        extra: dict[str, Any] = {"in_app_only": True} if in_app_only else {}
        stmt = (
            update(follow_up_requests)
            .where(
                requests.id == follow_up_id,
                requests.status == Status.SCHEDULED,
                requests.claimed_by == run_id,
            )
            .values(
                held_at=held_at,
                failure_reason=reason,
                failure_detail=detail,
                claimed_by=None,
                claim_expires_at=None,
                **extra,
            )
        )
        return self.conn.execute(stmt).rowcount == 1

    def release(self, run_id: str, ids: Sequence[str]) -> None:
        """Give leased rows back untouched, for the next run."""
        if not ids:
            return
        self.conn.execute(
            update(follow_up_requests)
            .where(_one_of(self.dialect, requests.id, ids), requests.claimed_by == run_id)
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

    def with_attempts_of_run(self, run_id: str, ids: Sequence[str]) -> set[str]:
        """Which of these follow-ups already have attempts recorded by this run (a finish
        retried after a commit whose answer was lost must not record them twice)."""
        if not ids:
            return set()
        attempts = follow_up_attempts.c
        stmt = select(attempts.follow_up_id).where(
            attempts.run_id == run_id, _one_of(self.dialect, attempts.follow_up_id, ids)
        )
        return set(self.conn.scalars(stmt.distinct()))

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

    # -- test-send ----------------------------------------------------------------

    def claim_one(
        self, run_id: str, follow_up_id: str, now: datetime, lease_until: datetime
    ) -> DueFollowUp | None:
        """Lease one scheduled follow-up, whatever its time (test-send --mark-sent)."""
        stmt = (
            update(follow_up_requests)
            .where(
                requests.id == follow_up_id,
                requests.status == Status.SCHEDULED,
                or_(requests.claim_expires_at.is_(None), requests.claim_expires_at <= now),
                requests.held_at.is_(None),
            )
            .values(claimed_by=run_id, claim_expires_at=lease_until)
            .returning(*_DUE_COLUMNS)
        )
        found = self.conn.execute(stmt).first()
        return None if found is None else _due(found)

    def find_follow_up(self, follow_up_id: str) -> tuple[DueFollowUp, str] | None:
        """A follow-up and its status, whatever the status."""
        found = self.conn.execute(
            select(*_DUE_COLUMNS, requests.status).where(requests.id == follow_up_id)
        ).first()
        return None if found is None else (_due(found), found.status)
