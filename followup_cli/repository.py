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

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Float,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from followup_cli.tables import (
    ARCHIVED_COLUMNS,
    VERSION_TABLE,
    follow_up_attempts,
    follow_up_messages,
    follow_up_requests,
    follow_up_requests_archive,
    follow_up_runs,
    followups_alert_state,
    followups_push_credentials,
    provider_review_requests,
)
from followup_cli.vocabulary import Outcome, Status

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
    # Set while it waits to be tried again after transient failures (see `defer`).
    retrying_since: datetime | None = None
    retry_count: int = 0


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
    failed_at: datetime | None  # for a held row: when it was held
    # The app stored a different token since the failure.
    token_changed: bool
    # Still `scheduled`, but held: the database refused even to mark it failed.
    held: bool = False
    detail: str | None = None


@dataclass(frozen=True)
class ColumnFacts:
    name: str
    type: str  # as the database spells it, e.g. VARCHAR(20)
    not_null: bool
    has_default: bool  # a default, an identity or a generated column
    enum_labels: tuple[str, ...] | None  # the allowed labels of an enum type


@dataclass(frozen=True)
class CheckFacts:
    name: str | None
    expression: str


@dataclass(frozen=True)
class ForeignKeyFacts:
    name: str | None
    columns: tuple[str, ...]
    referred_table: str
    referred_columns: tuple[str, ...]


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


@dataclass(frozen=True)
class StoredCredential:
    token: str | None
    expires_at: datetime | None
    renewal_started_at: datetime | None


@dataclass(frozen=True)
class LastRun:
    id: str
    host: str | None
    started_at: datetime
    finished_at: datetime | None
    claimed: int
    sent: int
    failed: int
    outcome: str | None


@dataclass(frozen=True)
class TableAccess:
    """A table's row level security and who among some roles can reach it (PostgreSQL)."""

    name: str
    schema: str
    row_security: bool
    # Of the roles asked about (those that exist): who can SELECT, who holds any privilege.
    readers: tuple[str, ...]
    holders: tuple[str, ...]
    public_privileges: bool


@dataclass(frozen=True)
class RoleFacts:
    """A role as the runtime would connect (PostgreSQL)."""

    name: str
    superuser: bool
    bypass_rls: bool


@dataclass(frozen=True)
class EffectiveAccess:
    """What one role (or PUBLIC) can do to a table's rows with one command (PostgreSQL),
    judged from its privileges and the table's row level security."""

    table: str
    schema: str
    role: str  # a role's name, or PUBLIC
    command: str  # SELECT, INSERT, UPDATE or DELETE
    row_security: bool
    # The role holds the privilege (on the table or, for SELECT, INSERT and UPDATE, on
    # any of its columns), directly, through PUBLIC or through a role it belongs to.
    privileged: bool
    bypass_rls: bool
    # Permissive policies that apply to the role for the command with the expression
    # `true` (every row, any values), and restrictive ones that narrow it.
    open_policies: tuple[str, ...]
    narrowing_policies: tuple[str, ...]

    @property
    def every_row(self) -> bool:
        """Can reach every row (and, for INSERT and UPDATE, write any values)."""
        if not self.privileged:
            return False
        if not self.row_security or self.bypass_rls:
            return True
        return bool(self.open_policies) and not self.narrowing_policies


@dataclass(frozen=True)
class PastRowSecurity:
    """A role with BYPASSRLS that can SELECT some tables (pg_read_all_data gives SELECT
    on every table), so reads every row of them."""

    role: str
    bypass_rls: bool
    read_all_data: bool
    can_login: bool
    tables: tuple[str, ...]


@dataclass(frozen=True)
class TableOwner:
    name: str
    schema: str
    owner: str
    # The connected user is the owner or a member of the owning role (may ALTER it).
    current_user_may_alter: bool


@dataclass(frozen=True)
class RowSecurityFacts:
    """A table's row level security as one role meets it (PostgreSQL)."""

    name: str
    schema: str
    enabled: bool
    forced: bool
    # The role is the table's owner, or has its privileges (owners bypass unless forced).
    owner: bool
    # The commands ('*', 'r' SELECT, 'a' INSERT, 'w' UPDATE, 'd' DELETE) of the permissive
    # policies that apply to the role: TO PUBLIC, to it, or to a role whose privileges it has.
    policy_commands: tuple[str, ...]


@dataclass(frozen=True)
class TriggerFunction:
    table: str
    trigger: str
    function: str  # with its argument types, e.g. public.app_review_answered()
    security_definer: bool


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
    r.retrying_since,
    r.retry_count,
)


