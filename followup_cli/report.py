"""What a send-due run did. Light on imports: the idle run prints it without loading the
database layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from followup_cli.clock import utcnow
from followup_cli.vocabulary import Refusal, RunEnd, Service


@dataclass(frozen=True)
class Refused:
    follow_up_id: str
    outcome: Refusal
    detail: str  # the database's reason: constraint, table, trigger function; no values


@dataclass(frozen=True)
class DatabaseStop:
    """A refusal that every row meets, seen while finishing: names only, no values."""

    cause: str  # e.g. permission denied for table X in function F (SQLSTATE 42501)
    fix: str | None  # the grant, policy or function to change


# The push services as people read them (FOLLOWUPS_PUSH names them apns and fcm).
SERVICE_LABELS: dict[str, str] = {Service.APNS: "APNs", Service.FCM: "FCM"}


@dataclass(frozen=True)
class ServiceStop:
    """Why pushes to one service no longer start in this run."""

    service: str  # apns | fcm
    kind: RunEnd  # CONFIG_ERROR or OUTAGE
    reason: str | None

    @property
    def label(self) -> str:
        return SERVICE_LABELS.get(self.service, self.service)


@dataclass(frozen=True)
class ServiceHealth:
    """What a run learned about a push service it pushed to, for the alerts' resolve rule:
    `answered` (some request got an answer: the service is reachable), `judged` (some
    notification was judged on its own merits, accepted or refused for its token: our
    configuration works). A service this run never reached says neither."""

    service: str
    answered: bool
    judged: bool


@dataclass
class RunReport:
    run_id: str
    push_backend: str
    started_at: datetime
    finished_at: datetime | None = None
    claimed: int = 0
    sent: int = 0
    pushed: int = 0
    in_app_only: int = 0
    failed: int = 0
    held: int = 0
    # Left scheduled after transient failures, to be tried again by a later run.
    retrying: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    # The first stop; `stops` has one per push service that stopped.
    stop: RunEnd | None = None
    stop_reason: str | None = None
    stops: list[ServiceStop] = field(default_factory=list)
    # The signal that stopped the run (SIGTERM 15, SIGINT 2), if one did.
    signal: int | None = None
    # The first refusal of the database that every row meets; the run stopped claiming.
    database_stop: DatabaseStop | None = None
    # One per push service of the run's pusher (none for the log backend).
    health: list[ServiceHealth] = field(default_factory=list)

    @property
    def services_that_went_on(self) -> list[str]:
        """The labels of this run's push services that did not stop."""
        stopped = {s.service for s in self.stops}
        return [
            SERVICE_LABELS[s]
            for s in self.push_backend.split(",")
            if s in SERVICE_LABELS and s not in stopped
        ]

    def note_stop(self, stop: ServiceStop) -> None:
        if any(s.service == stop.service for s in self.stops):
            return
        self.stops.append(stop)
        if self.stop is None:
            self.stop, self.stop_reason = stop.kind, stop.reason

    def note_database_stop(self, stop: DatabaseStop) -> None:
        if self.database_stop is not None:
            return
        self.database_stop = stop
        if self.stop is None:
            self.stop, self.stop_reason = RunEnd.DATABASE_REFUSED, stop.cause

    @property
    def skipped(self) -> int:
        """Claimed but neither sent, failed, held nor left to be retried by this run:
        cancelled meanwhile, taken over by another run, or given back for the next run."""
        return self.claimed - self.sent - self.failed - self.held - self.retrying

    @property
    def elapsed_seconds(self) -> float:
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    @property
    def outcome(self) -> RunEnd:
        if self.signal is not None:
            return RunEnd.INTERRUPTED
        return self.stop or RunEnd.COMPLETED

    @property
    def exit_code(self) -> int:
        """0 completed; 1 stopped (outage, configuration); 128 + the signal when a signal
        stopped it (143 for SIGTERM, 130 for SIGINT), as shells report it."""
        if self.signal is not None:
            return 128 + self.signal
        return 0 if self.stop is None else 1
