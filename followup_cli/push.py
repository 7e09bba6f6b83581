"""Push notifications: what a follow-up's push looks like, and the ways to send it.

- LogPusher (FOLLOWUPS_PUSH=log, the default): writes what would be pushed to the log,
  never the message text; nothing leaves the machine.
- APNsPusher (FOLLOWUPS_PUSH=apns, in apns.py): Apple's push service through
  pyapns-client's classes, 3 attempts in all per notification.
- FCMPusher (FOLLOWUPS_PUSH=fcm, in fcm.py): Firebase Cloud Messaging's HTTP v1 API.
- PushRouter (FOLLOWUPS_PUSH=apns,fcm): owns one pusher per service and sends each
  request to the service its device token belongs to (PushRequest.service), all on one
  event loop, so a run pushes to both at once.

push() is a coroutine: the delivery service keeps many in flight on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import unicodedata
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from followup_cli.clock import utcnow
from followup_cli.report import ServiceStop

if TYPE_CHECKING:
    from followup_cli.db import Database
    from followup_cli.repository import DueFollowUp
    from followup_cli.service import ServicePusher
    from followup_cli.settings import Settings

log = logging.getLogger("followups.push")
T = TypeVar("T")

# APNs accepts alert payloads up to 4,096 bytes.
MAX_PAYLOAD_BYTES = 4096
MAX_ATTEMPTS = 3
ELLIPSIS = "\u2026"

# Outcome kinds of one push (and of a follow-up's whole set of attempts).
SENT = "sent"
TRANSIENT = "transient"  # worth retrying later: network, 429, 5xx, unknown answers
PERMANENT = "permanent"  # this device will never take it: bad or unregistered token
CONFIG = "config"  # our key, team or topic is wrong: stop, fail nothing
UNSENT = "unsent"  # never sent: the run had stopped (configuration or outage) first

# The push services, as FOLLOWUPS_PUSH names them, and as people read them.
APNS = "apns"
FCM = "fcm"

# Reasons (APNs' and FCM's) that mean this device token will never work: a requeue needs
# a new token (or in-app-only delivery).
DEVICE_REASONS = frozenset(
    {
        "BadDeviceToken",
        "Unregistered",
        "DeviceTokenNotForTopic",
        "UNREGISTERED",
        "INVALID_REGISTRATION_TOKEN",
    }
)


@dataclass(frozen=True)
class PushRequest:
    follow_up_id: str
    conversation_id: str
    device_token: str
    title: str
    body: str
    urgent: bool
    # Which service the device token belongs to (delivery.token_service decides).
    service: str = APNS
    # aps.mutable-content: the app's notification service extension may replace the body.
    mutable_content: bool = False

    @property
    def priority(self) -> str:
        return "10" if self.urgent else "5"

    @property
    def interruption_level(self) -> str:
        return "time-sensitive" if self.urgent else "active"


@dataclass(frozen=True)
class Attempt:
    attempted_at: datetime
    attempt: int
    outcome: str
    reason: str | None = None
    status_code: int | None = None
    apns_id: str | None = None


@dataclass(frozen=True)
class PushOutcome:
    kind: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        return self.attempts[-1].reason if self.attempts else None

    @property
    def apns_id(self) -> str | None:
        return self.attempts[-1].apns_id if self.attempts else None

    @property
    def status_code(self) -> int | None:
        return self.attempts[-1].status_code if self.attempts else None


class OutageBreaker:
    """Counts a run's failed push *attempts* in a row: server errors (5xx), timeouts and
    connection failures. Any real answer from the push service (accepted, or refused for
    this one notification) resets the count; APNs' per-device 429 leaves it alone.

    At `threshold` failures in a row it trips for the rest of the run: no new push and no
    further retry starts, and the run stops as an outage with nothing marked failed.
    While the count is above zero the pusher lets one attempt through at a time (see
    `suspect`), so a full outage costs about `threshold` requests however big the batch,
    instead of every in-flight stream failing and retrying three times.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = max(1, threshold)
        self.failures = 0
        self.reason: str | None = None

    @property
    def tripped(self) -> bool:
        return self.failures >= self.threshold

    @property
    def suspect(self) -> bool:
        """The last attempt failed: probe one attempt at a time until one succeeds."""
        return self.failures > 0

    def failure(self, reason: str) -> None:
        if not self.tripped:
            self.failures += 1
            self.reason = reason

    def answered(self) -> None:
        if not self.tripped:
            self.failures = 0

    def trip(self, reason: str) -> None:
        """The service said to come back later than this run should wait: trip at once."""
        if not self.tripped:
            self.failures = self.threshold
            self.reason = reason


