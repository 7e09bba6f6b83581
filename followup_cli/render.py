"""Everything the commands print. Plain text for cron and pipes; rich where it helps."""

from __future__ import annotations

from collections.abc import Sequence

from followup_cli.delivery import STOP_CONFIG, STOP_OUTAGE, RunReport
from followup_cli.requeue import RequeueReport


def send_due_summary(report: RunReport) -> None:
    pushed = f"{report.pushed} pushed, {report.in_app_only} in-app only"
    print(
        f"send-due: claimed {report.claimed}, sent {report.sent} ({pushed}), "
        f"failed {report.failed}, skipped {report.skipped} | push backend: "
        f"{report.push_backend} | {report.elapsed_seconds:.2f}s"
    )


def stop_line(report: RunReport) -> str:
    if report.stop == STOP_CONFIG:
        return (
            f"APNs rejected our configuration ({report.stop_reason}); run stopped, "
            f"{report.released} follow-up(s) left scheduled"
        )
    if report.stop == STOP_OUTAGE:
        return (
            f"APNs keeps failing ({report.stop_reason}); run stopped early, "
            f"{report.released} follow-up(s) left scheduled for the next run"
        )
    return f"run ended: {report.outcome}"


def requeue_report(report: RequeueReport, asked_ids: Sequence[str]) -> None:
    verb = "Would requeue" if report.dry_run else "Requeued"
    how = " (in-app only, no push)" if report.in_app_only else ""
    print(f"{verb} {len(report.requeued)} failed follow-up(s){how}.")
    for f in report.requeued:
        print(f"  {f.id}  was: {f.reason or '-'}")
    if report.held_back:
        print(
            f"Held back {len(report.held_back)}: APNs rejected their device token and the app "
            "has not stored a new one; use --in-app-only to deliver them in the app."
        )
        for f in report.held_back:
            print(f"  {f.id}  was: {f.reason}")
    seen = {f.id for f in report.requeued} | {f.id for f in report.held_back}
    for missing in (i for i in asked_ids if i not in seen):
        print(f"  {missing}  is not a failed follow-up (unknown, or not failed)")
