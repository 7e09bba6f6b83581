"""`schedule` and `cancel`: write follow-ups exactly as the iOS app does, for QA and demos."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.errors import Conflict, NotFound
from followup_cli.vocabulary import Status


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
    """A canonical UUID string, or ValueError with a one-line message."""
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise ValueError(f"{what} must be a UUID like 3f2b8c1e-..., got {value!r}") from None
