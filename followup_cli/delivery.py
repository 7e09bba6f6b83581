"""send-due: claim -> push (outside any transaction) -> finish, batch by batch.

The promise: every due follow-up is delivered exactly once (one in-app message row,
status sent), in scheduled order per conversation, even with several runners, APNs
failures or a process killed mid-run.

- Claim: a short transaction leases a batch to this run (FOR UPDATE SKIP LOCKED plus a
  lease that expires, so a dead run's rows come back).
- Push: no transaction is open; each conversation's follow-ups go out in order, different
  conversations concurrently; leases are renewed while pushes are slow.
- Finish: while the batch is still being pushed, answered follow-ups are finished in
  small groups, each one transaction that writes the in-app messages and the statuses
  together, guarded by "still scheduled and still ours", so a cancel by the app is never
  overwritten and a crash repeats only the last few pushes. A group the database
  refuses is finished again in smaller parts, so one bad row never holds the others
  back; a database that is away for a moment is waited for, as long as the leases last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from followup_cli.alerts import Alerter
from followup_cli.clock import utcnow
from followup_cli.db import Database, DatabaseProblem, classify_error
from followup_cli.push.payload import build_request
from followup_cli.push.protocol import Attempt, Pusher, PushOutcome, PushRequest, config_hint
from followup_cli.push.tokens import mask_token, normalize_token, token_service
from followup_cli.report import (
    REFUSED_FAILED,
    REFUSED_HELD,
    REFUSED_UNRECORDED,
    STOP_CONFIG,
    DatabaseStop,
    Refused,
    RunReport,
    ServiceStop,
)
from followup_cli.repository import (
    AttemptRecord,
    DueFollowUp,
    Failure,
    Message,
    Repository,
    RunRecord,
)
from followup_cli.settings import Settings
from followup_cli.vocabulary import Outcome, Service

log = logging.getLogger("followups.delivery")
T = TypeVar("T")

# Why a follow-up was not pushed or not delivered, as recorded in failure_reason and in
# follow_up_attempts.reason.
EMPTY_MESSAGE = "empty_message"
MISSING_RECIPIENT = "missing_recipient"
INVALID_DEVICE_TOKEN = "invalid_device_token"
# The database refused to record the delivery (a constraint or trigger of the app's, a
# grant or policy the runtime role lacks, an object missing).
DATABASE_REJECTED = "database_rejected"

# Answered follow-ups are finished in groups of this many answers, or after this long,
# whichever comes first, while their batch is still being pushed: after a crash only
# the pushes in flight and those answered since the last group are repeated.
FINISH_EVERY_ANSWERS = 200
FINISH_EVERY_SECONDS = 0.2
# Pushes APNs accepted that are not finished yet (one group being written, one
# filling). Beyond this, new pushes wait for the database: a database that is slow or
# away must not let unrecorded pushes pile up.
MAX_UNFINISHED = 2 * FINISH_EVERY_ANSWERS
# Waits between tries while the database is away: doubling, with jitter, up to the cap.
DB_RETRY_FIRST_SECONDS = 0.1
DB_RETRY_MAX_SECONDS = 2.0

# The longest pause before a follow-up whose attempts failed for transient reasons is
# tried again (the pause starts at FOLLOWUPS_RETRY_PAUSE and doubles per run).
MAX_RETRY_PAUSE = timedelta(minutes=15)

# A token of a push service that FOLLOWUPS_PUSH does not turn on: in-app only.
NOT_CONFIGURED = {Service.APNS: "apns_not_configured", Service.FCM: "fcm_not_configured"}

ProgressCallback = Callable[[int], None]


@dataclass
class _Plan:
    """What to do with one claimed batch."""

    push: list[tuple[DueFollowUp, PushRequest]] = field(default_factory=list)
    in_app: list[DueFollowUp] = field(default_factory=list)
    invalid: list[Failure] = field(default_factory=list)
    notes: list[AttemptRecord] = field(default_factory=list)


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
            plan.notes.append(AttemptRecord(f.id, now, 1, Outcome.SKIPPED, reason, None, None))
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


class RunStop:
    """A request to stop the run (SIGTERM, SIGINT), set from a signal handler.

    Once set, nothing more is claimed and no new push starts; the pushes in flight get
    up to STOP_GRACE_SECONDS to be answered and recorded, and every other claimed
    follow-up is handed back at once, so the next run need not wait for the lease."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._events: list[asyncio.Event] = []

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int) -> None:
        """Safe from a signal handler: it only sets a field and wakes the event loop."""
        if self.signal is None:
            self.signal = signum
        for loop, event in zip(self._loops, self._events, strict=True):
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        """Returns once a stop is requested (at once if it already was)."""
        event = asyncio.Event()
        self._loops.append(asyncio.get_running_loop())
        self._events.append(event)
        try:
            if not self.requested:
                await event.wait()
        finally:
            self._loops.pop()
            self._events.pop()


