"""Everything the commands print. Plain text for cron and pipes; rich where it helps."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from followup_cli.report import SERVICE_LABELS, RunReport
from followup_cli.vocabulary import Outcome, Service, Status

if TYPE_CHECKING:
    from followup_cli.cleanup import CleanupReport
    from followup_cli.monitoring import CheckRules, Stats
    from followup_cli.requeue import RequeueReport
    from followup_cli.schemacheck import Finding
    from followup_cli.security import GrantScript
    from followup_cli.story import Story
    from followup_cli.testsend import TestSendResult


def is_terminal() -> bool:
    return sys.stdout.isatty()


def send_due_summary(report: RunReport) -> None:
    pushed = f"{report.pushed} pushed, {report.in_app_only} in-app only"
    held = f", held {report.held}" if report.held else ""
    retrying = f", retrying {report.retrying}" if report.retrying else ""
    print(
        f"send-due: claimed {report.claimed}, sent {report.sent} ({pushed}), "
        f"failed {report.failed}{held}{retrying}, skipped {report.skipped} | push backend: "
        f"{report.push_backend} | {report.elapsed_seconds:.2f}s"
    )


def stop_line(report: RunReport) -> str:
    from followup_cli.delivery.texts import stop_line  # not on the idle run's path

    return stop_line(report)


def requeue_report(report: RequeueReport) -> None:
    verb = "Would requeue" if report.dry_run else "Requeued"
    how = " (in-app only, no push)" if report.in_app_only else ""
    what = "failed or held" if any(f.held for f in report.requeued) else "failed"
    print(f"{verb} {len(report.requeued)} {what} follow-up(s){how}.")
    for f in report.requeued:
        state = "held" if f.held else "was"
        detail = f" ({f.detail})" if f.detail else ""
        again = (
            "; already pushed, so in-app only"
            if f.id in report.already_pushed and not report.in_app_only
            else ""
        )
        print(f"  {f.id}  {state}: {f.reason or '-'}{detail}{again}")
    if report.held_back:
        print(
            f"Held back {len(report.held_back)}: the push service rejected their device token "
            "and the app has not stored a new one; use --in-app-only to deliver them in the app."
        )
        for f in report.held_back:
            print(f"  {f.id}  was: {f.reason}")
    if report.left_alone:
        reasons = ", ".join(sorted({str(f.reason) for f in report.left_alone}))
        print(
            f"Left alone {len(report.left_alone)} ({reasons}): they failed on the row itself "
            "and would fail again; once the app has fixed them, name them with --reason or --id."
        )
    for missing in report.unknown_ids:
        print(f"  {missing}  is not a failed follow-up (unknown, or neither failed nor held)")
    if not report.requeued and not report.held_back and not report.left_alone:
        on_record = ", ".join(f"{r} ({n})" for r, n in sorted(report.on_record.items()))
        print(
            "Nothing matched"
            + (
                f"; failed or held on record: {on_record}."
                if on_record
                else ": nothing is failed or held."
            )
        )


# -- stats ------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    if value < 172800:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"


def _stats_rows(stats: Stats, rules: CheckRules) -> list[tuple[str, str]]:
    rate = stats.success_rate
    p50, p95, worst = stats.lag if stats.lag else (None, None, None)
    run = stats.last_run
    if run is None:
        last = "never"
    else:
        took = (
            f", took {_seconds((run.finished_at - run.started_at).total_seconds())}"
            if run.finished_at
            else ""
        )
        last = (
            f"{run.started_at:%Y-%m-%d %H:%M:%S} UTC ({_seconds(stats.last_run_age_seconds)} ago"
            f"{took}; claimed {run.claimed}, sent {run.sent}, failed {run.failed}; "
            f"{run.outcome})"
        )
    rows = [
        ("window", f"last {_seconds(stats.window.total_seconds())}"),
        ("sent", f"{stats.sent} ({stats.pushed} pushed, {stats.in_app_only} in-app only)"),
    ]
    rows += [
        (f"  in-app only: {reason}", str(n))
        for reason, n in sorted(stats.no_push_by_reason.items())
    ]
    rows += [("failed", str(stats.failed))]
    rows += [(f"  {reason}", str(n)) for reason, n in sorted(stats.failures_by_reason.items())]
    rows += [
        ("cancelled (due in window)", str(stats.cancelled)),
        ("success rate", "n/a (nothing attempted)" if rate is None else f"{rate:.1f}%"),
        ("delivery lag p50 / p95 / max", f"{_seconds(p50)} / {_seconds(p95)} / {_seconds(worst)}"),
        (
            "backlog: overdue now",
            f"{stats.overdue} (oldest {_seconds(stats.oldest_overdue_seconds)})"
            if stats.overdue
            else "0",
        ),
        ("last send-due run", last),
        ("cron alive", "yes" if stats.cron_alive(rules) else "NO"),
    ]
    if stats.retrying:
        failing = stats.oldest_retrying_since
        rows.insert(
            -2,
            (
                "  of which retrying (transient failures)",
                f"{stats.retrying} (failing since {failing:%Y-%m-%d %H:%M} UTC)"
                if failing
                else str(stats.retrying),
            ),
        )
    if stats.held:
        since = stats.oldest_held_since
        rows.insert(
            -2,
            (
                "held: refused by the database",
                f"{stats.held} (oldest since {since:%Y-%m-%d %H:%M} UTC)"
                if since
                else str(stats.held),
            ),
        )
    if stats.hidden:
        rows.append(("hidden by row level security", ", ".join(stats.hidden)))
    rows += [
        (
            "alerts firing" if i == 0 else "",
            f"{a.fingerprint} since {a.changed_at:%Y-%m-%d %H:%M} UTC"
            if a.changed_at
            else a.fingerprint,
        )
        for i, a in enumerate(stats.alerts_firing)
    ]
    return rows


def _bars(per_hour: Sequence[tuple[str, int]], width: int = 40) -> list[str]:
    if not per_hour:
        return []
    top = max(n for _, n in per_hour) or 1
    return [f"{hour}  {'#' * max(1, round(width * n / top)):<{width}} {n}" for hour, n in per_hour]


def stats_table(stats: Stats, rules: CheckRules) -> None:
    rows = _stats_rows(stats, rules)
    bars = _bars(stats.sent_per_hour)
    if not is_terminal():
        label_width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{label_width}}  {value}")
        if bars:
            print("sends per hour (UTC):")
            for line in bars:
                print(f"  {line}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="follow-ups", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console = Console()
    console.print(table)
    if bars:
        console.print("[bold]sends per hour (UTC)[/bold]")
        for line in bars:
            console.print(f"  {line}", highlight=False)


def stats_json(stats: Stats, rules: CheckRules, problems: list[str] | None) -> None:
    data = stats.as_json(rules)
    if problems is not None:
        data["healthy"] = not problems
        data["problems"] = problems
    print(json.dumps(data, indent=2, sort_keys=True))


def check_result(problems: Sequence[str]) -> None:
    if not problems:
        print("check: OK")
        return
    for problem in problems:
        print(f"check: FAIL {problem}")


# -- cleanup ----------------------------------------------------------------------------


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with the rate on a terminal; nothing under cron."""
    if not is_terminal() or total == 0:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            bar.update(task, advance=n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f}/s" if speed else "")

        yield advance


