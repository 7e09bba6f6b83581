"""The finisher: the one owner of "exactly once". Each group of answered follow-ups is
written in one transaction (in-app messages and statuses together, guarded by "still
scheduled and still ours", so a cancel by the app is never overwritten), in the order
the groups were handed over, on the run's one database thread. A group the database
refuses is finished again in halves down to the single row, so one bad row never holds
the others back, and a refused row is set aside (failed, or held) rather than pushed
again."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from followup_cli.clock import utcnow
from followup_cli.db import Database, DatabaseProblem, classify_error
from followup_cli.delivery.decisions import PushedBatch
from followup_cli.report import DatabaseStop, Refused, RunReport
from followup_cli.repository import AttemptRecord, Failure, Message, Repository
from followup_cli.vocabulary import FailureReason, Refusal

log = logging.getLogger("followups.delivery")

# How finish work is tried: once, or again while the database is away (RunLeases.retry).
Attempting = Callable[[Callable[[bool], "Finished"], str], "Finished"]


@dataclass
class Finished:
    sent: set[str] = field(default_factory=set)
    pushed: int = 0
    failed: list[Failure] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)
    # The first refusal met that every row would meet (structural): the run stops claiming.
    database_stop: DatabaseStop | None = None

    def __add__(self, other: Finished) -> Finished:
        return Finished(
            sent=self.sent | other.sent,
            pushed=self.pushed + other.pushed,
            failed=self.failed + other.failed,
            refused=self.refused + other.refused,
            deferred=self.deferred | other.deferred,
            database_stop=self.database_stop or other.database_stop,
        )

    def noting(self, problem: DatabaseProblem) -> Finished:
        """Keeps the first structural refusal seen."""
        if problem.structural and self.database_stop is None:
            self.database_stop = DatabaseStop(problem.summary, problem.fix)
        return self

    def add_to(self, report: RunReport) -> None:
        report.retrying += len(self.deferred)
        report.sent += len(self.sent)
        report.pushed += self.pushed
        report.in_app_only += len(self.sent) - self.pushed
        report.failed += len(self.failed)
        report.failed += sum(1 for r in self.refused if r.outcome == Refusal.FAILED)
        report.held += sum(1 for r in self.refused if r.outcome == Refusal.HELD)
        report.failures.extend((f.follow_up_id, f.reason) for f in self.failed)
        report.refused.extend(self.refused)
        if self.database_stop is not None:
            report.note_database_stop(self.database_stop)


class Finisher:
    """Hands groups of answered follow-ups to the database thread, which finishes them in
    the order they were handed over, and keeps count of the accepted pushes that are not
    recorded yet."""

    def __init__(
        self,
        db_thread: ThreadPoolExecutor,
        finish: Callable[[PushedBatch], Finished],
        batch_finished: Callable[[], None],
    ) -> None:
        self._db_thread = db_thread
        self._finish = finish
        self._batch_finished = batch_finished
        self._lock = threading.Lock()
        self._unfinished = 0
        self._futures: deque[Future[Finished]] = deque()
        # The first error of the database thread: the pushes stop at once.
        self.error: BaseException | None = None

    @property
    def unfinished(self) -> int:
        with self._lock:
            return self._unfinished

    def submit(self, part: PushedBatch, *, last_of_batch: bool = False) -> None:
        if not part.size and not part.attempts and not last_of_batch:
            return
        accepted = len(part.pushed_ids)
        with self._lock:
            self._unfinished += accepted
        self._futures.append(self._db_thread.submit(self._run, part, accepted, last_of_batch))

    def _run(self, part: PushedBatch, accepted: int, last_of_batch: bool) -> Finished:
        try:
            if not part.size and not part.attempts:
                return Finished()
            return self._finish(part)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise
        finally:
            with self._lock:
                self._unfinished -= accepted
            if last_of_batch:
                self._batch_finished()

    def collect(self, report: RunReport, *, wait: bool) -> None:
        """Adds the finished groups to the report, in order (waiting for all of them when
        asked); the first group that failed raises its error."""
        while self._futures and (wait or self._futures[0].done()):
            self._futures.popleft().result().add_to(report)


class MessageClock:
    """Strictly increasing message timestamps: one transaction's NOW() is the same for
    every row, so two follow-ups of one conversation would otherwise tie."""

    def __init__(self) -> None:
        self._last: datetime | None = None

    def next(self) -> datetime:
        now = utcnow()
        if self._last is not None and now <= self._last:
            now = self._last + timedelta(microseconds=1)
        self._last = now
        return now


def finish_batch(
    db: Database,
    run_id: str,
    pushed: PushedBatch,
    stamps: MessageClock,
    *,
    retry: Attempting | None = None,
) -> Finished:
    """In-app messages and statuses together, attempts recorded, the rest handed back.
    Guarded updates: what the app cancelled meanwhile stays cancelled.

    When the database refuses the transaction for good (a constraint, a trigger, a value
    a column cannot hold, or a refusal every row meets: a grant or policy the role
    lacks, a table or column missing), the follow-ups are finished again in halves, down
    to the single row, so that only the refused rows are set aside (`_set_aside`);
    every other one is finished normally. A refusal every row meets is carried in the
    result (`database_stop`): the run claims nothing more.
    """
    attempt: Attempting = retry or (lambda work, _what: work(False))
    try:
        return attempt(
            lambda retrying: _finish_once(db, run_id, pushed, stamps, retrying), "finishing"
        )
    except SQLAlchemyError as exc:
        problem = classify_error(exc)
        if not problem.refused or not pushed.ids():
            raise
    if len(pushed.ids()) == 1:
        return _set_aside(db, run_id, pushed, problem, attempt)
    first, second = pushed.halves()
    finished = finish_batch(db, run_id, first, stamps, retry=retry) + finish_batch(
        db, run_id, second, stamps, retry=retry
    )
    return finished.noting(problem)


def _finish_once(
    db: Database, run_id: str, pushed: PushedBatch, stamps: MessageClock, retrying: bool
) -> Finished:
    finished_at = utcnow()
    with db.transaction() as repo:
        sent_ids = repo.mark_sent(run_id, [f.id for f in pushed.delivered], finished_at)
        repo.insert_messages(
            [
                Message(
                    follow_up_id=f.id,
                    conversation_id=f.conversation_id,
                    user_id=f.user_id,
                    content=f.display_text or "",
                    timestamp=stamps.next(),
                )
                for f in pushed.delivered
                if f.id in sent_ids
            ]
        )
        failed_ids = repo.mark_failed(run_id, pushed.failures, finished_at)
        by_pause: dict[timedelta, list[str]] = {}
        for d in pushed.deferred:
            by_pause.setdefault(d.pause, []).append(d.follow_up_id)
        deferred_ids = repo.defer(
            run_id, {finished_at + pause: ids for pause, ids in by_pause.items()}, finished_at
        )
        repo.release(run_id, pushed.release)
        repo.record_attempts(run_id, _not_yet_recorded(repo, run_id, pushed.attempts, retrying))
    return Finished(
        sent=sent_ids,
        pushed=len(sent_ids & pushed.pushed_ids),
        failed=[f for f in pushed.failures if f.follow_up_id in failed_ids],
        deferred=deferred_ids,
    )


def _not_yet_recorded(
    repo: Repository, run_id: str, attempts: Sequence[AttemptRecord], retrying: bool
) -> Sequence[AttemptRecord]:
    """On a retry after a lost connection the first try may have committed after all."""
    if not retrying or not attempts:
        return attempts
    done = repo.with_attempts_of_run(run_id, sorted({a.follow_up_id for a in attempts}))
    return [a for a in attempts if a.follow_up_id not in done]


def _set_aside(
    db: Database,
    run_id: str,
    part: PushedBatch,
    problem: DatabaseProblem,
    attempt: Attempting,
) -> Finished:
    """One follow-up the database refused to finish: never pushed again automatically.

    Marked failed (database_rejected, with the database's one-line reason). If even that
    is refused (say a CHECK on status without 'failed'), it is held with this tool's own
    columns, so no run claims it until retry-failed releases it. If even the hold is
    refused, it goes back to the queue when its lease ends. One whose push was accepted
    is also marked in-app only, so that a requeue never pushes it a second time.

    Its attempts are recorded afterwards, on their own and best effort: a database that
    refuses them (INSERT on follow_up_attempts revoked, say) must not keep the row from
    being set aside.
    """
    [follow_up_id] = part.ids()
    reason = problem.summary
    pushed = follow_up_id in part.pushed_ids
    at = utcnow()
    seen = Finished().noting(problem)

    def mark_failed(_retrying: bool) -> Finished:
        with db.transaction() as repo:
            changed = repo.mark_failed(
                run_id,
                [Failure(follow_up_id, FailureReason.DATABASE_REJECTED)],
                at,
                detail=reason,
                in_app_only=pushed,
            )
        # Unchanged: cancelled by the app, or no longer this run's; not ours to report.
        return Finished(refused=[Refused(follow_up_id, Refusal.FAILED, reason)] if changed else [])

    detail = reason
    try:
        finished = attempt(mark_failed, "recording a refused follow-up")
    except SQLAlchemyError as exc:
        refusal = classify_error(exc)
        if not refusal.refused:
            raise
        seen.noting(refusal)
        if refusal.summary != reason:
            detail = f"{reason}; marking it failed: {refusal.summary}"
        finished = _hold(db, run_id, follow_up_id, detail, at, pushed, attempt, seen)

    def record_attempts(retrying: bool) -> Finished:
        with db.transaction() as repo:
            repo.record_attempts(run_id, _not_yet_recorded(repo, run_id, part.attempts, retrying))
        return Finished()

    recorded = "its attempts recorded"
    if part.attempts:
        try:
            attempt(record_attempts, "recording the attempts of a refused follow-up")
        except SQLAlchemyError as exc:
            refusal = classify_error(exc)
            if not refusal.refused:
                raise
            seen.noting(refusal)
            recorded = f"its attempts not recorded ({refusal.summary})"
    for r in finished.refused:
        if r.outcome == Refusal.UNRECORDED:
            log.error(
                "follow-up %s: the database refused to record it, to mark it failed and to "
                "hold it (%s); it returns to the queue when its lease ends; %s",
                follow_up_id,
                detail,
                recorded,
            )
        else:
            log.warning(
                "follow-up %s: the database refused to record it (%s); %s, %s",
                follow_up_id,
                detail,
                "marked failed" if r.outcome == Refusal.FAILED else "held",
                recorded,
            )
    return finished + seen


def _hold(
    db: Database,
    run_id: str,
    follow_up_id: str,
    detail: str,
    at: datetime,
    pushed: bool,
    attempt: Attempting,
    seen: Finished,
) -> Finished:
    """A refused follow-up that could not be marked failed: held, or else unrecorded."""

    def hold(_retrying: bool) -> Finished:
        with db.transaction() as repo:
            held = repo.hold(
                run_id,
                follow_up_id,
                FailureReason.DATABASE_REJECTED,
                detail,
                at,
                in_app_only=pushed,
            )
        return Finished(refused=[Refused(follow_up_id, Refusal.HELD, detail)] if held else [])

    try:
        return attempt(hold, "holding a refused follow-up")
    except SQLAlchemyError as exc:
        refusal = classify_error(exc)
        if not refusal.refused:
            raise
        seen.noting(refusal)
    return Finished(refused=[Refused(follow_up_id, Refusal.UNRECORDED, detail)])


def hand_back(db: Database, run_id: str, ids: Sequence[str]) -> None:
    """Follow-ups this run claimed but does not deliver, back to the queue at once."""
    with db.transaction() as repo:
        repo.release(run_id, ids)