# After a stop request, how long the pushes in flight may take to be answered. Beyond
# this they are abandoned unrecorded: their follow-ups stay leased and come back after
# the lease, as a crash's do (what APNs may have accepted is not pushed sooner).
STOP_GRACE_SECONDS = 5.0


class _PushRound:
    """Walks one batch: conversations in parallel, each conversation's follow-ups one
    after the other in scheduled order, pushed or in-app only alike, with at most
    `pusher.concurrency` pushes in flight per push service.

    Within a batch this walk is the one owner of a conversation's order. A follow-up
    that stays scheduled ends its conversation's walk: its service stopped
    (configuration or outage), its attempts failed and it waits to be retried, the
    database did not answer the cancel gate, or the run is stopping. The later
    follow-ups of that conversation are then not delivered by this run, in-app only or
    through the other service: they are parked (leased to this run until it ends, so
    that it does not claim them again) or, when the run stops, handed back. Across
    batches, runs and runners, the claim keeps the order (Repository.claim_due).
    """

    def __init__(
        self,
        pusher: Pusher,
        gate: _CancelGate,
        tracker: _Tracker,
        stop: RunStop,
        stopping: Callable[[], bool],
    ) -> None:
        self._pusher = pusher
        self._gate = gate
        self._tracker = tracker
        self._stop = stop
        # The run is ending (a signal, or the database refusing every row): the rest of
        # each conversation is handed back rather than pushed or parked.
        self._stopping = stopping
        self.stops: dict[str, ServiceStop] = {}  # in the order they were noticed

    def run(
        self,
        conversations: list[list[_Entry]],
        renew: Callable[[], None],
        renew_every: float,
        progress: ProgressCallback | None,
    ) -> None:
        if conversations:
            self._pusher.run(self._run(conversations, renew, renew_every, progress))

    async def _run(
        self,
        conversations: list[list[_Entry]],
        renew: Callable[[], None],
        renew_every: float,
        progress: ProgressCallback | None,
    ) -> None:
        # One limit per service, so a slow service does not hold back the other one.
        concurrency = max(1, self._pusher.concurrency)
        slots = {s: asyncio.Semaphore(concurrency) for s in self._pusher.services}
        helpers = [
            asyncio.ensure_future(_renew_periodically(renew, renew_every)),
            asyncio.ensure_future(self._gate.keep_fresh()),
        ]
        tasks = [asyncio.ensure_future(self._walk(c, slots, progress)) for c in conversations]
        walks: asyncio.Future[Any] = asyncio.gather(*tasks)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([walks, stop], return_when=asyncio.FIRST_COMPLETED)
            if not walks.done():
                # Stopping: no new push starts; those in flight get a few seconds.
                await asyncio.wait([walks], timeout=STOP_GRACE_SECONDS)
            if walks.done():
                walks.result()  # an error of the database thread ends the run
        finally:
            # Nothing is left running behind, on an error or a stop alike.
            for task in (*tasks, *helpers, stop):
                task.cancel()
            await asyncio.gather(walks, *helpers, stop, return_exceptions=True)
            await self._gate.close()

    async def _walk(
        self,
        entries: Sequence[_Entry],
        slots: dict[str, asyncio.Semaphore],
        progress: ProgressCallback | None,
    ) -> None:
        tracker = self._tracker
        for i, entry in enumerate(entries):
            req = entry.request
            if req is None:
                if self._stopping():
                    tracker.pass_over(entries[i:], park=False)
                    return
                tracker.in_app(entry)
                continue
            async with slots[req.service]:
                await tracker.wait_for_room()
                if self._stopping():
                    tracker.pass_over(entries[i:], park=False)
                    return
                if self._stopped(req.service):
                    tracker.pass_over(entries[i:], park=True)
                    return
                entry.started = True
                outcome = await self._pusher.push(req, self._gate)
            self._stopped(req.service)
            self._gate.done(req.follow_up_id)
            goes_on = tracker.answered(entry, outcome, stopping=self._stopping())
            if progress is not None:
                progress(1)
            if not goes_on:
                # The conversation's later follow-ups must not overtake this one.
                tracker.pass_over(entries[i + 1 :], park=not self._stopping())
                return

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
    """The cancel promise's one owner (a PushGate): "may this follow-up still be pushed?",
    asked by the pusher before every request of it (first attempt, each retry, each
    resend of a push the service did not process).

    The app may cancel a follow-up after it was claimed. Rather than one query per
    request, the batch's still-claimed set is re-read (one query for every follow-up
    not yet answered) whenever the last reading began more than `interval` seconds ago,
    so a cancel committed `interval` seconds before a request starts stops it. The
    reading runs in a worker thread: the event loop and its streams never wait on the
    database. While the round runs, it is also kept fresh in the background, so a request
    that waited for a stream is checked against a recent reading when it starts.

    While the database does not answer, nothing is pushed (None): the push could not be
    recorded either, and the push round keeps the rest of that conversation back.
    """

    def __init__(self, db: Database, run_id: str, ids: Sequence[str], interval: float) -> None:
        self._db = db
        self._run_id = run_id
        self._pending = set(ids)
        self._interval = interval
        self._live: set[str] | None = set()  # None: the database did not answer
        self._read_at = float("-inf")  # when the latest reading began (monotonic)
        self._reading: asyncio.Future[None] | None = None

    async def allows(self, follow_up_id: str) -> bool | None:
        if time.monotonic() - self._read_at >= self._interval:
            await self._refresh()
        if self._live is None:
            return None
        return follow_up_id in self._live

    def withdrawn(self, follow_up_id: str) -> bool:
        if self._read_at == float("-inf"):
            return False  # not read yet: allows() reads before any request
        return self._live is not None and follow_up_id not in self._live

    def done(self, follow_up_id: str) -> None:
        """Answered: no further request of it, so no need to read it again."""
        self._pending.discard(follow_up_id)

    async def keep_fresh(self) -> None:
        """Reads again only when no request has caused a reading for `interval`: while
        pushes flow, their own checks keep it fresh, and this adds nothing."""
        every = max(self._interval, 0.05)
        while True:
            await asyncio.sleep(every)
            if self._pending and time.monotonic() - self._read_at >= every:
                await self._refresh()

    async def close(self) -> None:
        """Ends a reading still under way (the round is over: nobody needs it)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _refresh(self) -> None:
        # Callers at the same moment share one reading.
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        began = time.monotonic()
        ids = sorted(self._pending)
        try:
            self._live = await asyncio.get_running_loop().run_in_executor(
                None, self._still_claimed, ids
            )
        finally:
            self._read_at = began
            self._reading = None

    def _still_claimed(self, ids: list[str]) -> set[str] | None:
        for last_try in (False, True):
            try:
                with self._db.transaction() as repo:
                    return repo.still_claimed(self._run_id, ids)
            except SQLAlchemyError as exc:
                problem = classify_error(exc)
                if not problem.transient:
                    raise
                # A connection the server dropped mid-query: a new one may well answer.
                if last_try:
                    if self._live is not None:
                        log.warning(
                            "cancel check failed (%s); not pushing until the database answers",
                            problem.summary,
                        )
        return None


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


@dataclass(frozen=True)
class _Run:
    """What every batch of one run shares."""

    run_id: str
    finisher: _Finisher
    leases: _RunLeases
    stop: RunStop
    # Set once the database refuses what every row needs: no new push starts either.
    refusing: threading.Event

    def stopping(self) -> bool:
        return self.stop.requested or self.refusing.is_set()


def send_due(
    db: Database,
    pusher: Pusher,
    settings: Settings,
    alerter: Alerter,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    stop: RunStop | None = None,
) -> RunReport:
    """Deliver everything due when the run starts (or up to `limit`).

    Pipelined: while one batch is being pushed, a database thread claims the next one
    and finishes the answered follow-ups in small groups, so APNs is kept busy. Claiming
    ahead is safe for the per-conversation order: a later follow-up whose earlier one is
    still leased (by this run too) is simply not claimed until that one is finished.

    `stop` (set by SIGTERM or SIGINT) ends the run early and cleanly: nothing more is
    claimed, the pushes in flight are answered and recorded, the rest is handed back.
    """
    stop = stop or RunStop()
    started = utcnow()
    report = RunReport(run_id=str(uuid.uuid4()), push_backend=pusher.name, started_at=started)
    lease = timedelta(seconds=settings.lease_seconds)
    leases = _RunLeases(db, report.run_id, settings.lease_seconds)
    stamps = MessageClock()
    wanted = limit
    # Set once the database refuses what every row needs (a grant, a policy, a table):
    # nothing more is claimed, and what was claimed ahead is handed back unpushed.
    refusing = threading.Event()

    def claim() -> list[DueFollowUp]:
        nonlocal wanted
        size = settings.batch_size if wanted is None else min(settings.batch_size, wanted)
        if size <= 0 or stop.requested or refusing.is_set():
            return []

        def claim_once(_retrying: bool) -> tuple[list[DueFollowUp], float]:
            claimed_at = time.monotonic()
            now = utcnow()
            with db.transaction() as repo:
                return repo.claim_due(report.run_id, started, now, now + lease, size), claimed_at

        batch, claimed_at = leases.retry(claim_once, "claiming")
        if batch:
            leases.batch_claimed(claimed_at)
        if wanted is not None:
            wanted -= len(batch)
        return batch

    def finish(part: PushedBatch) -> Finished:
        finished = finish_batch(db, report.run_id, part, stamps, retry=leases.retry)
        if finished.database_stop is not None:
            refusing.set()
        return finished

    def release_ids(ids: Sequence[str]) -> None:
        if ids:
            leases.retry(lambda _r: _release(db, report.run_id, ids), "handing back follow-ups")

    def release(batch: Sequence[DueFollowUp]) -> None:
        if batch:
            release_ids([f.id for f in batch])
            leases.batch_finished()

    # Follow-ups a stopped push service left scheduled: leased to this run until it ends,
    # so that the run goes on for the other service without claiming them again.
    parked: list[str] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="followups-db") as db_thread:
        finisher = _Finisher(db_thread, finish, leases.batch_finished)
        run = _Run(report.run_id, finisher, leases, stop, refusing)
        try:
            batch = claim()
            while batch:
                report.claimed += len(batch)
                next_batch = db_thread.submit(claim)
                ended = _push_batch(db, pusher, settings, run, batch, progress)
                parked.extend(ended.parked)
                run.finisher.collect(report, wait=False)
                for service_stop in ended.stops:
                    report.note_stop(service_stop)
                if (
                    stop.requested
                    or refusing.is_set()
                    or all(pusher.stopped(s) is not None for s in pusher.services)
                ):
                    ahead = next_batch.result()
                    db_thread.submit(release, ahead).result()
                    break
                batch = next_batch.result()
                if not batch:
                    # Claimed ahead while this batch still held its conversations' earlier
                    # follow-ups: once it is finished, the later ones may be due to go.
                    run.finisher.collect(report, wait=True)
                    batch = claim()
            run.finisher.collect(report, wait=True)
            if parked:
                db_thread.submit(release_ids, parked).result()
        finally:
            report.finished_at = utcnow()
    for service in sorted(pusher.services):
        # Every attempt to a service failed, though too few to trip its breaker (one
        # follow-up due, say): an outage all the same, for the exit code and the alert.
        unanswered = pusher.unanswered(service) if pusher.stopped(service) is None else None
        if unanswered is not None:
            report.note_stop(unanswered)
    report.signal = stop.signal
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


class _RunLeases:
    """How long this run's leases surely last, their renewal, and the retries of database
    work while the database is away for a moment (a restart or failover of managed
    PostgreSQL takes seconds to a minute).

    Every row a run holds carries a lease that ends `lease_seconds` after its claim or
    the last renewal, whichever is later. Retrying past that point would gain nothing:
    another run may take the rows over and push them again. Batches are finished in the
    order they were claimed, so the oldest lease at stake is the oldest unfinished
    batch's claim, or the last renewal if that came later.
    """

    def __init__(self, db: Database, run_id: str, lease_seconds: float) -> None:
        self._db = db
        self._run_id = run_id
        self._lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._claims: deque[float] = deque()  # monotonic claim times of unfinished batches
        self._renewed_at = float("-inf")

    def batch_claimed(self, at: float) -> None:
        with self._lock:
            self._claims.append(at)

    def batch_finished(self) -> None:
        with self._lock:
            if self._claims:
                self._claims.popleft()

    def seconds_left(self) -> float | None:
        """Until the first lease at stake ends; None when the run holds nothing."""
        with self._lock:
            if not self._claims:
                return None
            since = max(self._claims[0], self._renewed_at)
        return since + self._lease_seconds - time.monotonic()

    def renew(self) -> None:
        started = time.monotonic()
        with self._db.transaction() as repo:
            repo.renew_claims(self._run_id, utcnow() + timedelta(seconds=self._lease_seconds))
        with self._lock:
            self._renewed_at = max(self._renewed_at, started)

    def retry(self, work: Callable[[bool], T], what: str) -> T:
        """`work(retrying)` until it succeeds, retrying transient database errors while the
        leases last, renewing them between tries. With nothing at stake (no lease held)
        there is no retry: the run ends at once, as it would have to anyway. Any other
        error, or the last transient one, is raised."""
        delay = DB_RETRY_FIRST_SECONDS
        waited = 0.0
        retrying = False
        while True:
            try:
                result = work(retrying)
            except SQLAlchemyError as exc:
                problem = classify_error(exc)
                left = self.seconds_left() if problem.transient else None
                if left is None:
                    raise
                # The sum of the waits bounds it too, should the clock stand still.
                left = min(left, self._lease_seconds - waited)
                if left <= 0:
                    raise
                if not retrying:
                    log.warning(
                        "database unavailable while %s (%s); trying again for up to %.0fs, "
                        "as long as this run's leases last",
                        what,
                        problem.summary,
                        left,
                    )
                pause = min(left, delay / 2 + random.uniform(0, delay / 2))
                time.sleep(pause)
                waited += pause
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)
                retrying = True
                try:
                    self.renew()
                except SQLAlchemyError:
                    pass  # still away: the next try tells
                continue
            if retrying:
                log.warning("database back after %.1fs; %s done", waited, what)
            return result


@dataclass
class PushedBatch:
    """Follow-ups ready to be finished (a group of a batch, or a whole one): what to write
    in one finish transaction.

    Every attempt belongs to a follow-up listed in `delivered`, `failures` or `release`;
    `delivered` is in scheduled order within each conversation.
    """

    delivered: list[DueFollowUp]
    pushed_ids: set[str]
    failures: list[Failure]
    release: list[str]
    attempts: list[AttemptRecord]
    # Attempts failed for transient reasons: tried again by a later run.
    deferred: list[Deferral] = field(default_factory=list)
    # Parked (their service stopped): only their attempts are written; the run keeps
    # them leased until it ends.
    kept: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.ids())

    def ids(self) -> list[str]:
        return [
            *(f.id for f in self.delivered),
            *(f.follow_up_id for f in self.failures),
            *self.release,
            *(d.follow_up_id for d in self.deferred),
            *self.kept,
        ]

    def only(self, keep: set[str]) -> PushedBatch:
        return PushedBatch(
            delivered=[f for f in self.delivered if f.id in keep],
            pushed_ids=self.pushed_ids & keep,
            failures=[f for f in self.failures if f.follow_up_id in keep],
            release=[fid for fid in self.release if fid in keep],
            attempts=[a for a in self.attempts if a.follow_up_id in keep],
            deferred=[d for d in self.deferred if d.follow_up_id in keep],
            kept=[fid for fid in self.kept if fid in keep],
        )

    def halves(self) -> tuple[PushedBatch, PushedBatch]:
        """Two parts, the earlier follow-ups first, so that messages keep their order."""
        ids = self.ids()
        first = set(ids[: len(ids) // 2])
        return self.only(first), self.only(set(ids) - first)


@dataclass(frozen=True)
class Deferral:
    follow_up_id: str
    pause: timedelta  # from the finish: few distinct values, one statement each


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
        report.failed += sum(1 for r in self.refused if r.outcome == REFUSED_FAILED)
        report.held += sum(1 for r in self.refused if r.outcome == REFUSED_HELD)
        report.failures.extend((f.follow_up_id, f.reason) for f in self.failed)
        report.refused.extend(self.refused)
        if self.database_stop is not None:
            report.note_database_stop(self.database_stop)


class _Finisher:
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


@dataclass
class _Entry:
    follow_up: DueFollowUp
    request: PushRequest | None  # None: delivered in-app only
    notes: list[AttemptRecord] = field(default_factory=list)
    started: bool = False  # its push began
    decided: bool = False  # handed to a part (delivered, failed, deferred, released, parked)


def retry_pause(f: DueFollowUp, now: datetime, settings: Settings) -> timedelta | None:
    """How long after this run a follow-up whose attempts all failed for transient
    reasons is tried again: FOLLOWUPS_RETRY_PAUSE, doubling with each run that tried it,
    at most MAX_RETRY_PAUSE. None once its tries span FOLLOWUPS_GIVE_UP_AFTER: it is
    marked failed (with FOLLOWUPS_GIVE_UP_AFTER=0s, after this run's attempts)."""
    since = f.retrying_since or now
    if now - since >= settings.give_up_after:
        return None
    return min(settings.retry_pause * 2 ** min(f.retry_count, 16), MAX_RETRY_PAUSE)


class _Tracker:
    """Sorts one batch's follow-ups, as the push round decides them, into parts for the
    finisher, handed over in groups (every FINISH_EVERY_ANSWERS, or FINISH_EVERY_SECONDS).
    The round decides them in scheduled order per conversation, so parts keep that order
    and message timestamps follow it. Runs on the event loop thread."""

    def __init__(
        self,
        batch: Sequence[DueFollowUp],
        plan: _Plan,
        finisher: _Finisher,
        settings: Settings,
    ) -> None:
        self._finisher = finisher
        self._settings = settings
        self._ready = _empty_part()
        self._waiting = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self.parked: list[str] = []
        requests = {f.id: req for f, req in plan.push}
        in_app = {f.id for f in plan.in_app}
        notes: dict[str, list[AttemptRecord]] = {}
        for note in plan.notes:
            notes.setdefault(note.follow_up_id, []).append(note)
        self._ready.failures.extend(plan.invalid)
        conversations: dict[str | None, list[_Entry]] = {}
        self._entries: list[_Entry] = []
        for f in batch:
            if f.id not in requests and f.id not in in_app:
                continue
            entry = _Entry(f, requests.get(f.id), notes.get(f.id, []))
            self._entries.append(entry)
            # Follow-ups without a conversation have no order to keep: each on its own.
            key = f.conversation_id if f.conversation_id is not None else f.id
            conversations.setdefault(key, []).append(entry)
        self.conversations = list(conversations.values())

    def in_app(self, entry: _Entry) -> None:
        entry.decided = True
        self._ready.attempts.extend(entry.notes)
        self._ready.delivered.append(entry.follow_up)
        self._changed()

    def answered(self, entry: _Entry, outcome: PushOutcome, *, stopping: bool) -> bool:
        """Files a push's outcome; False when the follow-up stays scheduled, so that its
        conversation's later follow-ups must wait."""
        f, part = entry.follow_up, self._ready
        entry.decided = True
        part.attempts.extend(entry.notes)
        part.attempts.extend(attempt_records(f.id, outcome.attempts))
        goes_on = True
        kind = outcome.kind
        if kind == Outcome.SENT:
            part.delivered.append(f)
            part.pushed_ids.add(f.id)
        elif kind == Outcome.PERMANENT:
            part.failures.append(Failure(f.id, outcome.reason or "unknown"))
            token = entry.request.device_token if entry.request else None
            log.warning(
                "follow-up %s not delivered: %s (token %s)", f.id, outcome.reason, mask_token(token)
            )
        elif kind == Outcome.WITHDRAWN:
            part.release.append(f.id)  # cancelled by the app: stays cancelled
        elif kind == Outcome.TRANSIENT and not stopping:
            pause = retry_pause(f, utcnow(), self._settings)
            if pause is None:
                part.failures.append(Failure(f.id, outcome.reason or "unknown"))
                log.warning(
                    "follow-up %s failed: %s, its tries spanning FOLLOWUPS_GIVE_UP_AFTER",
                    f.id,
                    outcome.reason,
                )
            else:
                part.deferred.append(Deferral(f.id, pause))
                goes_on = False
        elif stopping:
            part.release.append(f.id)
            goes_on = False
        else:
            # Unsent or refused as a configuration error: its service stopped for the run.
            part.kept.append(f.id)
            self.parked.append(f.id)
            goes_on = False
        self._changed()
        return goes_on

    def pass_over(self, entries: Sequence[_Entry], *, park: bool) -> None:
        """Follow-ups this run does not deliver: parked until the run ends, or handed back
        now (the run is stopping)."""
        for entry in entries:
            entry.decided = True
            if park:
                self.parked.append(entry.follow_up.id)
            else:
                self._ready.release.append(entry.follow_up.id)
        self._changed()

    def _changed(self) -> None:
        if self._ready.size >= FINISH_EVERY_ANSWERS:
            self._flush()
        elif self._timer is None and self._ready.size:
            self._timer = asyncio.get_running_loop().call_later(FINISH_EVERY_SECONDS, self._flush)

    async def wait_for_room(self) -> None:
        """Holds a push back while too many accepted pushes are not recorded yet."""
        if self._has_room():
            return
        # One waiter polls the database thread's progress; the others queue behind it.
        async with self._waiting:
            while not self._has_room():
                if self._ready.pushed_ids:
                    self._flush()
                await asyncio.sleep(0.01)

    def _has_room(self) -> bool:
        if self._finisher.error is not None:
            raise self._finisher.error
        return self._finisher.unfinished + len(self._ready.pushed_ids) < MAX_UNFINISHED

    def end(self) -> PushedBatch:
        """Everything not handed over yet, once the round is over. A follow-up the round
        never decided (it ended on an error, or a stop's grace ran out) is handed back
        unless its push began: that one's answer is unknown, so it stays leased and comes
        back after the lease, as a crash's would."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        part, self._ready = self._ready, _empty_part()
        for entry in self._entries:
            if not entry.decided and not entry.started:
                part.release.append(entry.follow_up.id)
        return part

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        part, self._ready = self._ready, _empty_part()
        self._finisher.submit(part)


def _empty_part() -> PushedBatch:
    return PushedBatch(delivered=[], pushed_ids=set(), failures=[], release=[], attempts=[])


@dataclass(frozen=True)
class _RoundEnd:
    """How one batch's push round ended."""

    stops: list[ServiceStop]  # push services that stopped (configuration or outage)
    parked: list[str]  # left scheduled by a stop, leased to this run until it ends


def _push_batch(
    db: Database,
    pusher: Pusher,
    settings: Settings,
    run: _Run,
    batch: Sequence[DueFollowUp],
    progress: ProgressCallback | None,
) -> _RoundEnd:
    """Pushes one batch; its follow-ups are finished as they are decided. Returns the
    push services that stopped, and the follow-ups this run keeps parked."""
    plan = _plan(batch, utcnow(), settings, pusher.services)
    gate = _CancelGate(db, run.run_id, [f.id for f, _ in plan.push], settings.cancel_check_seconds)
    tracker = _Tracker(batch, plan, run.finisher, settings)
    round_ = _PushRound(pusher, gate, tracker, run.stop, run.stopping)
    try:
        round_.run(tracker.conversations, run.leases.renew, settings.lease_seconds / 3, progress)
    finally:
        # Even when the run is ending on an error, what the services accepted is recorded.
        run.finisher.submit(tracker.end(), last_of_batch=True)
    if progress is not None:
        progress(len(batch) - len(plan.push))
    return _RoundEnd(stops=list(round_.stops.values()), parked=tracker.parked)


def finish_batch(
    db: Database,
    run_id: str,
    pushed: PushedBatch,
    stamps: MessageClock,
    *,
    retry: Callable[[Callable[[bool], Finished], str], Finished] | None = None,
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
    attempt: Callable[[Callable[[bool], Finished], str], Finished] = retry or (
        lambda work, _what: work(False)
    )
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
    attempt: Callable[[Callable[[bool], Finished], str], Finished],
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
                [Failure(follow_up_id, DATABASE_REJECTED)],
                at,
                detail=reason,
                in_app_only=pushed,
            )
        # Unchanged: cancelled by the app, or no longer this run's; not ours to report.
        return Finished(refused=[Refused(follow_up_id, REFUSED_FAILED, reason)] if changed else [])

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
        if r.outcome == REFUSED_UNRECORDED:
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
                "marked failed" if r.outcome == REFUSED_FAILED else "held",
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
    attempt: Callable[[Callable[[bool], Finished], str], Finished],
    seen: Finished,
) -> Finished:
    """A refused follow-up that could not be marked failed: held, or else unrecorded."""

    def hold(_retrying: bool) -> Finished:
        with db.transaction() as repo:
            held = repo.hold(
                run_id, follow_up_id, DATABASE_REJECTED, detail, at, in_app_only=pushed
            )
        return Finished(refused=[Refused(follow_up_id, REFUSED_HELD, detail)] if held else [])

    try:
        return attempt(hold, "holding a refused follow-up")
    except SQLAlchemyError as exc:
        refusal = classify_error(exc)
        if not refusal.refused:
            raise
        seen.noting(refusal)
    return Finished(refused=[Refused(follow_up_id, REFUSED_UNRECORDED, detail)])


