"""retry-failed: put failed follow-ups back in the queue for the next send-due, and release
held ones.

A follow-up that failed because APNs rejected its device token is only requeued when the
app has stored a new token since, or with in_app_only (delivered as the in-app message,
without a push): pushing to the same dead token again would only fail again.

A follow-up the database refused to record (failed or held with reason
database_rejected) whose push APNs had already accepted is requeued in-app only: the
parent has had the push, what is missing is the in-app message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from followup_cli.db import Database
from followup_cli.push.protocol import DEVICE_REASONS
from followup_cli.repository import FailedFollowUp
from followup_cli.vocabulary import FailureReason


@dataclass
class RequeueReport:
    requeued: list[FailedFollowUp] = field(default_factory=list)
    held_back: list[FailedFollowUp] = field(default_factory=list)
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
        for f in repo.find_failed(ids, failed_since, reason):
            dead_token = f.reason in DEVICE_REASONS and not f.token_changed
            if dead_token and not in_app_only:
                report.held_back.append(f)
            else:
                report.requeued.append(f)
        refused = [f.id for f in report.requeued if f.reason == FailureReason.DATABASE_REJECTED]
        report.already_pushed = repo.pushed_ids(refused)
        if not dry_run:
            again = [f.id for f in report.requeued if f.id not in report.already_pushed]
            repo.requeue(again, in_app_only)
            repo.requeue(sorted(report.already_pushed), in_app_only=True)
    return report
