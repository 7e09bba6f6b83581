"""cleanup: purge (or archive) old sent and cancelled follow-ups, in short batches.

Never touches failed or scheduled follow-ups, and never follow_up_messages: those are
the parents' conversation history. Each batch is its own short transaction, and rows the
app holds locked are skipped, so the app's writes never wait long behind a cleanup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.vocabulary import Status


@dataclass
class CleanupReport:
    cutoff: datetime
    sent: int = 0
    cancelled: int = 0
    runs: int = 0
    archived: bool = False
    dry_run: bool = False

    @property
    def total(self) -> int:
        return self.sent + self.cancelled


def count(db: Database, older_than: timedelta) -> CleanupReport:
    """What a cleanup would remove (--dry-run), without changing anything."""
    cutoff = utcnow() - older_than
    with db.transaction() as repo:
        sent, cancelled = repo.count_purgeable(cutoff)
    return CleanupReport(cutoff=cutoff, sent=sent, cancelled=cancelled, dry_run=True)


def cleanup(
    db: Database,
    older_than: timedelta,
    *,
    archive: bool = False,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> CleanupReport:
    cutoff = utcnow() - older_than
    report = CleanupReport(cutoff=cutoff, archived=archive)
    row_data = None
    if archive:
        # The whole row goes to the archive too, the app's columns this tool does not know
        # included; on SQLite that means its columns are read now, once for every batch.
        with db.transaction() as repo:
            row_data = repo.whole_row_json()
    for status in (Status.SENT, Status.CANCELLED):
        while True:
            with db.transaction() as repo:
                ids = repo.purgeable_batch(cutoff, status, batch_size)
                if not ids:
                    break
                if row_data is not None:
                    repo.archive_requests(ids, utcnow(), row_data)
                removed = repo.delete_requests(ids)
            if status == Status.SENT:
                report.sent += removed
            else:
                report.cancelled += removed
            if progress is not None:
                progress(removed)
    with db.transaction() as repo:
        report.runs = repo.delete_runs_before(cutoff)
    return report
