"""The run's texts: what it found for the alerts (alerting.py) and its notices, and the
one line the command prints when it did not complete. Names, ids, reasons and counts
only: never message text, child data or a whole device token."""

from __future__ import annotations

from followup_cli.alerting import Finding, Fingerprint
from followup_cli.push.protocol import config_hint
from followup_cli.report import SERVICE_LABELS, RunReport, ServiceStop
from followup_cli.vocabulary import FailureReason, Refusal, RunEnd, Service

REFUSED_AS = {
    Refusal.FAILED: "marked failed",
    Refusal.HELD: "held",
    Refusal.UNRECORDED: "not recorded, back in the queue after its lease",
}


def run_findings(report: RunReport) -> list[Finding]:
    """What the run saw of each alert condition it has evidence about (alerting.py):
    each push service's configuration and outage, and the database's refusals."""
    stops = {stop.service: stop for stop in report.stops}
    findings: list[Finding] = []
    for health in report.health:
        stop = stops.get(health.service)
        label = SERVICE_LABELS.get(health.service, health.service)
        configuration, outage = _SERVICE_FINGERPRINTS[health.service]
        if stop is not None and stop.kind == RunEnd.CONFIG_ERROR:
            findings.append(Finding(configuration, True, stop_alert(stop, report)))
        elif health.judged:
            findings.append(Finding(configuration, False, f"{label} accepts our configuration."))
        if stop is not None and stop.kind == RunEnd.OUTAGE:
            findings.append(Finding(outage, True, stop_alert(stop, report)))
        elif health.answered:
            findings.append(Finding(outage, False, f"{label} answers again."))
    if report.refused or report.database_stop is not None:
        findings.append(Finding(Fingerprint.DATABASE_REFUSAL, True, _refusal_alert(report)))
    elif report.sent or report.failed or report.held:
        findings.append(
            Finding(Fingerprint.DATABASE_REFUSAL, False, "the database records deliveries.")
        )
    return findings


def run_notices(report: RunReport) -> list[str]:
    """The run's events that are not conditions: the follow-ups it marked failed for
    good (each id is marked failed by one run only, so each is reported once)."""
    if not report.failures:
        return []
    shown = ", ".join(f"{fid} ({reason})" for fid, reason in report.failures[:20])
    more = len(report.failures) - 20
    return [
        f"{len(report.failures)} follow-up(s) could not be delivered "
        f"and are marked failed: {shown}{f' and {more} more' if more > 0 else ''}. "
        "See docs/reliability.md; requeue with `followups retry-failed`."
    ]


_SERVICE_FINGERPRINTS: dict[str, tuple[Fingerprint, Fingerprint]] = {
    Service.APNS: (Fingerprint.APNS_CONFIGURATION, Fingerprint.APNS_OUTAGE),
    Service.FCM: (Fingerprint.FCM_CONFIGURATION, Fingerprint.FCM_OUTAGE),
}


def _refusal_alert(report: RunReport) -> str:
    """The rows the database refused (with the refusal that stopped the run's claims, if
    one did): ids, and the database's constraint, table or function names only."""
    refusing = report.database_stop
    refused = ""
    if report.refused:
        shown = ", ".join(
            f"{r.follow_up_id} {REFUSED_AS[r.outcome]} ({r.detail})" for r in report.refused[:20]
        )
        more = len(report.refused) - 20
        refused = (
            f"The database refused to record {len(report.refused)} delivered follow-up(s): "
            f"{shown}{f' and {more} more' if more > 0 else ''}. Each was pushed at most once "
            "and is not pushed again automatically. "
        )
    retry = f"`followups retry-failed --reason {FailureReason.DATABASE_REJECTED}`"
    if refusing is not None:
        return (
            f"{refused}send-due stopped claiming: the database refuses every row "
            f"({refusing.cause}). Fix: {refusing.fix or 'see `followups db check --role ROLE`'}"
            f"; then {retry}."
        )
    return (
        f"{refused}Fix the cause (`followups db check --role ROLE` lists what the schema "
        f"and the role's grants and policies refuse), then {retry}."
    )


def stop_alert(stop: ServiceStop, report: RunReport) -> str:
    """One push service's stop, named, with what the operator checks."""
    went_on = report.services_that_went_on
    others = f" {' and '.join(went_on)} deliveries went on." if went_on else ""
    if stop.kind == RunEnd.CONFIG_ERROR:
        return (
            f"send-due stopped: {stop.label} rejected our configuration ({stop.reason}). "
            f"Nothing was marked failed; the follow-ups stay scheduled.{others} "
            f"{config_hint(stop.reason, stop.service)}"
        )
    return (
        f"send-due stopped early: {stop.label} keeps failing ({stop.reason}). The "
        f"remaining follow-ups stay scheduled for the next run.{others}"
    )


# -- the command's line ------------------------------------------------------------------


def stop_line(report: RunReport) -> str:
    """The `Error:` line of a run that did not complete: why, and what to do."""
    if report.signal is not None:
        name = {2: "SIGINT", 15: "SIGTERM"}.get(report.signal, f"signal {report.signal}")
        return (
            f"stopped by {name}: the pushes in flight were recorded, the other claimed "
            "follow-ups were handed back for the next run"
        )
    clauses = [_stop_clause(stop, report) for stop in report.stops]
    if report.database_stop is not None:
        clauses.insert(0, _database_clause(report))
    return " ".join(clauses) if clauses else f"run ended: {report.outcome}"


def _database_clause(report: RunReport) -> str:
    """The refusal every row meets, and its fix, in one sentence: names only."""
    stop = report.database_stop
    assert stop is not None
    aside = sum(1 for r in report.refused if r.outcome != Refusal.UNRECORDED)
    back = len(report.refused) - aside
    unrecorded = f", {back} back in the queue after their lease" if back else ""
    fix = f" Fix: {stop.fix}; then" if stop.fix else " Fix the cause, then"
    return (
        f"the database refused to record deliveries: {stop.cause}; run stopped claiming, "
        f"{aside} follow-up(s) set aside (failed or held as database_rejected, not pushed "
        f"again){unrecorded}.{fix} `followups retry-failed --reason database_rejected`."
    )


def _stop_clause(stop: ServiceStop, report: RunReport) -> str:
    went_on = report.services_that_went_on
    others = f"; {' and '.join(went_on)} deliveries went on" if went_on else ""
    if stop.kind == RunEnd.CONFIG_ERROR:
        return (
            f"{stop.label} rejected our configuration ({stop.reason}); run stopped, nothing "
            f"marked failed, the remaining follow-ups stay scheduled{others}. "
            f"{config_hint(stop.reason, stop.service)}"
        )
    return (
        f"{stop.label} keeps failing ({stop.reason}); run stopped early, the remaining "
        f"follow-ups stay scheduled for the next run{others}."
    )
