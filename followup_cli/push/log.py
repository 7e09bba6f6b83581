"""The log backend (FOLLOWUPS_PUSH=log, the default): writes what would be pushed to the
log, never the message text; nothing leaves the machine."""

from __future__ import annotations

import json
import logging

from followup_cli.clock import utcnow
from followup_cli.push.payload import fit_body, headers_for
from followup_cli.push.protocol import (
    Attempt,
    EventLoopOwner,
    PushGate,
    PushOutcome,
    PushRequest,
    withheld,
)
from followup_cli.push.tokens import mask_token
from followup_cli.report import ServiceHealth, ServiceStop
from followup_cli.vocabulary import Outcome, Service

log = logging.getLogger("followups.push")


class LogPusher(EventLoopOwner):
    """Logs each notification that would be pushed, whichever service its token belongs
    to; sends nothing."""

    name = "log"
    services: frozenset[str] = frozenset({Service.APNS, Service.FCM})

    def __init__(self, concurrency: int = 16) -> None:
        super().__init__()
        self.concurrency = concurrency

    def stopped(self, service: str) -> ServiceStop | None:
        return None  # nothing to fail

    def unanswered(self, service: str) -> ServiceStop | None:
        return None

    def health(self, service: str) -> ServiceHealth | None:
        return None  # it reaches no service: no evidence about one

    async def push(self, request: PushRequest, gate: PushGate | None = None) -> PushOutcome:
        stopped = await withheld(gate, request, [])
        if stopped is not None:
            return stopped
        headers, body = _as_sent(request)
        log.info(
            "push (log backend, not sent): service=%s follow_up=%s conversation=%s token=%s "
            "title=%r headers=%s body_length=%d",
            request.service,
            request.follow_up_id,
            request.conversation_id,
            mask_token(request.device_token),
            request.title,
            json.dumps(headers, sort_keys=True),
            len(body),
        )
        return PushOutcome(Outcome.SENT, [Attempt(utcnow(), 1, Outcome.SENT, None, None, None)])


def _as_sent(request: PushRequest) -> tuple[dict[str, str], str]:
    """The request headers and the alert body that the token's service would get: each
    service's own message (there is no APNs topic without APNs settings)."""
    if request.service == Service.FCM:
        from followup_cli.push.fcm.message import describe

        view = describe(request)
        return view.headers, view.payload["message"]["notification"]["body"]
    return headers_for(request, None), fit_body(request)