# A row that is no longer waiting to be tried again (sent, failed, requeued).
_NOT_RETRYING: dict[str, Any] = {"retry_at": None, "retrying_since": None, "retry_count": None}


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
        LOCKED), held rows, rows waiting to be retried (retry_at still ahead), and the
        rows of a conversation that must wait: one with a follow-up leased right now, or
        an earlier one held or waiting to be retried. This is where the order of a
        conversation is kept, across batches, runs and runners: nothing else lets a
        later follow-up overtake an earlier one that is still scheduled.
        """
        if self.dialect == "postgresql":
            self.conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
        leased = follow_up_requests.alias("leased")
        e = leased.c
        # Conversations with a follow-up in flight (leased by any run, this one too):
        # they wait until it is finished, so their follow-ups go out one after another,
        # in order. NOT IN over this small set becomes one hashed lookup whatever the
        # planner estimates (a correlated NOT EXISTS was planned as a nested loop over
        # every leased row once several runners held thousands).
        in_flight = select(e.conversation_id).where(
            e.status == Status.SCHEDULED,
            e.claimed_by.is_not(None),
            e.claim_expires_at > now,
            e.conversation_id.is_not(None),
        )
        # An earlier follow-up of the conversation that is still scheduled but cannot go
        # now (held, or its next try still ahead): the later ones wait behind it. Few
        # rows are ever in that state (ix_follow_up_requests_waiting).
        waiting = follow_up_requests.alias("waiting")
        w = waiting.c
        blocked_behind = (
            select(literal(1))
            .where(
                w.conversation_id == r.conversation_id,
                w.status == Status.SCHEDULED,
                or_(w.held_at.is_not(None), w.retry_at > now),
                or_(
                    w.scheduled_for < r.scheduled_for,
                    and_(w.scheduled_for == r.scheduled_for, w.id < r.id),
                ),
            )
            .exists()
        )
        candidates = (
            select(r.id)
            .where(
                r.status == Status.SCHEDULED,
                r.scheduled_for <= due_before,
                or_(r.claim_expires_at.is_(None), r.claim_expires_at <= now),
                r.held_at.is_(None),
                or_(r.retry_at.is_(None), r.retry_at <= now),
                or_(
                    r.conversation_id.is_(None),
                    and_(r.conversation_id.not_in(in_flight), ~blocked_behind),
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
            r.id.in_(list(ids)), r.status == Status.SCHEDULED, r.claimed_by == run_id
        )
        return set(self.conn.scalars(stmt))

    def renew_claims(self, run_id: str, lease_until: datetime) -> int:
        """Extend the lease of everything this run still holds."""
        stmt = (
            update(follow_up_requests)
            .where(r.claimed_by == run_id, r.status == Status.SCHEDULED)
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
            .where(r.id.in_(list(ids)), r.status == Status.SCHEDULED, r.claimed_by == run_id)
            .values(
                status=Status.SENT,
                sent_at=sent_at,
                claimed_by=None,
                claim_expires_at=None,
                failure_reason=None,
                failure_detail=None,
                **_NOT_RETRYING,
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
                .where(r.id.in_(ids), r.status == Status.SCHEDULED, r.claimed_by == run_id)
                .values(
                    status=Status.FAILED,
                    failure_reason=reason,
                    failure_detail=detail,
                    failed_device_token=r.device_token,
                    failed_at=failed_at,
                    claimed_by=None,
                    claim_expires_at=None,
                    **_NOT_RETRYING,
                    **extra,
                )
                .returning(r.id)
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
                .where(r.id.in_(ids), r.status == Status.SCHEDULED, r.claimed_by == run_id)
                .values(
                    retry_at=at,
                    retrying_since=func.coalesce(r.retrying_since, now),
                    retry_count=func.coalesce(r.retry_count, 0) + 1,
                    claimed_by=None,
                    claim_expires_at=None,
                )
                .returning(r.id)
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
            .where(r.id == follow_up_id, r.status == Status.SCHEDULED, r.claimed_by == run_id)
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

    def with_attempts_of_run(self, run_id: str, ids: Sequence[str]) -> set[str]:
        """Which of these follow-ups already have attempts recorded by this run (a finish
        retried after a commit whose answer was lost must not record them twice)."""
        if not ids:
            return set()
        a = follow_up_attempts.c
        stmt = select(a.follow_up_id).where(a.run_id == run_id, a.follow_up_id.in_(list(ids)))
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

    def claim_one(
        self, run_id: str, follow_up_id: str, now: datetime, lease_until: datetime
    ) -> DueFollowUp | None:
        """Lease one scheduled follow-up, whatever its time (test-send --mark-sent)."""
        stmt = (
            update(follow_up_requests)
            .where(
                r.id == follow_up_id,
                r.status == Status.SCHEDULED,
                or_(r.claim_expires_at.is_(None), r.claim_expires_at <= now),
                r.held_at.is_(None),
            )
            .values(claimed_by=run_id, claim_expires_at=lease_until)
            .returning(*_DUE_COLUMNS)
        )
        found = self.conn.execute(stmt).first()
        return None if found is None else _due(found)

    def find_follow_up(self, follow_up_id: str) -> tuple[DueFollowUp, str] | None:
        """A follow-up and its status, whatever the status."""
        found = self.conn.execute(
            select(*_DUE_COLUMNS, r.status).where(r.id == follow_up_id)
        ).first()
        return None if found is None else (_due(found), found.status)

    # -- stats and monitoring -------------------------------------------------------

    def count_sent_since(self, since: datetime) -> int:
        return int(
            self.conn.scalar(
                select(func.count()).where(r.status == Status.SENT, r.sent_at >= since)
            )
            or 0
        )

    def failures_by_reason_since(self, since: datetime) -> dict[str, int]:
        stmt = (
            select(r.failure_reason, func.count())
            .where(r.status == Status.FAILED, r.failed_at >= since)
            .group_by(r.failure_reason)
        )
        return {reason or "unknown": int(n) for reason, n in self.conn.execute(stmt)}

    def count_cancelled_due_between(self, since: datetime, until: datetime) -> int:
        """Cancelled follow-ups that were due in the window (the app records no cancel time)."""
        return int(
            self.conn.scalar(
                select(func.count()).where(
                    r.status == Status.CANCELLED, r.scheduled_for >= since, r.scheduled_for <= until
                )
            )
            or 0
        )

    def count_pushed_since(self, since: datetime) -> int:
        """Sent follow-ups that went out as a push (not test pushes)."""
        a = follow_up_attempts.c
        stmt = select(func.count(func.distinct(a.follow_up_id))).where(
            a.outcome == Outcome.SENT, a.is_test.is_(False), a.attempted_at >= since
        )
        return int(self.conn.scalar(stmt) or 0)

    def lag_seconds_since(self, since: datetime) -> tuple[float, float, float] | None:
        """p50, p95 and max of sent_at - scheduled_for for follow-ups sent in the window."""
        where = (r.status == Status.SENT, r.sent_at >= since)
        if self.dialect == "postgresql":
            lag = func.extract("epoch", r.sent_at - r.scheduled_for)
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
        seconds = cast((func.julianday(r.sent_at) - func.julianday(r.scheduled_for)) * 86400, Float)
        values = [
            float(v) for v in self.conn.scalars(select(seconds).where(*where).order_by(seconds))
        ]
        if not values:
            return None
        return _percentile(values, 0.5), _percentile(values, 0.95), values[-1]

    def backlog(self, now: datetime) -> tuple[int, datetime | None]:
        """Scheduled follow-ups already due (held ones apart), and the oldest due time."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(r.scheduled_for)).where(
                r.status == Status.SCHEDULED, r.scheduled_for <= now, r.held_at.is_(None)
            )
        ).one()
        return int(count or 0), _aware(oldest)

    def retrying(self) -> tuple[int, datetime | None]:
        """Follow-ups waiting to be tried again after transient failures, and the
        earliest first failure among them."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(r.retrying_since)).where(
                r.status == Status.SCHEDULED, r.retry_at.is_not(None), r.held_at.is_(None)
            )
        ).one()
        return int(count or 0), _aware(oldest)

    def held(self) -> tuple[int, datetime | None]:
        """Follow-ups held because the database refused to record them, and the oldest
        hold."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(r.held_at)).where(
                r.held_at.is_not(None), r.status == Status.SCHEDULED
            )
        ).one()
        return int(count or 0), _aware(oldest)

    def last_run(self) -> LastRun | None:
        u = follow_up_runs.c
        found = self.conn.execute(
            select(follow_up_runs).order_by(u.started_at.desc()).limit(1)
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
                func.date_trunc("hour", func.timezone("UTC", r.sent_at)), "YYYY-MM-DD HH24:00"
            )
        else:
            hour = func.strftime("%Y-%m-%d %H:00", r.sent_at)
        stmt = (
            select(hour.label("hour"), func.count())
            .where(r.status == Status.SENT, r.sent_at >= since)
            .group_by("hour")
            .order_by("hour")
        )
        return [(str(h), int(n)) for h, n in self.conn.execute(stmt)]

    def transition_alert(
        self, name: str, low: bool, now: datetime, cooldown_until: datetime
    ) -> bool:
        """Compare-and-set on an alert's state; True means this caller should alert.

        low=True alerts when the state was ok, or was low and its last alert is older than
        the cooldown; low=False alerts (recovery) only when the state was low. Concurrent
        runs race on one UPDATE, so only one of them alerts.
        """
        s = followups_alert_state.c
        if self.conn.execute(select(s.name).where(s.name == name)).first() is None:
            self.conn.execute(
                _insert_ignore(self.dialect, followups_alert_state).values(
                    name=name, state="ok", last_alert_at=None, changed_at=now
                )
            )
        if low:
            stmt = (
                update(followups_alert_state)
                .where(
                    s.name == name,
                    or_(
                        s.state != "low",
                        s.last_alert_at.is_(None),
                        s.last_alert_at <= cooldown_until,
                    ),
                )
                .values(state="low", last_alert_at=now, changed_at=now)
            )
        else:
            stmt = (
                update(followups_alert_state)
                .where(s.name == name, s.state == "low")
                .values(state="ok", changed_at=now)
            )
        return self.conn.execute(stmt).rowcount == 1

    def skipped_by_reason_since(self, since: datetime) -> dict[str, int]:
        """Follow-ups delivered in-app only although they had a device token, by why there
        was no push (invalid_device_token, fcm_not_configured, ...)."""
        a = follow_up_attempts.c
        stmt = (
            select(a.reason, func.count(func.distinct(a.follow_up_id)))
            .where(a.outcome == Outcome.SKIPPED, a.is_test.is_(False), a.attempted_at >= since)
            .group_by(a.reason)
        )
        return {reason or "unknown": int(n) for reason, n in self.conn.execute(stmt)}

    # -- push service credentials (FCM access tokens) -------------------------------

    def push_credential(self, name: str) -> StoredCredential | None:
        c = followups_push_credentials.c
        found = self.conn.execute(
            select(c.token, c.expires_at, c.renewal_started_at).where(c.name == name)
        ).first()
        if found is None:
            return None
        return StoredCredential(found.token, found.expires_at, found.renewal_started_at)

    def claim_credential_renewal(self, name: str, now: datetime, stale_before: datetime) -> bool:
        """Compare-and-set: True when this caller may fetch a new token, because no one
        else has started a renewal since `stale_before` (a renewer that died is taken
        over). Concurrent callers race on one statement, so one of them wins."""
        c = followups_push_credentials.c
        claimed = self.conn.execute(
            update(followups_push_credentials)
            .where(
                c.name == name,
                or_(c.renewal_started_at.is_(None), c.renewal_started_at < stale_before),
            )
            .values(renewal_started_at=now)
        ).rowcount
        if claimed:
            return True
        # RETURNING, not rowcount: psycopg does not report an INSERT ... ON CONFLICT's count.
        inserted = self.conn.execute(
            _insert_ignore(self.dialect, followups_push_credentials)
            .values(name=name, token=None, expires_at=None, updated_at=now, renewal_started_at=now)
            .returning(c.name)
        ).first()
        return inserted is not None

    def store_credential(self, name: str, token: str, expires_at: datetime, now: datetime) -> None:
        """The renewed token; the renewal is over."""
        c = followups_push_credentials.c
        self.conn.execute(
            update(followups_push_credentials)
            .where(c.name == name)
            .values(token=token, expires_at=expires_at, updated_at=now, renewal_started_at=None)
        )

    def abandon_credential_renewal(self, name: str) -> None:
        """The fetch failed: let the next caller try at once instead of waiting it out."""
        c = followups_push_credentials.c
        self.conn.execute(
            update(followups_push_credentials).where(c.name == name).values(renewal_started_at=None)
        )

    def expire_credential(self, name: str, token: str, now: datetime) -> None:
        """The service refused `token`: mark it expired, unless it was replaced already."""
        c = followups_push_credentials.c
        self.conn.execute(
            update(followups_push_credentials)
            .where(c.name == name, c.token == token)
            .values(expires_at=now)
        )

    # -- cleanup --------------------------------------------------------------------

    def count_purgeable(self, cutoff: datetime) -> tuple[int, int]:
        """(sent older than cutoff, cancelled created before cutoff)."""
        sent = self.conn.scalar(
            select(func.count()).where(r.status == Status.SENT, r.sent_at < cutoff)
        )
        cancelled = self.conn.scalar(
            select(func.count()).where(r.status == Status.CANCELLED, r.created_at < cutoff)
        )
        return int(sent or 0), int(cancelled or 0)

    def purgeable_batch(self, cutoff: datetime, status: str, limit: int) -> list[str]:
        """Ids of up to `limit` old sent (by sent_at) or cancelled (by created_at) rows,
        skipping rows another transaction holds."""
        column = r.sent_at if status == Status.SENT else r.created_at
        stmt = (
            select(r.id)
            .where(r.status == status, column < cutoff)
            .order_by(column)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.conn.scalars(stmt))

    def whole_row_json(self) -> ColumnElement[Any]:
        """The whole follow_up_requests row as one JSON object, for archive_requests: every
        column the database has, the app's own that tables.py does not define included.

        PostgreSQL converts the row itself (to_jsonb), whatever its columns. SQLite has no
        such function, so its columns are read here, once per cleanup, into a json_object.
        """
        if self.dialect == "postgresql":
            # table.* rather than the bare table name, which a column of that name would
            # shadow.
            return func.to_jsonb(literal_column(f"{follow_up_requests.name}.*"))
        names = [c["name"] for c in inspect(self.conn).get_columns(follow_up_requests.name)]
        return _sqlite_json_object(names)

    def archive_requests(
        self, ids: Sequence[str], archived_at: datetime, row_data: ColumnElement[Any]
    ) -> None:
        """Copy these follow-ups into the archive, in one statement: the operators' columns
        and `row_data` (whole_row_json) with every column."""
        columns = [follow_up_requests.c[name] for name in ARCHIVED_COLUMNS]
        self.conn.execute(
            insert(follow_up_requests_archive).from_select(
                [*ARCHIVED_COLUMNS, "archived_at", "row_data"],
                select(
                    *columns,
                    literal(archived_at, follow_up_requests_archive.c.archived_at.type),
                    row_data,
                ).where(r.id.in_(list(ids))),
            )
        )

    def delete_requests(self, ids: Sequence[str]) -> int:
        """Delete sent/cancelled follow-ups (never failed or scheduled) and their attempt
        records. follow_up_messages rows stay: they are the parents' history."""
        if not ids:
            return 0
        a = follow_up_attempts.c
        self.conn.execute(delete(follow_up_attempts).where(a.follow_up_id.in_(list(ids))))
        return self.conn.execute(
            delete(follow_up_requests).where(
                r.id.in_(list(ids)), r.status.in_([Status.SENT, Status.CANCELLED])
            )
        ).rowcount

    def delete_runs_before(self, cutoff: datetime) -> int:
        u = follow_up_runs.c
        return self.conn.execute(delete(follow_up_runs).where(u.started_at < cutoff)).rowcount

    # -- retry-failed ---------------------------------------------------------------------

    def find_failed(
        self,
        ids: Sequence[str] = (),
        failed_since: datetime | None = None,
        reason: str | None = None,
    ) -> list[FailedFollowUp]:
        """Failed follow-ups, and held ones, matching every given filter, oldest first."""
        held = and_(r.status == Status.SCHEDULED, r.held_at.is_not(None))
        when = func.coalesce(r.failed_at, r.held_at)
        stmt = select(
            r.id,
            r.status,
            r.failure_reason,
            r.failure_detail,
            when.label("failed_at"),
            r.device_token,
            r.failed_device_token,
        )
        stmt = stmt.where(or_(r.status == Status.FAILED, held))
        if ids:
            stmt = stmt.where(r.id.in_(list(ids)))
        if failed_since is not None:
            stmt = stmt.where(when >= failed_since)
        if reason is not None:
            stmt = stmt.where(r.failure_reason == reason)
        stmt = stmt.order_by(when, r.id)
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
        held = and_(r.status == Status.SCHEDULED, r.held_at.is_not(None))
        stmt = (
            update(follow_up_requests)
            .where(r.id.in_(list(ids)), or_(r.status == Status.FAILED, held))
            .values(**values)
        )
        return self.conn.execute(stmt).rowcount

    def pushed_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these follow-ups APNs has already accepted a push for (tests apart)."""
        if not ids:
            return set()
        a = follow_up_attempts.c
        stmt = select(a.follow_up_id).where(
            a.follow_up_id.in_(list(ids)), a.outcome == Outcome.SENT, a.is_test.is_(False)
        )
        return set(self.conn.scalars(stmt.distinct()))

    # -- db check: what the app's schema allows -------------------------------------

    def begin_read_only(self) -> None:
        """The first statement of a transaction that must not write anything."""
        if self.dialect == "postgresql":
            self.conn.execute(text("SET TRANSACTION READ ONLY"))
        else:
            self.conn.execute(text("PRAGMA query_only = ON"))

    def end_read_only(self) -> None:
        if self.dialect != "postgresql":  # a connection setting, not a transaction's
            self.conn.execute(text("PRAGMA query_only = OFF"))

    def table_names(self) -> set[str]:
        return set(inspect(self.conn).get_table_names())

    def columns(self, table: str) -> list[ColumnFacts]:
        facts = []
        for c in inspect(self.conn).get_columns(table):
            type_ = c["type"]
            labels = getattr(type_, "enums", None)
            facts.append(
                ColumnFacts(
                    name=c["name"],
                    type=str(type_.compile(dialect=self.conn.dialect)),
                    not_null=not c["nullable"],
                    has_default=c.get("default") is not None
                    or bool(c.get("identity"))
                    or bool(c.get("computed"))
                    or bool(c.get("primary_key") and self.dialect == "sqlite"),
                    enum_labels=tuple(labels) if labels else None,
                )
            )
        return facts

    def check_constraints(self, table: str) -> list[CheckFacts]:
        return [
            CheckFacts(name=c.get("name"), expression=c["sqltext"])
            for c in inspect(self.conn).get_check_constraints(table)
        ]

    def foreign_keys(self, table: str) -> list[ForeignKeyFacts]:
        return [
            ForeignKeyFacts(
                name=fk.get("name"),
                columns=tuple(fk["constrained_columns"]),
                referred_table=fk["referred_table"],
                referred_columns=tuple(fk["referred_columns"]),
            )
            for fk in inspect(self.conn).get_foreign_keys(table)
        ]

    def triggers(self, tables: Sequence[str]) -> list[tuple[str, str]]:
        """(table, trigger) for the app's own triggers on these tables, enabled or not
        (the database's internal ones, e.g. for foreign keys, apart)."""
        if self.dialect == "postgresql":
            found = self.conn.execute(
                text(
                    "SELECT c.relname, t.tgname FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables) "
                    "AND pg_table_is_visible(c.oid) ORDER BY 1, 2"
                ),
                {"tables": list(tables)},
            )
        else:
            found = self.conn.execute(
                text(
                    "SELECT tbl_name, name FROM sqlite_master "
                    "WHERE type = 'trigger' AND tbl_name IN :tables ORDER BY 1, 2"
                ).bindparams(bindparam("tables", expanding=True)),
                {"tables": list(tables)},
            )
        return [(str(t), str(n)) for t, n in found]

    def check_allows(
        self, table: str, expression: str, column_name: str, column_type: str, value: str
    ) -> bool | None:
        """Would this CHECK expression accept `value` in `column_name`? None when it
        cannot be told from that column alone (it reads other columns too).

        The expression comes from the database's own catalog and is evaluated over one
        made-up row, inside a savepoint of a read-only transaction.
        """
        probe = (
            f"SELECT ({expression}) FROM "
            f"(SELECT CAST(:value AS {column_type}) AS {column_name}) AS {table}"
        )
        try:
            with self.conn.begin_nested():
                result = self.conn.execute(text(probe), {"value": value}).scalar()
        except SQLAlchemyError:
            return None
        # A CHECK whose expression is NULL lets the row through.
        return result is None or bool(result)

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
            .where(r.id == follow_up_id, r.status == Status.SCHEDULED)
            .values(status=Status.CANCELLED, claimed_by=None, claim_expires_at=None)
            .returning(r.status, r.conversation_id)
        ).first()
        if row is not None:
            return row.status, row.conversation_id
        current = self.conn.execute(
            select(r.status, r.conversation_id).where(r.id == follow_up_id)
        ).first()
        return None if current is None else (current.status, current.conversation_id)

    # -- security (PostgreSQL catalogs) ---------------------------------------------

    def table_access(self, names: Sequence[str], roles: Sequence[str]) -> list[TableAccess]:
        """For each table of `names` that exists (as the tool's statements resolve it):
        its schema, row level security, and which of `roles` can read it or hold any
        privilege on it, directly, through PUBLIC or through a role they belong to."""
        found = self.conn.execute(
            text(_TABLE_ACCESS), {"names": list(names), "roles": list(roles)}
        ).all()
        return [
            TableAccess(
                name=row.name,
                schema=row.schema,
                row_security=bool(row.row_security),
                readers=tuple(row.readers),
                holders=tuple(row.holders),
                public_privileges=bool(row.public_privileges),
            )
            for row in found
        ]

    def owned_sequences(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(schema, name) of the sequences a table's serial or identity columns use."""
        found = self.conn.execute(text(_OWNED_SEQUENCES), {"schema": schema, "table": table})
        return [(row.schema, row.name) for row in found]

    def current_role(self) -> str:
        return str(self.conn.scalar(text("SELECT current_user")))

    def role_facts(self, role: str) -> RoleFacts | None:
        found = self.conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :role"),
            {"role": role},
        ).first()
        if found is None:
            return None
        return RoleFacts(role, bool(found.rolsuper), bool(found.rolbypassrls))

    def row_security(self, names: Sequence[str], role: str) -> list[RowSecurityFacts]:
        """For each table of `names` that exists: its row level security as `role` meets it."""
        found = self.conn.execute(text(_ROW_SECURITY), {"names": list(names), "role": role})
        return [
            RowSecurityFacts(
                name=row.name,
                schema=row.schema,
                enabled=bool(row.enabled),
                forced=bool(row.forced),
                owner=bool(row.owner),
                policy_commands=tuple(row.commands),
            )
            for row in found
        ]

    def trigger_functions(self, tables: Sequence[str]) -> list[TriggerFunction]:
        """The app's triggers on these tables with the function each runs and whether
        that function runs as its owner (SECURITY DEFINER) or as the invoker."""
        found = self.conn.execute(
            text(
                "SELECT c.relname, t.tgname, CAST(CAST(t.tgfoid AS regprocedure) AS text) AS fn, "
                "p.prosecdef FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables) "
                "AND pg_table_is_visible(c.oid) ORDER BY 1, 2"
            ),
            {"tables": list(tables)},
        )
        return [
            TriggerFunction(str(row.relname), str(row.tgname), str(row.fn), bool(row.prosecdef))
            for row in found
        ]

    def has_privilege(
        self, role: str, kind: str, schema: str, name: str, privilege: str, column: str = ""
    ) -> bool:
        """has_table_privilege and its kin: `kind` is table, column, sequence or schema."""
        role_, privilege_ = "CAST(:role AS text)", "CAST(:privilege AS text)"
        target = (
            "CAST(:schema AS text)"
            if kind == "schema"
            else "format('%I.%I', CAST(:schema AS text), CAST(:name AS text))"
        )
        arguments = {
            "table": f"has_table_privilege({role_}, {target}, {privilege_})",
            "column": f"has_column_privilege({role_}, {target}, CAST(:column AS text), "
            f"{privilege_})",
            "sequence": f"has_sequence_privilege({role_}, {target}, {privilege_})",
            "schema": f"has_schema_privilege({role_}, {target}, {privilege_})",
        }[kind]
        return bool(
            self.conn.scalar(
                text(f"SELECT {arguments}"),
                {
                    "role": role,
                    "schema": schema,
                    "name": name,
                    "privilege": privilege,
                    "column": column,
                },
            )
        )

    def effective_access(self, names: Sequence[str], roles: Sequence[str]) -> list[EffectiveAccess]:
        """For each table of `names` that exists, each of `roles` that exists (and PUBLIC)
        and each of SELECT, INSERT, UPDATE and DELETE: what the role can do."""
        found = self.conn.execute(
            text(_EFFECTIVE_ACCESS), {"names": list(names), "roles": list(roles)}
        ).all()
        return [
            EffectiveAccess(
                table=row.name,
                schema=row.schema,
                role=row.role,
                command=row.command,
                row_security=bool(row.row_security),
                privileged=bool(row.privileged),
                bypass_rls=bool(row.bypass_rls),
                open_policies=tuple(row.open_policies),
                narrowing_policies=tuple(row.narrowing_policies),
            )
            for row in found
        ]

    def past_row_security(self, names: Sequence[str]) -> list[PastRowSecurity]:
        """Roles with BYPASSRLS, other than superusers and the tables' owners (and their
        members), with the tables among these each can SELECT."""
        found = self.conn.execute(text(_PAST_ROW_SECURITY), {"names": list(names)}).all()
        return [
            PastRowSecurity(
                role=row.role,
                bypass_rls=bool(row.bypass_rls),
                read_all_data=bool(row.read_all_data),
                can_login=bool(row.can_login),
                tables=tuple(row.tables),
            )
            for row in found
        ]

    def table_owners(self, names: Sequence[str]) -> list[TableOwner]:
        """Each existing table's owner, and whether the connected user may alter it."""
        found = self.conn.execute(
            text(
                "SELECT t.name, n.nspname AS schema, "
                "pg_get_userbyid(c.relowner) AS owner, "
                "pg_has_role(current_user, c.relowner, 'USAGE') AS may_alter "
                "FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position) "
                "JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name)) "
                "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY t.position"
            ),
            {"names": list(names)},
        ).all()
        return [
            TableOwner(row.name, row.schema, str(row.owner), bool(row.may_alter)) for row in found
        ]

    def schema_revision(self) -> str | None:
        """This tool's schema revision, None before the first `db upgrade`."""
        if VERSION_TABLE not in self.table_names():
            return None
        found = self.conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
        return None if found is None else str(found[0])

    def members_among(self, role: str, candidates: Sequence[str]) -> list[str]:
        """Those of `candidates` (existing roles) that have `role`'s privileges through
        membership, and so would get whatever is granted to it."""
        found = self.conn.execute(
            text(
                "SELECT m.rolname FROM pg_roles m JOIN pg_roles r ON r.rolname = :role "
                "WHERE m.rolname = ANY(CAST(:candidates AS text[])) AND m.oid <> r.oid "
                "AND pg_has_role(m.oid, r.oid, 'MEMBER') ORDER BY m.rolname"
            ),
            {"role": role, "candidates": list(candidates)},
        )
        return [str(name) for (name,) in found]


