"""send-due's orchestration: claim -> push (outside any transaction) -> finish, batch by
batch, pipelined. Each promise has its own owner, and this module only wires them:

- the plan (plan.py): what each claimed follow-up needs;
- the conversation chain (chain.py): the order within a batch; the claim keeps it across
  batches, runs and runners;
- the cancel gate (gate.py): asked before every request of a push;
- the push round (round.py): one batch pushed within the services' limits;
- the lease keeper (leases.py): leases renewed, database work retried while they last;
- the finisher (decisions.py, finish.py): exactly once, refused rows set aside;
- the run's texts (texts.py): what it found for the alerts (alerting.py) and its one line.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from followup_cli.alerting import raise_alerts
from followup_cli.alerts import Alerter
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery.chain import ProgressCallback, chains
from followup_cli.delivery.decisions import Decisions, PushedBatch
from followup_cli.delivery.finish import Finished, Finisher, MessageClock, finish_batch, hand_back
from followup_cli.delivery.gate import CancelGate
from followup_cli.delivery.leases import RunLeases
from followup_cli.delivery.plan import make_plan
from followup_cli.delivery.round import PushRound
from followup_cli.delivery.stop import RunStop
from followup_cli.delivery.texts import run_findings, run_notices
from followup_cli.monitoring import CheckRules, success_rate_finding
from followup_cli.push.protocol import Pusher
from followup_cli.report import RunReport, ServiceStop
from followup_cli.repository import DueFollowUp, RunRecord
from followup_cli.settings import Settings


class Run:
    """What every batch of one run shares: its report, its leases, its database thread's
    work (claim, finish, hand back) and whether it is stopping. All database work of
    the run goes through `leases.retry`, so it waits out a short outage while the
    leases last."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        report: RunReport,
        stop: RunStop,
        limit: int | None,
        db_thread: ThreadPoolExecutor,
    ) -> None:
        self.db = db
        self.settings = settings
        self.report = report
        self.run_id = report.run_id
        self.stop = stop
        self.leases = RunLeases(db, report.run_id, settings.lease_seconds)
        self.finisher = Finisher(db_thread, self.finish, self.leases.batch_finished)
        self._stamps = MessageClock()
        self._lease = timedelta(seconds=settings.lease_seconds)
        self._wanted = limit
        # Set once the database refuses what every row needs (a grant, a policy, a
        # table): nothing more is claimed, no new push starts, and what was claimed
        # ahead is handed back unpushed.
        self.refusing = threading.Event()

    def stopping(self) -> bool:
        return self.stop.requested or self.refusing.is_set()

    def claim(self) -> list[DueFollowUp]:
        """The next batch (on the database thread); empty once the run is stopping or
        has claimed its `limit`."""
        batch_size = self.settings.batch_size
        size = batch_size if self._wanted is None else min(batch_size, self._wanted)
        if size <= 0 or self.stopping():
            return []

        def claim_once(_retrying: bool) -> tuple[list[DueFollowUp], float]:
            claimed_at = time.monotonic()
            now = utcnow()
            with self.db.transaction() as repo:
                started = self.report.started_at
                until = now + self._lease
                return repo.claim_due(self.run_id, started, now, until, size), claimed_at

        batch, claimed_at = self.leases.retry(claim_once, "claiming")
        if batch:
            self.leases.batch_claimed(claimed_at)
        if self._wanted is not None:
            self._wanted -= len(batch)
        return batch

    def finish(self, part: PushedBatch) -> Finished:
        finished = finish_batch(self.db, self.run_id, part, self._stamps, retry=self.leases.retry)
        if finished.database_stop is not None:
            self.refusing.set()
        return finished

    def hand_back(self, ids: Sequence[str]) -> None:
        if ids:
            self.leases.retry(
                lambda _r: hand_back(self.db, self.run_id, ids), "handing back follow-ups"
            )

    def hand_back_batch(self, batch: Sequence[DueFollowUp]) -> None:
        """A batch claimed ahead that the run will not push."""
        if batch:
            self.hand_back([f.id for f in batch])
            self.leases.batch_finished()


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
    report = RunReport(run_id=str(uuid.uuid4()), push_backend=pusher.name, started_at=utcnow())
    # Follow-ups a stopped push service left scheduled: leased to this run until it ends,
    # so that the run goes on for the other service without claiming them again.
    parked: list[str] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="followups-db") as db_thread:
        run = Run(db, settings, report, stop, limit, db_thread)
        try:
            batch = run.claim()
            while batch:
                report.claimed += len(batch)
                next_batch = db_thread.submit(run.claim)
                ended = push_batch(db, pusher, settings, run, batch, progress)
                parked.extend(ended.parked)
                run.finisher.collect(report, wait=False)
                for service_stop in ended.stops:
                    report.note_stop(service_stop)
                if run.stopping() or all(pusher.stopped(s) is not None for s in pusher.services):
                    ahead = next_batch.result()
                    db_thread.submit(run.hand_back_batch, ahead).result()
                    break
                batch = next_batch.result()
                if not batch:
                    # Claimed ahead while this batch still held its conversations' earlier
                    # follow-ups: once it is finished, the later ones may be due to go.
                    run.finisher.collect(report, wait=True)
                    batch = run.claim()
            run.finisher.collect(report, wait=True)
            if parked:
                db_thread.submit(run.hand_back, parked).result()
        finally:
            report.finished_at = utcnow()
    for service in sorted(pusher.services):
        # Every attempt to a service failed, though too few to trip its breaker (one
        # follow-up due, say): an outage all the same, for the exit code and the alert.
        unanswered = pusher.unanswered(service) if pusher.stopped(service) is None else None
        if unanswered is not None:
            report.note_stop(unanswered)
    report.signal = stop.signal
    report.health = [h for s in sorted(pusher.services) if (h := pusher.health(s)) is not None]
    _alert(db, alerter, settings, report)
    _record_run(db, report)
    return report


