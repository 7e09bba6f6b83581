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


class FailureReason(StrEnum):
    """This tool's own reasons, in follow_up_requests.failure_reason and
    follow_up_attempts.reason. The push services' reasons (BadDeviceToken, UNREGISTERED,
    …) are stored as the service gave them."""

    EMPTY_MESSAGE = "empty_message"  # nothing to say: failed, not pushed
    MISSING_RECIPIENT = "missing_recipient"  # no parent or conversation: failed
    # Not pushed, delivered in-app only: a token no service takes, or one of a service
    # FOLLOWUPS_PUSH does not turn on.
    INVALID_DEVICE_TOKEN = "invalid_device_token"
    APNS_NOT_CONFIGURED = "apns_not_configured"
    FCM_NOT_CONFIGURED = "fcm_not_configured"
    # The database refused to record the delivery (a constraint or trigger of the app's,
    # a grant or policy the runtime role lacks, an object missing).
    DATABASE_REJECTED = "database_rejected"


class RunEnd(StrEnum):
    """How a send-due run ended (follow_up_runs.outcome)."""

    COMPLETED = "completed"
    CONFIG_ERROR = "config_error"  # a push service rejected our configuration
    OUTAGE = "outage"  # a push service kept failing
    INTERRUPTED = "interrupted"  # SIGTERM or SIGINT: in flight recorded, rest handed back
    # The database refused to record deliveries whatever the rows (a grant or policy the
    # runtime role lacks, an object missing): the run stopped claiming.
    DATABASE_REFUSED = "database_refused"


class Refusal(StrEnum):
    """What became of a follow-up the database refused to record as delivered."""

    FAILED = "failed"  # marked failed, reason database_rejected
    HELD = "held"  # even that was refused: held with this tool's own columns
    UNRECORDED = "unrecorded"  # even the hold was refused: back after the lease