_TABLE_ACCESS = """
SELECT t.name, n.nspname AS schema, c.relrowsecurity AS row_security,
       ARRAY(SELECT r.rolname FROM pg_roles r
             WHERE r.rolname = ANY(CAST(:roles AS text[]))
               AND has_table_privilege(r.oid, c.oid, 'SELECT')
             ORDER BY r.rolname) AS readers,
       ARRAY(SELECT r.rolname FROM pg_roles r
             WHERE r.rolname = ANY(CAST(:roles AS text[]))
               AND has_table_privilege(
                   r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
             ORDER BY r.rolname) AS holders,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0) AS public_privileges
FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY t.position
"""

# The expression of a policy, as text: 'true' for one that admits every row.
_EFFECTIVE_ACCESS = """
WITH tables AS (
    SELECT t.name, t.position, c.oid, c.relacl, c.relrowsecurity, n.nspname AS schema
    FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
    JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
    JOIN pg_namespace n ON n.oid = c.relnamespace
), roles AS (
    SELECT r.rolname AS name, r.oid, r.rolbypassrls AS bypass, 0 AS position
    FROM pg_roles r WHERE r.rolname = ANY(CAST(:roles AS text[]))
    UNION ALL
    SELECT 'PUBLIC', 0, false, 1
), commands AS (
    SELECT * FROM (VALUES ('SELECT', 'r', 1), ('INSERT', 'a', 2), ('UPDATE', 'w', 3),
                          ('DELETE', 'd', 4)) AS v(command, code, position)
), policies AS (
    SELECT p.polrelid, p.polname, p.polcmd, p.polroles, p.polpermissive,
           COALESCE(pg_get_expr(p.polqual, p.polrelid), '') AS qual,
           COALESCE(pg_get_expr(p.polwithcheck, p.polrelid),
                    pg_get_expr(p.polqual, p.polrelid), '') AS checked
    FROM pg_policy p
), applying AS (
    SELECT t.oid AS relid, roles.name AS role, commands.command, p.polname, p.polpermissive,
           CASE commands.command
               WHEN 'INSERT' THEN p.checked = 'true'
               WHEN 'UPDATE' THEN p.qual = 'true' AND p.checked = 'true'
               ELSE p.qual = 'true' END AS admits_all
    FROM tables t CROSS JOIN roles CROSS JOIN commands
    JOIN policies p ON p.polrelid = t.oid AND p.polcmd IN ('*', commands.code)
    WHERE 0 = ANY(p.polroles)
       OR (roles.oid <> 0 AND EXISTS (SELECT 1 FROM unnest(p.polroles) AS granted(oid)
                                      WHERE pg_has_role(roles.oid, granted.oid, 'USAGE')))
)
SELECT t.name, t.schema, roles.name AS role, commands.command,
       t.relrowsecurity AS row_security, roles.bypass AS bypass_rls,
       CASE
           WHEN roles.oid = 0 THEN
               EXISTS (SELECT 1 FROM aclexplode(t.relacl) a
                       WHERE a.grantee = 0 AND a.privilege_type = commands.command)
               OR (commands.command <> 'DELETE' AND EXISTS (
                       SELECT 1 FROM pg_attribute att, aclexplode(att.attacl) a
                       WHERE att.attrelid = t.oid AND att.attnum > 0 AND NOT att.attisdropped
                         AND a.grantee = 0 AND a.privilege_type = commands.command))
           WHEN commands.command = 'DELETE' THEN has_table_privilege(roles.oid, t.oid, 'DELETE')
           ELSE has_any_column_privilege(roles.oid, t.oid, commands.command)
       END AS privileged,
       ARRAY(SELECT a.polname FROM applying a
             WHERE a.relid = t.oid AND a.role = roles.name AND a.command = commands.command
               AND a.polpermissive AND a.admits_all ORDER BY 1) AS open_policies,
       ARRAY(SELECT a.polname FROM applying a
             WHERE a.relid = t.oid AND a.role = roles.name AND a.command = commands.command
               AND NOT a.polpermissive AND NOT a.admits_all ORDER BY 1) AS narrowing_policies
FROM tables t CROSS JOIN roles CROSS JOIN commands
ORDER BY t.position, roles.position, roles.name, commands.position
"""