def _release(db: Database, run_id: str, ids: Sequence[str]) -> None:
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


_REFUSED_AS = {
    REFUSED_FAILED: "marked failed",
    REFUSED_HELD: "held",
    REFUSED_UNRECORDED: "not recorded, back in the queue after its lease",
}


def _alert(alerter: Alerter, report: RunReport) -> None:
    """One alert per run for new failures, one for rows the database refused (with the
    refusal that stopped the run's claims, if one did), and one per stopped push
    service. Ids, reasons and the database's constraint, table or function names only."""
    refusing = report.database_stop
    if report.refused or refusing is not None:
        shown = ", ".join(
            f"{r.follow_up_id} {_REFUSED_AS[r.outcome]} ({r.detail})" for r in report.refused[:20]
        )
        more = len(report.refused) - 20
        refused = (
            f" The database refused to record {len(report.refused)} delivered follow-up(s): "
            f"{shown}{f' and {more} more' if more > 0 else ''}. Each was pushed at most once "
            "and is not pushed again automatically."
            if report.refused
            else ""
        )
        retry = f"`followups retry-failed --reason {DATABASE_REJECTED}`"
        fix = (
            f" send-due stopped claiming: the database refuses every row ({refusing.cause}). "
            f"Fix: {refusing.fix or 'see `followups db check --role ROLE`'}; then {retry}."
            if refusing is not None
            else " Fix the cause (`followups db check --role ROLE` lists what the schema and "
            f"the role's grants and policies refuse), then {retry}."
        )
        alerter.alert(f"followups:{refused}{fix}")
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