class Pusher(Protocol):
    """Sends notifications. push() is a coroutine: many run at once on the pusher's own
    event loop, which run() drives from synchronous code (one loop for the pusher's life,
    so a connection made in one batch serves the next).

    `services` are the token kinds it pushes to. stopped(service) says why that service
    takes no more pushes in this run (a configuration answer, or its outage breaker
    tripped; both last as long as the pusher, i.e. the run): the delivery service starts
    no push to it after that, and the pusher starts no retry. `concurrency` applies to
    each service on its own."""

    name: str
    services: frozenset[str]
    concurrency: int

    def stopped(self, service: str) -> ServiceStop | None: ...

    async def push(self, request: PushRequest) -> PushOutcome: ...

    def run(self, awaitable: Coroutine[Any, Any, T]) -> T: ...

    def close(self) -> None: ...


class EventLoopOwner:
    """The event loop a pusher's coroutines run on."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, awaitable: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self.aclose())
            self._loop.close()
        self._loop = None


def config_hint(reason: str | None, service: str = APNS) -> str:
    """What the operator checks after a service refused our configuration with `reason`."""
    if service == FCM:
        return _fcm_config_hint(reason)
    if reason == "TooManyProviderTokenUpdates":
        return (
            "APNs refused a provider token renewed within 20 minutes of the last one: "
            "something else signs tokens with this key (give each sender its own key) or a "
            "host's clock is far off. The next run tries again with the same token."
        )
    if reason == "ExpiredProviderToken":
        return "APNs calls a freshly signed provider token expired: check the host's clock (NTP)."
    return "Check FOLLOWUPS_APNS_KEY_FILE, _KEY_ID, _TEAM_ID, _TOPIC and _ENV."


def _fcm_config_hint(reason: str | None) -> str:
    if reason == "SENDER_ID_MISMATCH":
        return (
            "The device token belongs to another Firebase project: check "
            "FOLLOWUPS_FCM_PROJECT_ID (and the service account's project) against the app's "
            "Firebase project."
        )
    if reason == "THIRD_PARTY_AUTH_ERROR":
        return (
            "Firebase could not reach APNs for an iOS token: upload a valid APNs "
            "authentication key in the Firebase console (Project settings, Cloud Messaging)."
        )
    return (
        "Check FOLLOWUPS_FCM_CREDENTIALS_FILE and FOLLOWUPS_FCM_PROJECT_ID, that the "
        "Firebase Cloud Messaging API is enabled, and that the service account has the "
        "Firebase Cloud Messaging API Admin role (cloudmessaging.messages.create)."
    )


def mask_token(token: str | None) -> str:
    """Device tokens appear in logs as their first 8 characters only."""
    if not token:
        return "-"
    return f"{token[:8]}\u2026"


def notification_title(provider_name: str | None) -> str:
    name = (provider_name or "").strip()
    if name.lower().startswith("dr."):
        name = name[3:].strip()
    return f"Follow-up from Dr. {name}" if name else "Follow-up from your provider"


def build_request(
    f: DueFollowUp, device_token: str, settings: Settings, service: str = APNS
) -> PushRequest:
    """The push a follow-up becomes, for send-due and test-send alike.

    With FOLLOWUPS_PUSH_BODY=generic the body is FOLLOWUPS_PUSH_GENERIC_TEXT and nothing
    of the message goes out; mutable-content lets the app's notification service
    extension fetch the text by follow_up_id and show it as the phone's preview settings
    allow.
    """
    generic = settings.push_body == "generic"
    return PushRequest(
        follow_up_id=f.id,
        conversation_id=f.conversation_id or "",
        device_token=device_token,
        title=notification_title(f.provider_name),
        body=settings.push_generic_text if generic else (f.display_text or ""),
        urgent=(f.urgency or "").strip().lower() == "urgent",
        service=service,
        mutable_content=generic,
    )


def payload_dict(req: PushRequest, body: str | None = None) -> dict[str, Any]:
    """The JSON payload, in the shape APNs and the parent app expect."""
    aps: dict[str, Any] = {
        "alert": {"title": req.title, "body": req.body if body is None else body},
        "sound": "default",
        "thread-id": req.conversation_id,
        "interruption-level": req.interruption_level,
    }
    if req.mutable_content:
        aps["mutable-content"] = 1
    return {
        "aps": aps,
        "conversation_id": req.conversation_id,
        "type": "follow_up",
        "follow_up_id": req.follow_up_id,
    }


def encode_payload(payload: dict[str, Any]) -> bytes:
    # Non-ASCII stays UTF-8 (not \\u escapes): an emoji costs 4 bytes, not 12.
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def fit_body(req: PushRequest, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """The alert body, cut on a character boundary (with an ellipsis) so the whole payload
    fits `limit` bytes (APNs' 4,096). Never splits a combining mark or emoji sequence from
    its base."""
    if len(encode_payload(payload_dict(req))) <= limit:
        return req.body
    text = req.body
    lo, hi = 0, len(text)
    while lo < hi:  # largest prefix length that fits
        mid = (lo + hi + 1) // 2
        if len(encode_payload(payload_dict(req, text[:mid] + ELLIPSIS))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    cut = lo
    while cut > 0 and _joins_previous(text, cut):
        cut -= 1
    return text[:cut].rstrip() + ELLIPSIS


def _joins_previous(text: str, index: int) -> bool:
    """Would cutting before text[index] break a grapheme (combining mark, ZWJ, modifier)?"""
    if index >= len(text):
        return False
    ch, prev = text[index], text[index - 1]
    return (
        unicodedata.combining(ch) != 0
        or ch in ("\u200d", "\ufe0f", "\ufe0e")
        or prev == "\u200d"
        or 0x1F3FB <= ord(ch) <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= ord(ch) <= 0xE007F  # tag sequences (subdivision flags)
        or (0x1F1E6 <= ord(ch) <= 0x1F1FF and 0x1F1E6 <= ord(prev) <= 0x1F1FF)
    )


def headers_for(req: PushRequest, topic: str | None) -> dict[str, str]:
    """APNs request headers. Values are strings: httpx rejects ints."""
    headers = {
        "apns-push-type": "alert",
        "apns-priority": req.priority,
        "apns-collapse-id": req.follow_up_id,
    }
    if topic:
        headers["apns-topic"] = topic
    return headers


class LogPusher(EventLoopOwner):
    """Logs each notification that would be pushed, whichever service its token belongs
    to; sends nothing."""

    name = "log"
    services = frozenset({APNS, FCM})

    def __init__(self, concurrency: int = 16) -> None:
        super().__init__()
        self.concurrency = concurrency

    def stopped(self, service: str) -> ServiceStop | None:
        return None  # nothing to fail

    async def push(self, request: PushRequest) -> PushOutcome:
        body = fit_body(request)
        log.info(
            "push (log backend, not sent): service=%s follow_up=%s conversation=%s token=%s "
            "title=%r headers=%s body_length=%d",
            request.service,
            request.follow_up_id,
            request.conversation_id,
            mask_token(request.device_token),
            request.title,
            json.dumps(headers_for(request, None), sort_keys=True),
            len(body),
        )
        return PushOutcome(SENT, [Attempt(utcnow(), 1, SENT, None, None, None)])


class PushRouter(EventLoopOwner):
    """Owns one pusher per service and hands each request to its token's service. The
    children's coroutines run on this router's loop (theirs is never started), so both
    services push concurrently in one run, and closing the router closes them on it."""

    def __init__(self, name: str, concurrency: int, pushers: dict[str, ServicePusher]) -> None:
        super().__init__()
        self.name = name
        self.concurrency = concurrency
        self.services = frozenset(pushers)
        self._pushers = pushers

    def stopped(self, service: str) -> ServiceStop | None:
        pusher = self._pushers.get(service)
        return None if pusher is None else pusher.stopped(service)

    async def push(self, request: PushRequest) -> PushOutcome:
        pusher = self._pushers.get(request.service)
        if pusher is None:  # delivery only routes tokens of configured services here
            raise ValueError(f"no pusher for service {request.service!r}")
        return await pusher.push(request)

    async def aclose(self) -> None:
        for pusher in self._pushers.values():
            await pusher.aclose()


def make_pusher(settings: Settings, db: Database | None = None) -> Pusher:
    """The pusher FOLLOWUPS_PUSH asks for. `db` holds the FCM access token shared by every
    run and host; without it (tests, scripts) the token is kept in this process only."""
    services = settings.push_services
    if not services:
        return LogPusher()
    pushers: dict[str, ServicePusher] = {}
    # Imported only when there is something to push: they cost a fifth of a second.
    if APNS in services:
        from followup_cli.apns import APNsPusher

        pushers[APNS] = APNsPusher(settings)
    if FCM in services:
        from followup_cli.fcm import FCMPusher

        pushers[FCM] = FCMPusher(settings, db)
    if len(pushers) == 1:
        [only] = pushers.values()
        return only
    return PushRouter(settings.push, settings.push_concurrency, pushers)