_PAST_ROW_SECURITY = """
WITH tables AS (
    SELECT t.name, t.position, c.oid, c.relowner
    FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
    JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
)
SELECT r.rolname AS role, r.rolbypassrls AS bypass_rls, r.rolcanlogin AS can_login,
       COALESCE((SELECT pg_has_role(r.oid, p.oid, 'USAGE') FROM pg_roles p
                 WHERE p.rolname = 'pg_read_all_data'), false) AS read_all_data,
       ARRAY(SELECT t.name FROM tables t
             WHERE NOT pg_has_role(r.oid, t.relowner, 'USAGE')
               AND has_table_privilege(r.oid, t.oid, 'SELECT')
             ORDER BY t.position) AS tables
FROM pg_roles r
WHERE r.rolbypassrls AND NOT r.rolsuper AND r.rolname NOT LIKE 'pg\\_%'
ORDER BY r.rolname
"""

_ROW_SECURITY = """
SELECT t.name, n.nspname AS schema, c.relrowsecurity AS enabled,
       c.relforcerowsecurity AS forced, pg_has_role(r.oid, c.relowner, 'USAGE') AS owner,
       ARRAY(SELECT CAST(p.polcmd AS text) FROM pg_policy p
             WHERE p.polrelid = c.oid AND p.polpermissive
               AND EXISTS (SELECT 1 FROM unnest(p.polroles) AS granted(oid)
                           WHERE CASE WHEN granted.oid = 0 THEN true
                                 ELSE pg_has_role(r.oid, granted.oid, 'USAGE') END)
             ORDER BY 1) AS commands
FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)
JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_roles r ON r.rolname = CAST(:role AS text)
ORDER BY t.position
"""

