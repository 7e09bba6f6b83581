"""The plan: what to do with each follow-up of a claimed batch, before anything is pushed.

A follow-up without text or recipient fails at once (empty_message, missing_recipient);
one without a usable device token, marked in-app only, or whose token belongs to a push
service FOLLOWUPS_PUSH does not turn on, is delivered in-app only (why there was no push
is recorded as a skipped attempt); every other one is pushed through its token's service.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from followup_cli.push.payload import build_request
from followup_cli.push.protocol import PushRequest
from followup_cli.push.tokens import normalize_token, token_service
from followup_cli.repository import AttemptRecord, DueFollowUp, Failure
from followup_cli.settings import Settings
from followup_cli.vocabulary import FailureReason, Outcome, Service

# A token of a push service that FOLLOWUPS_PUSH does not turn on: in-app only.
NOT_CONFIGURED = {
    Service.APNS: FailureReason.APNS_NOT_CONFIGURED,
    Service.FCM: FailureReason.FCM_NOT_CONFIGURED,
}


@dataclass
class Plan:
    """What to do with one claimed batch."""

    push: list[tuple[DueFollowUp, PushRequest]] = field(default_factory=list)
    in_app: list[DueFollowUp] = field(default_factory=list)
    invalid: list[Failure] = field(default_factory=list)
    notes: list[AttemptRecord] = field(default_factory=list)


def make_plan(
    batch: Sequence[DueFollowUp], now: datetime, settings: Settings, services: frozenset[str]
) -> Plan:
    plan = Plan()
    for f in batch:
        if not (f.display_text or "").strip():
            plan.invalid.append(Failure(f.id, FailureReason.EMPTY_MESSAGE))
            continue
        if not (f.user_id or "").strip() or not _is_uuid(f.conversation_id):
            plan.invalid.append(Failure(f.id, FailureReason.MISSING_RECIPIENT))
            continue
        token = normalize_token(f.device_token)
        if token is None or f.in_app_only:
            plan.in_app.append(f)
            continue
        service = token_service(token)
        if service is None or service not in services:
            # The in-app message still reaches the parent; why there was no push is on
            # record (stats counts these by reason).
            reason = (
                FailureReason.INVALID_DEVICE_TOKEN if service is None else NOT_CONFIGURED[service]
            )
            plan.in_app.append(f)
            plan.notes.append(AttemptRecord(f.id, now, 1, Outcome.SKIPPED, reason, None, None))
            continue
        plan.push.append((f, build_request(f, token, settings, service)))
    return plan


def _is_uuid(value: str | None) -> bool:
    if not value:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
