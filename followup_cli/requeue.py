"""retry-failed: put failed follow-ups back in the queue for the next send-due, and release
held ones.

A follow-up that failed because APNs rejected its device token is only requeued when the
app has stored a new token since, or with in_app_only (delivered as the in-app message,
without a push): pushing to the same dead token again would only fail again.

A follow-up the database refused to record (failed or held with reason
database_rejected) whose push APNs had already accepted is requeued in-app only: the
parent has had the push, what is missing is the in-app message.

A follow-up that failed on its own row (no text, no recipient) fails again at once: it
is left alone unless asked for by --reason or --id, once the app has fixed the row.
Reasons match whatever their case (APNs writes Unregistered, FCM UNREGISTERED).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from followup_cli.db import Database
from followup_cli.push.protocol import DEVICE_REASONS
from followup_cli.repository import FailedFollowUp
from followup_cli.vocabulary import FailureReason

# Failed on the row itself: requeued only when asked for by reason or id.
ROW_REASONS = frozenset({FailureReason.EMPTY_MESSAGE, FailureReason.MISSING_RECIPIENT})


@dataclass
class RequeueReport:
    requeued: list[FailedFollowUp] = field(default_factory=list)
    held_back: list[FailedFollowUp] = field(default_factory=list)
    # Failed on the row itself, not asked for by reason or id: left as they are.
    left_alone: list[FailedFollowUp] = field(default_factory=list)
    # Asked for by id, but unknown or neither failed nor held.
    unknown_ids: list[str] = field(default_factory=list)
    # With nothing found: the failed and held follow-ups on record, by reason.
    on_record: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    in_app_only: bool = False
    # Refused by the database after APNs accepted their push: requeued in-app only.
    already_pushed: set[str] = field(default_factory=set)


def retry_failed(
    db: Database,
    *,
    ids: Sequence[str] = (),
    failed_since: datetime | None = None,
    reason: str | None = None,
    in_app_only: bool = False,
    dry_run: bool = False,
) -> RequeueReport:
    report = RequeueReport(dry_run=dry_run, in_app_only=in_app_only)
    with db.transaction() as repo:
        found = repo.find_failed(ids, failed_since, reason)
        for f in found:
            dead_token = f.reason in DEVICE_REASONS and not f.token_changed
            if f.reason in ROW_REASONS and reason is None and not ids:
                report.left_alone.append(f)
            elif dead_token and not in_app_only:
                report.held_back.append(f)
            else:
                report.requeued.append(f)
        seen = {f.id for f in found}
        report.unknown_ids = [i for i in ids if i not in seen]
        if not found:
            report.on_record = repo.failure_reasons()
        refused = [f.id for f in report.requeued if f.reason == FailureReason.DATABASE_REJECTED]
        report.already_pushed = repo.pushed_ids(refused)
        if not dry_run:
            again = [f.id for f in report.requeued if f.id not in report.already_pushed]
            repo.requeue(again, in_app_only)
            repo.requeue(sorted(report.already_pushed), in_app_only=True)
    return report