_OWNED_SEQUENCES = """
SELECT sn.nspname AS schema, s.relname AS name
FROM pg_class t
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_depend d ON d.refobjid = t.oid
    AND d.refclassid = CAST('pg_class' AS regclass)
    AND d.classid = CAST('pg_class' AS regclass)
    AND d.deptype IN ('a', 'i')
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE tn.nspname = :schema AND t.relname = :table
ORDER BY s.relname
"""


def _aware(value: datetime | None) -> datetime | None:
    """min() over a timestamp column comes back naive from SQLite."""
    if value is not None and value.tzinfo is None:
        from datetime import UTC

        return value.replace(tzinfo=UTC)
    return value


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation, as PostgreSQL's percentile_cont."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


# SQLite allows 127 arguments per function call unless built otherwise (1,000 from 3.48):
# json_object and json_insert take two per column.
_SQLITE_JSON_COLUMNS_PER_CALL = 50


def _sqlite_json_object(names: Sequence[str]) -> ColumnElement[Any]:
    """json_object('name', name, ...) over the current row of the statement's one table,
    the columns beyond the first call's share added by json_insert (which, unlike
    json_patch, keeps null values). JSON cannot hold a BLOB: one is kept as its hex text."""
    # json_insert's path cannot name a column with a double quote; json_object's key can.
    names = sorted(names, key=lambda name: '"' in name, reverse=True)
    step = _SQLITE_JSON_COLUMNS_PER_CALL

    def value(name: str) -> Any:
        col: ColumnClause[Any] = column(name)
        return case((func.typeof(col) == "blob", func.hex(col)), else_=col)

    expression = func.json_object(
        *(part for name in names[:step] for part in (literal(name), value(name)))
    )
    for start in range(step, len(names), step):
        expression = func.json_insert(
            expression,
            *(
                part
                for name in names[start : start + step]
                for part in (literal(f'$."{name}"'), value(name))
            ),
        )
    return expression


def _insert_ignore(dialect: str, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on either backend."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
