"""The words this tool stores and passes between its layers, one enum each.

They are `StrEnum`s: each member is its string, so the values written to the database,
logs and JSON are exactly the words below.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """follow_up_requests.status. The app writes scheduled and cancelled; this tool moves a
    scheduled row to sent or failed (and back to scheduled on retry-failed)."""

    SCHEDULED = "scheduled"
    SENT = "sent"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Outcome(StrEnum):
    """What became of one push attempt (follow_up_attempts.outcome), and of a follow-up's
    whole set of attempts (PushOutcome.kind)."""

    SENT = "sent"
    TRANSIENT = "transient"  # worth retrying later: network, 429, 5xx, unknown answers
    PERMANENT = "permanent"  # this device will never take it: bad or unregistered token
    CONFIG = "config"  # our key, team or topic is wrong: stop, fail nothing
    UNSENT = "unsent"  # never sent: the run had stopped (configuration or outage) first
    SKIPPED = "skipped"  # not pushed (invalid token, service off): delivered in-app only
    # PushOutcome.kind only, never stored: the app cancelled the follow-up, and the cancel
    # gate said so before the next request (first attempt, retry or resend).
    WITHDRAWN = "withdrawn"


class Service(StrEnum):
    """The push services, as FOLLOWUPS_PUSH names them."""

    APNS = "apns"
    FCM = "fcm"
