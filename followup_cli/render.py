"""Everything the commands print. Plain text for cron and pipes; rich where it helps."""

from __future__ import annotations

from followup_cli.delivery import STOP_CONFIG, STOP_OUTAGE, RunReport


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