def _alert(db: Database, alerter: Alerter, settings: Settings, report: RunReport) -> None:
    """The run's one post: what it found of each alert condition (the success rate only
    when it did work, so that the idle minute stays cheap) and its new failures."""
    findings = run_findings(report)
    if report.claimed:
        rate = success_rate_finding(db, CheckRules.from_settings(settings))
        if rate is not None:
            findings.append(rate)
    raise_alerts(db, alerter, findings, run_notices(report), settings.alert_repeat_interval)


def _record_run(db: Database, report: RunReport) -> None:
    assert report.finished_at is not None
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


@dataclass(frozen=True)
class RoundEnd:
    """How one batch's push round ended."""

    stops: list[ServiceStop]  # push services that stopped (configuration or outage)
    parked: list[str]  # left scheduled by a stop, leased to this run until it ends


def push_batch(
    db: Database,
    pusher: Pusher,
    settings: Settings,
    run: Run,
    batch: Sequence[DueFollowUp],
    progress: ProgressCallback | None,
) -> RoundEnd:
    """Pushes one batch; its follow-ups are finished as they are decided. Returns the
    push services that stopped, and the follow-ups this run keeps parked."""
    plan = make_plan(batch, utcnow(), settings, pusher.services)
    gate = CancelGate(db, run.run_id, [f.id for f, _ in plan.push], settings.cancel_check_seconds)
    walks = chains(batch, plan)
    decisions = Decisions(walks, plan.invalid, run.finisher, settings)
    round_ = PushRound(pusher, gate, decisions, run.stop, run.stopping)
    try:
        round_.run(walks, run.leases.renew, settings.lease_seconds / 3, progress)
    finally:
        # Even when the run is ending on an error, what the services accepted is recorded.
        run.finisher.submit(decisions.end(), last_of_batch=True)
    if progress is not None:
        progress(len(batch) - len(plan.push))
    return RoundEnd(stops=list(round_.stops.values()), parked=decisions.parked)