def cleanup_report(report: CleanupReport) -> None:
    cutoff = f"{report.cutoff:%Y-%m-%d %H:%M} UTC"
    if report.dry_run:
        print(
            f"Would remove {report.total} follow-up(s) older than {cutoff}: "
            f"{report.sent} sent, {report.cancelled} cancelled. Failed and scheduled ones "
            "and all follow_up_messages are kept."
        )
        return
    verb = "Archived" if report.archived else "Deleted"
    print(
        f"{verb} {report.total} follow-up(s) older than {cutoff}: {report.sent} sent, "
        f"{report.cancelled} cancelled; removed {report.runs} old run record(s). "
        "Failed and scheduled ones and all follow_up_messages are kept."
    )


# -- test-send --------------------------------------------------------------------------


def test_send_request(result: TestSendResult, backend: str, dry_run: bool) -> None:
    req = result.request
    what = "would send" if dry_run else "sending"
    service = SERVICE_LABELS.get(req.service, req.service)
    print(f"test-send {req.follow_up_id}: {what} to {service} via push backend {backend!r}")
    print(f"device token: {req.device_token}")
    print("headers:")
    for name, value in sorted(result.headers.items()):
        print(f"  {name}: {value}")
    print("payload:")
    print(json.dumps(result.payload, indent=2, ensure_ascii=False, sort_keys=True))


def test_send_outcome(result: TestSendResult) -> None:
    outcome = result.outcome
    if outcome is None:
        return
    # APNs answers with an apns-id, FCM with the message's name.
    id_label = "message" if result.request.service == Service.FCM else "apns-id"
    for a in outcome.attempts:
        status = a.status_code if a.status_code is not None else "-"
        answer = f"reason {a.reason}" if a.reason else "accepted"
        print(f"attempt {a.attempt}: status {status}, {answer}, {id_label} {a.provider_id or '-'}")
    if outcome.kind == Outcome.SENT:
        tail = "; follow-up marked sent and message written" if result.marked_sent else ""
        print(f"result: sent{tail}")
    else:
        print(f"result: {outcome.kind} ({outcome.reason}); the follow-up was not changed")


# -- db check ---------------------------------------------------------------------------


def schema_findings(findings: Sequence[Finding]) -> None:
    """One line per finding: its level, what is wrong, and the SQL that fixes it."""
    for f in findings:
        fix = f" Fix: {f.fix}" if f.fix else ""
        print(f"{f.level}: {f.message}.{fix}")


def schema_check_summary(findings: Sequence[Finding]) -> None:
    if not findings:
        print("db check: OK, nothing in the app's schema would make delivery fail")
        return
    errors = sum(1 for f in findings if f.level == "error")
    print(f"db check: {errors} error(s), {len(findings) - errors} warning(s)")


def grant_script(script: GrantScript) -> None:
    """The statements on stdout, ready for psql."""
    for statement in script.statements:
        print(statement)


