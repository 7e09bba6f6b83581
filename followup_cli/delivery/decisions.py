"""What each decision of the push round becomes: parts for the finisher (delivered,
failed, deferred, released, parked), handed over in small groups while the batch is
still being pushed, so that a crash repeats only the last few pushes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from followup_cli.clock import utcnow
from followup_cli.delivery.chain import Chain, Link
from followup_cli.push.protocol import Attempt, PushOutcome
from followup_cli.push.tokens import mask_token
from followup_cli.repository import AttemptRecord, DueFollowUp, Failure
from followup_cli.settings import Settings
from followup_cli.vocabulary import Outcome

if TYPE_CHECKING:
    from followup_cli.delivery.finish import Finisher

log = logging.getLogger("followups.delivery")

# Answered follow-ups are finished in groups of this many answers, or after this long,
# whichever comes first, while their batch is still being pushed: after a crash only
# the pushes in flight and those answered since the last group are repeated.
FINISH_EVERY_ANSWERS = 200
FINISH_EVERY_SECONDS = 0.2
# Pushes APNs accepted that are not finished yet (one group being written, one
# filling). Beyond this, new pushes wait for the database: a database that is slow or
# away must not let unrecorded pushes pile up.
MAX_UNFINISHED = 2 * FINISH_EVERY_ANSWERS

# The longest pause before a follow-up whose attempts failed for transient reasons is
# tried again (the pause starts at FOLLOWUPS_RETRY_PAUSE and doubles per run).
MAX_RETRY_PAUSE = timedelta(minutes=15)


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
        """len(self.ids()), without building the list: asked after every answer."""
        return (
            len(self.delivered)
            + len(self.failures)
            + len(self.release)
            + len(self.deferred)
            + len(self.kept)
        )

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


def retry_pause(f: DueFollowUp, now: datetime, settings: Settings) -> timedelta | None:
    """How long after this run a follow-up whose attempts all failed for transient
    reasons is tried again: FOLLOWUPS_RETRY_PAUSE, doubling with each run that tried it,
    at most MAX_RETRY_PAUSE. None once its tries span FOLLOWUPS_GIVE_UP_AFTER: it is
    marked failed (with FOLLOWUPS_GIVE_UP_AFTER=0s, after this run's attempts)."""
    since = f.retrying_since or now
    if now - since >= settings.give_up_after:
        return None
    return min(settings.retry_pause * 2 ** min(f.retry_count, 16), MAX_RETRY_PAUSE)


class Decisions:
    """Sorts one batch's follow-ups, as the push round decides them, into parts for the
    finisher, handed over in groups (every FINISH_EVERY_ANSWERS, or FINISH_EVERY_SECONDS),
    and holds pushes back while too many accepted ones are not recorded yet. The chains
    decide them in scheduled order per conversation, so parts keep that order and message
    timestamps follow it. Runs on the event loop thread."""

    def __init__(
        self,
        chains: Sequence[Chain],
        invalid: Sequence[Failure],
        finisher: Finisher,
        settings: Settings,
    ) -> None:
        self._finisher = finisher
        self._settings = settings
        self._ready = empty_part()
        self._waiting = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self.parked: list[str] = []
        self._ready.failures.extend(invalid)
        self._entries: list[Link] = [link for chain in chains for link in chain.links]

    def in_app(self, entry: Link) -> None:
        entry.decided = True
        self._ready.attempts.extend(entry.notes)
        self._ready.delivered.append(entry.follow_up)
        self._changed()

    def answered(self, entry: Link, outcome: PushOutcome, *, stopping: bool) -> bool:
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

    def pass_over(self, entries: Sequence[Link], *, park: bool) -> None:
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
        part, self._ready = self._ready, empty_part()
        for entry in self._entries:
            if not entry.decided and not entry.started:
                part.release.append(entry.follow_up.id)
        return part

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        part, self._ready = self._ready, empty_part()
        self._finisher.submit(part)


def empty_part() -> PushedBatch:
    return PushedBatch(delivered=[], pushed_ids=set(), failures=[], release=[], attempts=[])


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
            apns_id=a.provider_id,
            is_test=is_test,
        )
        for a in attempts
    ]
