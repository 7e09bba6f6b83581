"""test-send: push one follow-up now, for QA, and show exactly what went out.

It does not change the follow-up or write a message unless mark_sent is asked, in which
case it claims the follow-up first (so a concurrent send-due cannot deliver it too) and
finishes it exactly as send-due does. Its attempts are recorded with is_test, so they do
not count in the success rate.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery import MessageClock, PushedBatch, attempt_records, finish_batch
from followup_cli.errors import Conflict, NotFound, NoToken
from followup_cli.push.factory import describe_request
from followup_cli.push.payload import build_request
from followup_cli.push.protocol import Pusher, PushOutcome, PushRequest
from followup_cli.push.tokens import normalize_token, token_service
from followup_cli.report import SERVICE_LABELS
from followup_cli.repository import DueFollowUp
from followup_cli.settings import Settings
from followup_cli.vocabulary import Outcome, Status


@dataclass
class TestSendResult:
    request: PushRequest
    payload: dict[str, Any]
    headers: dict[str, str]
    outcome: PushOutcome | None = None  # None: dry run
    marked_sent: bool = False


def prepare(
    db: Database, follow_up_id: str, to: str | None, force: bool, settings: Settings
) -> TestSendResult:
    with db.transaction() as repo:
        found = repo.find_follow_up(follow_up_id)
    if found is None:
        raise NotFound(f"no follow-up with id {follow_up_id}")
    f, status = found
    if status == Status.CANCELLED and not force:
        raise Conflict(f"follow-up {follow_up_id} is cancelled; use --force to send it anyway")
    token = normalize_token(to if to is not None else f.device_token)
    if token is None:
        raise NoToken(f"follow-up {follow_up_id} has no device token; give one with --to")
    source = "--to" if to is not None else "the follow-up's device token"
    service = token_service(token)
    if service is None:
        raise NoToken(
            f"{source} is neither an APNs device token (64 hexadecimal characters) nor an "
            "FCM registration token"
        )
    services = settings.push_services
    if services and service not in services:
        label = SERVICE_LABELS[service]
        raise NoToken(
            f"{source} is an {label} token, but FOLLOWUPS_PUSH={settings.push} does not "
            f"turn {label} on"
        )
    request = build_request(f, token, settings, service)
    # Exactly the body and headers the service receives (the authorization aside).
    view = describe_request(request, settings)
    return TestSendResult(request=request, payload=view.payload, headers=view.headers)


def send(
    db: Database, pusher: Pusher, prepared: TestSendResult, mark_sent: bool, lease: timedelta
) -> TestSendResult:
    run_id = f"test-send-{uuid.uuid4()}"
    req = prepared.request
    claimed: DueFollowUp | None = None
    if mark_sent:
        now = utcnow()
        with db.transaction() as repo:
            claimed = repo.claim_one(run_id, req.follow_up_id, now, now + lease)
        if claimed is None:
            raise Conflict(
                f"follow-up {req.follow_up_id} is not scheduled (or is being delivered right "
                "now, or is held); --mark-sent only applies to a scheduled follow-up"
            )
    outcome = pusher.run(pusher.push(req))
    prepared.outcome = outcome
    records = attempt_records(req.follow_up_id, outcome.attempts, is_test=True)
    if claimed is None:
        with db.transaction() as repo:
            repo.record_attempts(run_id, records)
        return prepared
    # Finished exactly as send-due finishes a batch: message and status together, or the
    # claim handed back when the push failed.
    sent = outcome.kind == Outcome.SENT
    finished = finish_batch(
        db,
        run_id,
        PushedBatch(
            delivered=[claimed] if sent else [],
            pushed_ids={claimed.id} if sent else set(),
            failures=[],
            release=[] if sent else [claimed.id],
            attempts=records,
        ),
        MessageClock(),
    )
    prepared.marked_sent = bool(finished.sent)
    return prepared