# -- show -------------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _label(service: str | None) -> str | None:
    return None if service is None else SERVICE_LABELS.get(service, service)


def show_story(story: Story) -> None:
    """One follow-up's story as aligned lines: its state, then its attempts and runs."""
    f = story.follow_up
    late = story.lateness
    lines: list[tuple[str, str]] = [
        ("status", f.status),
        ("scheduled for", _when(f.scheduled_for)),
    ]
    if late is not None:
        what = "late" if f.status == Status.SENT else "overdue"
        lines.append((what, _seconds(late.total_seconds())))
    if f.sent_at is not None:
        lines.append(("sent at", _when(f.sent_at)))
    if f.failure_reason is not None:
        detail = f" ({f.failure_detail})" if f.failure_detail else ""
        lines.append(("failure", f"{f.failure_reason}{detail}"))
    if f.failed_at is not None:
        lines.append(("failed at", _when(f.failed_at)))
    lines.append(("in-app message", _when(story.message_at) if story.message_at else "none"))
    lines.append(("in-app only", "yes" if f.in_app_only else "no"))
    service = _label(story.service) or "no push service's"
    lines.append(("device token", f"{story.token} ({service})" if story.token != "-" else "none"))
    lines.append(("conversation", f.conversation_id or "-"))
    lines.append(("held", f"since {_when(f.held_at)}" if f.held_at else "no"))
    if f.retry_at is not None:
        lines.append(
            (
                "retrying",
                f"next at {_when(f.retry_at)}, since {_when(f.retrying_since)}, "
                f"{f.retry_count or 0} run(s) tried it",
            )
        )
    else:
        lines.append(("retrying", "no"))
    if f.claimed_by is None:
        claim = "no"
    elif story.claimed_now:
        claim = f"by {f.claimed_by} until {_when(f.claim_expires_at)}"
    else:
        claim = (
            f"lease of {f.claimed_by} ended {_when(f.claim_expires_at)} "
            "(a run that died; the next run takes it over)"
        )
    lines.append(("claimed", claim))
    print(f"follow-up {f.id}")
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"  {name:<{width}}  {value}")
    print(f"attempts: {len(story.attempts)}")
    for a_story in story.attempts:
        a = a_story.attempt
        # APNs answers with an apns-id, FCM with the message's name.
        id_label = {Service.APNS: "apns-id", Service.FCM: "message", None: "id"}[a_story.service]
        parts = [
            _when(a.attempted_at),
            f"#{a.attempt}",
            f"{a.outcome:<9}",
            f"status {a.status_code if a.status_code is not None else '-'}",
            f"reason {a.reason or '-'}",
            _label(a_story.service) or "-",
            f"{id_label} {a.apns_id or '-'}",
            f"run {a.run_id or '-'}",
        ]
        if a.is_test:
            parts.append("(test-send)")
        print("  " + "  ".join(parts))
    print(f"runs: {len(story.runs) + len(story.unrecorded_runs)}")
    for run in story.runs:
        print(
            f"  {run.id}  host {run.host or '-'}  started {_when(run.started_at)}  "
            f"{run.outcome or '-'}"
        )
    for run_id in story.unrecorded_runs:
        print(f"  {run_id}  not recorded (still running, a test-send, or it died)")


def show_story_json(story: Story) -> None:
    """The same fields as show_story, as one JSON object (times ISO 8601, UTC)."""
    f = story.follow_up
    late = story.lateness
    data = {
        "id": f.id,
        "status": f.status,
        "scheduled_for": _iso(f.scheduled_for),
        "lateness_seconds": None if late is None else late.total_seconds(),
        "sent_at": _iso(f.sent_at),
        "failed_at": _iso(f.failed_at),
        "failure_reason": f.failure_reason,
        "failure_detail": f.failure_detail,
        "message_at": _iso(story.message_at),
        "in_app_only": f.in_app_only,
        "device_token": story.token if story.token != "-" else None,
        "service": story.service,
        "conversation_id": f.conversation_id,
        "held_at": _iso(f.held_at),
        "retry_at": _iso(f.retry_at),
        "retrying_since": _iso(f.retrying_since),
        "retry_count": f.retry_count,
        "claimed_by": f.claimed_by,
        "claim_expires_at": _iso(f.claim_expires_at),
        "claimed_now": story.claimed_now,
        "attempts": [
            {
                "attempted_at": _iso(a.attempt.attempted_at),
                "attempt": a.attempt.attempt,
                "outcome": a.attempt.outcome,
                "reason": a.attempt.reason,
                "status_code": a.attempt.status_code,
                "provider_id": a.attempt.apns_id,
                "service": a.service,
                "is_test": a.attempt.is_test,
                "run_id": a.attempt.run_id,
            }
            for a in story.attempts
        ],
        "runs": [
            {
                "id": run.id,
                "host": run.host,
                "started_at": _iso(run.started_at),
                "outcome": run.outcome,
            }
            for run in story.runs
        ],
        "unrecorded_runs": story.unrecorded_runs,
    }
    print(json.dumps(data, indent=2, sort_keys=True))
