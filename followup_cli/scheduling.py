"""`schedule` and `cancel`: write follow-ups exactly as the iOS app does, for QA and demos."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.errors import ConfigError, Conflict, NotFound
from followup_cli.push.tokens import is_valid_token, normalize_token
from followup_cli.settings import parse_duration
from followup_cli.vocabulary import Status

URGENCIES = ("routine", "urgent")


@dataclass(frozen=True)
class NewFollowUp:
    conversation_id: str
    user_id: str
    text: str
    scheduled_for: datetime
    urgency: str = "routine"
    device_token: str | None = None
    child_name: str | None = None
    provider_name: str | None = None


def new_follow_up(
    *,
    text: str,
    user_id: str,
    conversation: str | None,
    due_in: str | None,
    due_at: str | None,
    urgency: str,
    token: str | None,
    child_name: str | None,
    provider_name: str | None,
) -> NewFollowUp:
    """The `schedule` command's options as a follow-up, checked as the app would check
    them. Raises ConfigError naming the first bad option; nothing is written."""
    if due_in is not None and due_at is not None:
        raise ConfigError("give --in or --at, not both")
    if urgency not in URGENCIES:
        raise ConfigError(f"--urgency must be routine or urgent, got {urgency!r}")
    if not text.strip():
        raise ConfigError("--text must not be empty")
    # A follow-up without a recipient is written, then fails as missing_recipient.
    if not user_id.strip():
        raise ConfigError("--user must not be empty")
    when = utcnow()
    if due_in is not None:
        when += parse_duration(due_in, "--in")
    elif due_at is not None:
        when = _parse_at(due_at)
    device_token = normalize_token(token)
    if device_token is not None and not is_valid_token(device_token):
        raise ConfigError(
            "--token must be an APNs device token (64 hexadecimal characters) or an FCM "
            "registration token"
        )
    conversation_id = parse_uuid(conversation, "--conversation") if conversation else None
    return NewFollowUp(
        conversation_id=conversation_id or str(uuid.uuid4()),
        user_id=user_id,
        text=text,
        scheduled_for=when,
        urgency=urgency,
        device_token=device_token,
        child_name=child_name,
        provider_name=provider_name,
    )


def _parse_at(value: str) -> datetime:
    """An ISO-8601 time; one without a zone is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"--at must be an ISO-8601 time like 2026-11-28T14:30:00Z, got {value!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def schedule(db: Database, new: NewFollowUp) -> str:
    """Insert the follow-up and raise the conversation's clock badge, in one transaction."""
    now = utcnow()
    follow_up_id = str(uuid.uuid4())
    ahead = max(timedelta(0), new.scheduled_for - now)
    days, rest = divmod(int(ahead.total_seconds()), 86400)
    hours, rest = divmod(rest, 3600)
    with db.transaction() as repo:
        repo.insert_follow_up(
            {
                "id": follow_up_id,
                "conversation_id": new.conversation_id,
                "user_id": new.user_id,
                "scheduled_for": new.scheduled_for,
                "urgency": new.urgency,
                "display_text": new.text,
                "original_message": new.text,
                "status": Status.SCHEDULED,
                "child_name": new.child_name,
                "device_token": new.device_token,
                "follow_up_days": days,
                "follow_up_hours": hours,
                "follow_up_minutes": rest // 60,
                "created_at": now,
                "provider_name": new.provider_name,
            }
        )
        repo.set_review_flag(new.conversation_id, True)
    return follow_up_id


def cancel(db: Database, follow_up_id: str) -> str:
    """scheduled -> cancelled and the badge cleared, as the app's cancel does.

    Returns the status now. Cancelling twice is harmless; a follow-up already sent or
    failed cannot be cancelled (Conflict)."""
    with db.transaction() as repo:
        result = repo.cancel_follow_up(follow_up_id)
        if result is None:
            raise NotFound(f"no follow-up with id {follow_up_id}")
        status, conversation_id = result
        if status != Status.CANCELLED:
            raise Conflict(
                f"follow-up {follow_up_id} is {status}; only a scheduled one can be cancelled"
            )
        if conversation_id is not None:
            repo.set_review_flag(conversation_id, False)
    return status


def parse_uuid(value: str, what: str = "id") -> str:
    """A canonical UUID string. A malformed one is a usage error (exit 2): ConfigError
    with a one-line message naming the option or argument."""
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise ConfigError(f"{what} must be a UUID like 3f2b8c1e-..., got {value!r}") from None
