"""send-due: claim -> push (outside any transaction) -> finish, batch by batch.

The promise: every due follow-up is delivered exactly once (one in-app message row,
status sent), in scheduled order per conversation, even with several runners, APNs
failures or a process killed mid-run.

- Claim: a short transaction leases a batch to this run (FOR UPDATE SKIP LOCKED plus a
  lease that expires, so a dead run's rows come back).
- Push: no transaction is open; each conversation's follow-ups go out in order, different
  conversations concurrently; leases are renewed while pushes are slow.
- Finish: one transaction writes the in-app messages and the statuses together, guarded
  by "still scheduled and still ours", so a cancel by the app is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from followup_cli.alerts import Alerter
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.push import (
    APNS,
    CONFIG,
    FCM,
    PERMANENT,
    SENT,
    TRANSIENT,
    UNSENT,
    Attempt,
    Pusher,
    PushOutcome,
    PushRequest,
    build_request,
    config_hint,
    mask_token,
)
from followup_cli.report import SERVICE_LABELS, STOP_CONFIG, STOP_OUTAGE, RunReport, ServiceStop
from followup_cli.repository import AttemptRecord, DueFollowUp, Failure, Message, RunRecord
from followup_cli.settings import Settings

log = logging.getLogger("followups.delivery")

# Why a follow-up was not pushed or not delivered, as recorded in failure_reason and in
# follow_up_attempts.reason.
EMPTY_MESSAGE = "empty_message"
MISSING_RECIPIENT = "missing_recipient"
INVALID_DEVICE_TOKEN = "invalid_device_token"
# A token of a push service that FOLLOWUPS_PUSH does not turn on: in-app only.
NOT_CONFIGURED = {APNS: "apns_not_configured", FCM: "fcm_not_configured"}

# APNs device tokens: 64 hexadecimal characters (after normalize_token).
_APNS_TOKEN = re.compile(r"[0-9a-f]{64}")
# FCM registration tokens: an instance id, a colon and a long URL-safe base64 part (about
# 150-200 characters today; Google promises no fixed length, so up to 4 KB is taken).
_FCM_TOKEN = re.compile(r"[A-Za-z0-9_-]+:[A-Za-z0-9_-]+")
_FCM_TOKEN_LENGTH = range(100, 4097)

ProgressCallback = Callable[[int], None]


@dataclass
class _Plan:
    """What to do with one claimed batch."""

    push: list[tuple[DueFollowUp, PushRequest]] = field(default_factory=list)
    in_app: list[DueFollowUp] = field(default_factory=list)
    invalid: list[Failure] = field(default_factory=list)
    notes: list[AttemptRecord] = field(default_factory=list)


def normalize_token(token: str | None) -> str | None:
    """Whitespace is forgiven in any token. An APNs token (64 hex characters) is also
    forgiven its case; an FCM token keeps its case, which is part of the token."""
    if token is None:
        return None
    cleaned = "".join(token.split())
    if not cleaned:
        return None
    lowered = cleaned.lower()
    return lowered if _APNS_TOKEN.fullmatch(lowered) else cleaned


def token_service(token: str) -> str | None:
    """The push service a normalized token belongs to (push.APNS or push.FCM), or None
    when it is neither an APNs device token nor an FCM registration token."""
    if _APNS_TOKEN.fullmatch(token):
        return APNS
    if len(token) in _FCM_TOKEN_LENGTH and _FCM_TOKEN.fullmatch(token):
        return FCM
    return None


def is_valid_token(token: str) -> bool:
    return token_service(token) is not None


def _plan(
    batch: Sequence[DueFollowUp], now: datetime, settings: Settings, services: frozenset[str]
) -> _Plan:
    plan = _Plan()
    for f in batch:
        if not (f.display_text or "").strip():
            plan.invalid.append(Failure(f.id, EMPTY_MESSAGE))
            continue
        if not (f.user_id or "").strip() or not _is_uuid(f.conversation_id):
            plan.invalid.append(Failure(f.id, MISSING_RECIPIENT))
            continue
        token = normalize_token(f.device_token)
        if token is None or f.in_app_only:
            plan.in_app.append(f)
            continue
        service = token_service(token)
        if service is None or service not in services:
            # The in-app message still reaches the parent; why there was no push is on
            # record (stats counts these by reason).
            reason = INVALID_DEVICE_TOKEN if service is None else NOT_CONFIGURED[service]
            plan.in_app.append(f)
            plan.notes.append(AttemptRecord(f.id, now, 1, "skipped", reason, None, None))
            continue
        plan.push.append((f, build_request(f, token, settings, service)))
    return plan


def _is_uuid(value: str | None) -> bool:
    if not value:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class _PushRound:
    """Pushes one batch: conversations in parallel, each conversation in order, at most
    `pusher.concurrency` notifications in flight per push service.

    A service that stops (a configuration answer, or its outage breaker tripped; both
    last for the run) takes no more pushes; the other service's pushes go on. What was
    not pushed because of a stop, and the later follow-ups of its conversation, are
    `held`: they stay scheduled, leased to this run until it ends, so that this run does
    not claim them again.
    """

    def __init__(self, pusher: Pusher, may_push: Callable[[str], bool]) -> None:
        self._pusher = pusher
        self._may_push = may_push
        self.stops: dict[str, ServiceStop] = {}  # in the order they were noticed
        self.held: set[str] = set()
        self.outcomes: dict[str, PushOutcome] = {}

    def run(
        self,
        items: Sequence[tuple[DueFollowUp, PushRequest]],
        renew: Callable[[], None],
        renew_every: float,
        progress: ProgressCallback | None,
    ) -> None:
        groups: dict[str | None, list[PushRequest]] = {}
        for f, req in items:
            groups.setdefault(f.conversation_id, []).append(req)
        if groups:
            self._pusher.run(self._run(list(groups.values()), renew, renew_every, progress))

    def stays_scheduled(self, req: PushRequest, outcome: PushOutcome) -> bool:
        """Neither sent nor failed because its service stopped: never sent, refused as a
        configuration error, or its attempts used up in the service's outage."""
        if outcome.kind in (UNSENT, CONFIG):
            return True
        stop = self.stops.get(req.service)
        return outcome.kind == TRANSIENT and stop is not None and stop.kind == STOP_OUTAGE

    async def _run(
        self,
        groups: list[list[PushRequest]],
        renew: Callable[[], None],
        renew_every: float,
        progress: ProgressCallback | None,
    ) -> None:
        # One limit per service, so a slow service does not hold back the other one.
        concurrency = max(1, self._pusher.concurrency)
        slots = {s: asyncio.Semaphore(concurrency) for s in self._pusher.services}
        renewer = asyncio.ensure_future(_renew_periodically(renew, renew_every))
        tasks = [asyncio.ensure_future(self._push_group(g, slots, progress)) for g in groups]
        try:
            await asyncio.gather(*tasks)
        finally:
            # On an error (the database gone mid-batch) nothing is left running behind.
            for task in (*tasks, renewer):
                task.cancel()
            await asyncio.gather(*tasks, renewer, return_exceptions=True)

    async def _push_group(
        self,
        reqs: Sequence[PushRequest],
        slots: dict[str, asyncio.Semaphore],
        progress: ProgressCallback | None,
    ) -> None:
        for i, req in enumerate(reqs):
            async with slots[req.service]:
                if self._stopped(req.service):
                    self.held.update(r.follow_up_id for r in reqs[i:])
                    return
                if not self._may_push(req.follow_up_id):
                    continue  # cancelled by the app since the claim
                outcome = await self._pusher.push(req)
            self._record(req, outcome)
            if progress is not None:
                progress(1)
            if self.stays_scheduled(req, outcome):
                # The conversation's later follow-ups must not overtake this one.
                self.held.update(r.follow_up_id for r in reqs[i + 1 :])
                return

    def _record(self, req: PushRequest, outcome: PushOutcome) -> None:
        # Runs on the event loop thread only: no lock needed.
        self.outcomes[req.follow_up_id] = outcome
        self._stopped(req.service)

    def _stopped(self, service: str) -> bool:
        stop = self._pusher.stopped(service)
        if stop is None:
            return False
        self.stops.setdefault(service, stop)
        return True


