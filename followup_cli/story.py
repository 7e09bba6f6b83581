"""show: one follow-up's whole story, for support ("did the parent get it?").

Gathered in one read-only transaction, so the row, its attempts, its in-app message and
its runs agree with each other. What it holds is safe to print: ids, times, outcomes and
reasons, and the device token masked; never the message text, the child's name or age.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.errors import NotFound
from followup_cli.push.tokens import mask_token, normalize_token, token_service
from followup_cli.repository import StoredAttempt, StoredFollowUp, StoredRun
from followup_cli.vocabulary import Service, Status


@dataclass(frozen=True)
class AttemptStory:
    attempt: StoredAttempt
    # The service it went to, from the follow-up's device token. None when the token is
    # no service's, or for a test-send attempt (its --to may have named another device).
    service: Service | None


@dataclass(frozen=True)
class Story:
    follow_up: StoredFollowUp  # its device_token emptied: see `token`
    now: datetime
    token: str  # masked, as the logs show it
    service: Service | None  # the device token's push service, when it is one's
    message_at: datetime | None  # the in-app message's timestamp
    attempts: list[AttemptStory]
    runs: list[StoredRun]  # the recorded runs among the attempts' run ids, oldest first

    @property
    def lateness(self) -> timedelta | None:
        """How late it went out (sent), or how late it is already (scheduled, overdue)."""
        f = self.follow_up
        if f.scheduled_for is None:
            return None
        if f.status == Status.SENT and f.sent_at is not None:
            return f.sent_at - f.scheduled_for
        if f.status == Status.SCHEDULED and self.now > f.scheduled_for:
            return self.now - f.scheduled_for
        return None

    @property
    def claimed_now(self) -> bool:
        """A run holds its lease right now (an expired one is a dead run's)."""
        f = self.follow_up
        return (
            f.claimed_by is not None
            and f.claim_expires_at is not None
            and f.claim_expires_at > self.now
        )

    @property
    def unrecorded_runs(self) -> list[str]:
        """Run ids of attempts without a follow_up_runs row: still going, or died."""
        recorded = {r.id for r in self.runs}
        seen: list[str] = []
        for a in self.attempts:
            run_id = a.attempt.run_id
            if run_id and run_id not in recorded and run_id not in seen:
                seen.append(run_id)
        return seen


def gather(db: Database, follow_up_id: str) -> Story:
    """The story of one follow-up; NotFound when there is none with that id."""
    with db.read_only() as repo:
        found = repo.stored_follow_up(follow_up_id)
        if found is None:
            raise NotFound(f"no follow-up with id {follow_up_id}")
        stored_attempts = repo.stored_attempts(follow_up_id)
        message_at = repo.message_time(follow_up_id)
        runs = repo.stored_runs({a.run_id for a in stored_attempts if a.run_id})
    token = normalize_token(found.device_token)
    service = token_service(token) if token else None
    return Story(
        # The whole token stays here: what leaves this module is only its masked form.
        follow_up=replace(found, device_token=None),
        now=utcnow(),
        token=mask_token(token),
        service=service,
        message_at=message_at,
        attempts=[
            AttemptStory(attempt=a, service=None if a.is_test else service) for a in stored_attempts
        ],
        runs=runs,
    )
