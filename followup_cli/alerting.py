"""Alerts with a lifecycle: each condition fires once, is reminded while it lasts, and
is resolved once.

A run reports what it found as `Finding`s, one per condition it has evidence about,
each named by its fingerprint (docs/operations.md lists them): present (the condition
holds) or gone (the run saw it not hold). A condition the run has no evidence about
(APNs when nothing went to APNs) is simply not among the findings and keeps its state.
Events that are not conditions (follow-ups that failed for good: new ids every time)
are `notices`, posted whenever a run has them.

For each finding, the alert's state in the database decides (one row per fingerprint in
followups_alert_state, shared by every run and host):

    not firing + present  -> fire: posted now
    firing     + present  -> nothing, or a reminder once the repeat interval has passed
                             since its last post ("still firing, for 5h 2m")
    firing     + gone     -> resolve: posted once ("resolved after 1h 5m")
    not firing + gone     -> nothing

A run's fires, reminders, resolutions and notices go out as one post. The states are
read under a row lock and written in one transaction, and the post is made inside it:
an overlapping run waits for the lock, then finds the state already changed and posts
nothing; a post the webhook did not take rolls the transaction back, so the next run
posts it again. Without its state (the table unreadable, say) a run posts what is
present and its notices, never nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from followup_cli.alerts import Alerter
from followup_cli.clock import utcnow
from followup_cli.db import Database, describe_error
from followup_cli.repository import AlertState

log = logging.getLogger("followups.alerts")


class Fingerprint(StrEnum):
    """Each alert's kind and scope: its name in the post and in the state table."""

    APNS_CONFIGURATION = "apns-configuration"
    APNS_OUTAGE = "apns-outage"
    FCM_CONFIGURATION = "fcm-configuration"
    FCM_OUTAGE = "fcm-outage"
    DATABASE_REFUSAL = "database-refusal"
    SUCCESS_RATE = "success-rate"


@dataclass(frozen=True)
class Finding:
    """What a run saw of one condition. `text`: while present, what is wrong and what to
    do; when gone, how it ended. Ids, names, reasons and counts only."""

    fingerprint: str
    present: bool
    text: str


class Step(StrEnum):
    FIRED = "FIRING"
    REMINDED = "STILL FIRING"
    RESOLVED = "RESOLVED"


@dataclass(frozen=True)
class Transition:
    step: Step
    finding: Finding
    lasted: timedelta | None = None  # reminders and resolutions: since it started


def decide(
    state: AlertState, finding: Finding, now: datetime, repeat: timedelta
) -> tuple[AlertState, Transition] | None:
    """The alert's next state and what to post, or None when nothing changes."""
    since = state.changed_at or now
    if finding.present and not state.firing:
        return (
            replace(state, firing=True, changed_at=now, last_alert_at=now),
            Transition(Step.FIRED, finding),
        )
    if finding.present:
        if state.last_alert_at is not None and now - state.last_alert_at < repeat:
            return None
        return (
            replace(state, last_alert_at=now),
            Transition(Step.REMINDED, finding, lasted=now - since),
        )
    if state.firing:
        return (
            replace(state, firing=False, changed_at=now),
            Transition(Step.RESOLVED, finding, lasted=now - since),
        )
    return None


class _NotPosted(Exception):
    """The alerter did not take the post: the transaction is rolled back."""


def raise_alerts(
    db: Database,
    alerter: Alerter,
    findings: list[Finding],
    notices: list[str],
    repeat: timedelta,
) -> str | None:
    """Apply a run's findings to the alerts' states and post what changed, with the
    notices, as one post. Returns the post (None when there was nothing to say)."""
    if not findings and not notices:
        return None
    now = utcnow()
    posted: str | None = None
    try:
        with db.transaction() as repo:
            transitions: list[Transition] = []
            repo.wait_for_alert_locks()
            # One lock order for every run: overlapping runs never deadlock.
            for finding in sorted(findings, key=lambda f: f.fingerprint):
                state = repo.lock_alert(finding.fingerprint, now)
                decided = decide(state, finding, now, repeat)
                if decided is not None:
                    repo.save_alert(decided[0])
                    transitions.append(decided[1])
            post = compose(transitions, notices)
            if post is not None:
                if not alerter.alert(post):
                    raise _NotPosted
                posted = post
        return posted
    except _NotPosted:
        log.warning("the alert was not delivered: the next run posts it again")
        return None
    except Exception as exc:  # the state is unavailable: post without it, never nothing
        if posted is not None:  # posted, but its state was not saved
            log.warning("alert state not saved (%s)", describe_error(exc))
            return posted
        log.warning(
            "alert state unavailable (%s): posting this run's alerts without it",
            describe_error(exc),
        )
        post = compose([Transition(Step.FIRED, f) for f in findings if f.present], notices)
        if post is not None:
            alerter.alert(post)
        return post


def compose(transitions: list[Transition], notices: list[str]) -> str | None:
    """One post: a line per transition (fires first, then reminders, then resolutions),
    then the notices."""
    order = {Step.FIRED: 0, Step.REMINDED: 1, Step.RESOLVED: 2}
    lines = [
        f"followups [{_heading(t)}] {t.finding.text}"
        for t in sorted(transitions, key=lambda t: (order[t.step], t.finding.fingerprint))
    ]
    lines += [f"followups: {notice}" for notice in notices]
    return "\n".join(lines) if lines else None


def _heading(transition: Transition) -> str:
    name = f"{transition.step} {transition.finding.fingerprint}"
    if transition.lasted is None:
        return name
    lasted = format_lasting(transition.lasted)
    return f"{name}, for {lasted}" if transition.step == Step.REMINDED else f"{name} after {lasted}"


def format_lasting(value: timedelta) -> str:
    """A duration as people read it in an alert: 45s, 12m, 4h 5m, 2d 3h."""
    seconds = max(0, int(value.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"