async def _renew_periodically(renew: Callable[[], None], every: float) -> None:
    """Keeps this run's leases alive while a slow batch is still pushing."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        try:
            await loop.run_in_executor(None, renew)
        except Exception as exc:  # one failed renewal must not end the renewals
            # A lapsed lease could let another run push this batch again; the next try
            # comes at the next interval, well before the lease ends.
            log.warning("could not renew this run's leases (%s); retrying", type(exc).__name__)


class _CancelGate:
    """Answers "may this follow-up still be pushed?" just before each push.

    The app may cancel a follow-up after it was claimed. Rather than one query per push,
    the still-claimed set is re-read at most every `interval` seconds (one query for the
    whole batch), so a cancel is noticed within that interval plus one push.
    """

    def __init__(self, db: Database, run_id: str, ids: Sequence[str], interval: float) -> None:
        self._db = db
        self._run_id = run_id
        self._pending = set(ids)
        self._interval = interval
        self._live: set[str] = set()
        self._checked_at = float("-inf")

    def may_push(self, follow_up_id: str) -> bool:
        # Called on the event loop thread only.
        now = time.monotonic()
        if now - self._checked_at >= self._interval:
            with self._db.transaction() as repo:
                self._live = repo.still_claimed(self._run_id, sorted(self._pending))
            self._checked_at = now
        self._pending.discard(follow_up_id)
        return follow_up_id in self._live


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


def send_due(
    db: Database,
    pusher: Pusher,
    settings: Settings,
    alerter: Alerter,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> RunReport:
    """Deliver everything due when the run starts (or up to `limit`).

    Pipelined: while one batch is being pushed, a database thread claims the next one
    and finishes the previous one, so APNs is kept busy. Claiming ahead is safe for the
    per-conversation order: a later follow-up whose earlier one is still leased (by this
    run too) is simply not claimed until that one is finished.
    """
    started = utcnow()
    report = RunReport(run_id=str(uuid.uuid4()), push_backend=pusher.name, started_at=started)
    lease = timedelta(seconds=settings.lease_seconds)
    stamps = MessageClock()
    wanted = limit

    def claim() -> list[DueFollowUp]:
        nonlocal wanted
        size = settings.batch_size if wanted is None else min(settings.batch_size, wanted)
        if size <= 0:
            return []
        now = utcnow()
        with db.transaction() as repo:
            batch = repo.claim_due(report.run_id, started, now, now + lease, size)
        if wanted is not None:
            wanted -= len(batch)
        return batch

    # Follow-ups a stopped push service left scheduled: leased to this run until it ends,
    # so that the run goes on for the other service without claiming them again.
    held: list[str] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="followups-db") as db_thread:
        finishing: Future[Finished] | None = None
        try:
            batch = claim()
            while batch:
                report.claimed += len(batch)
                next_batch = db_thread.submit(claim)
                pushed = _push_batch(db, pusher, settings, report.run_id, batch, progress)
                held.extend(pushed.held)
                if finishing is not None:
                    finishing.result().add_to(report)
                finishing = db_thread.submit(finish_batch, db, report.run_id, pushed, stamps)
                for stop in pushed.stops:
                    report.note_stop(stop)
                if all(pusher.stopped(s) is not None for s in pusher.services):
                    ahead = next_batch.result()
                    db_thread.submit(_release, db, report.run_id, ahead).result()
                    break
                batch = next_batch.result()
                if not batch:
                    # Claimed ahead while this batch still held its conversations' earlier
                    # follow-ups: once it is finished, the later ones may be due to go.
                    finishing.result().add_to(report)
                    finishing = None
                    batch = claim()
            if finishing is not None:
                finishing.result().add_to(report)
            if held:
                db_thread.submit(_release_ids, db, report.run_id, held).result()
        finally:
            report.finished_at = utcnow()
    _alert(alerter, report)
    with db.transaction() as repo:
        repo.record_run(
            RunRecord(
                id=report.run_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=report.started_at,
                finished_at=report.finished_at,
                push_backend=report.push_backend,
                claimed=report.claimed,
                sent=report.sent,
                failed=report.failed,
                skipped=report.skipped,
                outcome=report.outcome,
            )
        )
    return report


@dataclass
class PushedBatch:
    """One batch after its push round: what to write in the finish transaction."""

    delivered: list[DueFollowUp]
    pushed_ids: set[str]
    failures: list[Failure]
    release: list[str]
    attempts: list[AttemptRecord]
    stop: str | None
    stop_reason: str | None
    # Left scheduled by a stopped push service, kept leased until the run ends.
    held: list[str] = field(default_factory=list)
    stops: list[ServiceStop] = field(default_factory=list)


@dataclass
class Finished:
    sent: set[str]
    pushed: int
    failed: list[Failure]

    def add_to(self, report: RunReport) -> None:
        report.sent += len(self.sent)
        report.pushed += self.pushed
        report.in_app_only += len(self.sent) - self.pushed
        report.failed += len(self.failed)
        report.failures.extend((f.follow_up_id, f.reason) for f in self.failed)


def _push_batch(
    db: Database,
    pusher: Pusher,
    settings: Settings,
    run_id: str,
    batch: Sequence[DueFollowUp],
    progress: ProgressCallback | None,
) -> PushedBatch:
    lease = timedelta(seconds=settings.lease_seconds)
    plan = _plan(batch, utcnow(), settings, pusher.services)
    to_push = plan.push
    gate = _CancelGate(db, run_id, [f.id for f, _ in to_push], settings.cancel_check_seconds)

    def renew() -> None:
        with db.transaction() as repo:
            repo.renew_claims(run_id, utcnow() + lease)

    round_ = _PushRound(pusher, gate.may_push)
    round_.run(to_push, renew, settings.lease_seconds / 3, progress)

    delivered: list[DueFollowUp] = list(plan.in_app)
    failures: list[Failure] = list(plan.invalid)
    release: list[str] = []
    held: list[str] = []
    attempts: list[AttemptRecord] = list(plan.notes)
    for f, req in to_push:
        outcome = round_.outcomes.get(f.id)
        if outcome is not None:
            attempts.extend(attempt_records(f.id, outcome.attempts))
        if f.id in round_.held or (outcome is not None and round_.stays_scheduled(req, outcome)):
            # Its service stopped (configuration or outage): nothing is failed, it stays
            # scheduled for the next run.
            held.append(f.id)
        elif outcome is None:
            release.append(f.id)  # cancelled by the app meanwhile
        elif outcome.kind == SENT:
            delivered.append(f)
        elif outcome.kind == PERMANENT:
            failures.append(Failure(f.id, outcome.reason or "unknown"))
            log.warning(
                "follow-up %s not delivered: %s (%s token %s)",
                f.id,
                outcome.reason,
                SERVICE_LABELS.get(req.service, req.service),
                mask_token(req.device_token),
            )
        else:  # transient, its attempts used up while the service was not in an outage
            failures.append(Failure(f.id, outcome.reason or "unknown"))
            log.warning(
                "follow-up %s failed after %d attempts: %s",
                f.id,
                len(outcome.attempts),
                outcome.reason,
            )
    if progress is not None:
        progress(len(batch) - len(to_push))
    delivered.sort(key=lambda f: (f.scheduled_for, f.id))
    stops = list(round_.stops.values())
    return PushedBatch(
        delivered=delivered,
        pushed_ids={fid for fid, o in round_.outcomes.items() if o.kind == SENT},
        failures=failures,
        release=release,
        attempts=attempts,
        stop=stops[0].kind if stops else None,
        stop_reason=stops[0].reason if stops else None,
        held=held,
        stops=stops,
    )


def finish_batch(db: Database, run_id: str, pushed: PushedBatch, stamps: MessageClock) -> Finished:
    """One transaction: in-app messages and statuses together, attempts recorded, the rest
    handed back. Guarded updates: what the app cancelled meanwhile stays cancelled."""
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
        repo.release(run_id, pushed.release)
        repo.record_attempts(run_id, pushed.attempts)
    return Finished(
        sent=sent_ids,
        pushed=len(sent_ids & pushed.pushed_ids),
        failed=[f for f in pushed.failures if f.follow_up_id in failed_ids],
    )


def _release(db: Database, run_id: str, batch: Sequence[DueFollowUp]) -> None:
    _release_ids(db, run_id, [f.id for f in batch])


def _release_ids(db: Database, run_id: str, ids: Sequence[str]) -> None:
    if ids:
        with db.transaction() as repo:
            repo.release(run_id, ids)


def attempt_records(
    follow_up_id: str, attempts: Sequence[Attempt], *, is_test: bool = False
) -> list[AttemptRecord]:
    return [
        AttemptRecord(
            follow_up_id=follow_up_id,
            attempted_at=a.attempted_at,
            attempt=a.attempt,
            outcome=a.outcome,
            reason=a.reason,
            status_code=a.status_code,
            apns_id=a.apns_id,
            is_test=is_test,
        )
        for a in attempts
    ]


def _alert(alerter: Alerter, report: RunReport) -> None:
    """One alert per run for new failures, and one per stopped push service. Ids and
    reasons only."""
    if report.failures:
        shown = ", ".join(f"{fid} ({reason})" for fid, reason in report.failures[:20])
        more = len(report.failures) - 20
        alerter.alert(
            f"followups: {len(report.failures)} follow-up(s) could not be delivered "
            f"and are marked failed: {shown}{f' and {more} more' if more > 0 else ''}. "
            "See docs/reliability.md; requeue with `followups retry-failed`."
        )
    for stop in report.stops:
        alerter.alert(f"followups: {_stop_alert(stop, report)}")


def _stop_alert(stop: ServiceStop, report: RunReport) -> str:
    """One push service's stop, named, with what the operator checks."""
    went_on = report.services_that_went_on
    others = f" {' and '.join(went_on)} deliveries went on." if went_on else ""
    if stop.kind == STOP_CONFIG:
        return (
            f"send-due stopped: {stop.label} rejected our configuration ({stop.reason}). "
            f"Nothing was marked failed; the follow-ups stay scheduled.{others} "
            f"{config_hint(stop.reason, stop.service)}"
        )
    return (
        f"send-due stopped early: {stop.label} keeps failing ({stop.reason}). The "
        f"remaining follow-ups stay scheduled for the next run.{others}"
    )
