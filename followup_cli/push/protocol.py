"""What every pusher shares: the request and its outcome, the Pusher protocol, the event
loop a pusher runs on, and the OutageBreaker that stops a service for the run.

push() is a coroutine: the delivery service keeps many in flight on one event loop.

DEVICE_REASONS and config_hint gather each service's own (push.apns.reasons,
push.fcm.reasons) for the layers above, which need not know which service said what.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from followup_cli.push.apns import reasons as apns_reasons
from followup_cli.push.fcm import reasons as fcm_reasons
from followup_cli.report import ServiceHealth, ServiceStop
from followup_cli.vocabulary import Outcome, Service

T = TypeVar("T")

MAX_ATTEMPTS = 3

# Reasons (APNs' and FCM's) that mean this device token will never work: a requeue needs
# a new token (or in-app-only delivery).
DEVICE_REASONS = apns_reasons.DEAD_TOKEN_REASONS | fcm_reasons.DEAD_TOKEN_REASONS


@dataclass(frozen=True)
class PushRequest:
    follow_up_id: str
    conversation_id: str
    device_token: str
    title: str
    body: str
    urgent: bool
    # Which service the device token belongs to (push.tokens.token_service decides).
    service: str = Service.APNS
    # aps.mutable-content: the app's notification service extension may replace the body.
    mutable_content: bool = False

    @property
    def priority(self) -> str:
        return "10" if self.urgent else "5"

    @property
    def interruption_level(self) -> str:
        return "time-sensitive" if self.urgent else "active"


@dataclass(frozen=True)
class RequestView:
    """A notification's request as its service receives it, the authorization header
    aside: the pusher sends these headers and this payload, and test-send shows them."""

    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Attempt:
    attempted_at: datetime
    attempt: int
    outcome: Outcome
    reason: str | None = None
    status_code: int | None = None
    # The service's id of the notification it answered: APNs' apns-id, FCM's message name
    # (stored in follow_up_attempts.apns_id).
    provider_id: str | None = None


@dataclass(frozen=True)
class PushOutcome:
    kind: Outcome
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        return self.attempts[-1].reason if self.attempts else None

    @property
    def provider_id(self) -> str | None:
        return self.attempts[-1].provider_id if self.attempts else None

    @property
    def status_code(self) -> int | None:
        return self.attempts[-1].status_code if self.attempts else None


class OutageBreaker:
    """Counts a run's failed push *attempts* in a row: server errors (5xx), timeouts and
    connection failures. Any real answer from the push service (accepted, or refused for
    this one notification) resets the count; APNs' per-device 429 leaves it alone.
    Attempts that failed by one event count once: the streams a dropped connection took
    with it, or the requests that waited for one connect that failed (`event`).

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
        # For the whole run: did any attempt fail, did any get an answer, and was any
        # notification judged on its own merits (not a configuration refusal)?
        self.failed_attempts = 0
        self.answers = 0
        self.judged = 0
        self._events: list[object] = []  # the events counted since the last answer

    @property
    def tripped(self) -> bool:
        return self.failures >= self.threshold

    @property
    def suspect(self) -> bool:
        """The last attempt failed: probe one attempt at a time until one succeeds."""
        return self.failures > 0

    def failure(self, reason: str, *, event: object | None = None) -> None:
        self.failed_attempts += 1
        if event is not None:
            if any(seen is event for seen in self._events):
                return  # another stream of a loss already counted
            self._events.append(event)
        if not self.tripped:
            self.failures += 1
            self.reason = reason

    def answered(self, *, judged: bool = True) -> None:
        self.answers += 1
        if judged:
            self.judged += 1
        if not self.tripped:
            self.failures = 0
            self._events.clear()

    def trip(self, reason: str) -> None:
        """The service said to come back later than this run should wait: trip at once."""
        if not self.tripped:
            self.failures = self.threshold
            self.reason = reason


class PushGate(Protocol):
    """The delivery service's answer to "may this follow-up still be pushed?", asked
    before every request of it: the first attempt, each retry and each resend of a push
    the service did not process. One owner for the cancel promise: no request of a
    pusher goes out without asking."""

    async def allows(self, follow_up_id: str) -> bool | None:
        """True: push it. False: the app cancelled it (or it is no longer this run's).
        None: the database did not answer, so nothing may be pushed that could not be
        recorded either."""
        ...

    def withdrawn(self, follow_up_id: str) -> bool:
        """Known, from the latest reading, to be cancelled: asked again when a request
        that waited for a stream is about to start."""
        ...


async def withheld(
    gate: PushGate | None, request: PushRequest, attempts: list[Attempt]
) -> PushOutcome | None:
    """Asks the gate before a request: None lets it go; otherwise the outcome of a push
    that ends here (withdrawn by a cancel; or, when the database did not answer, unsent,
    or transient if earlier attempts failed)."""
    if gate is None:
        return None
    allowed = await gate.allows(request.follow_up_id)
    if allowed:
        return None
    if allowed is False:
        return PushOutcome(Outcome.WITHDRAWN, attempts)
    return PushOutcome(Outcome.TRANSIENT if attempts else Outcome.UNSENT, attempts)


class Pusher(Protocol):
    """Sends notifications. push() is a coroutine: many run at once on the pusher's own
    event loop, which run() drives from synchronous code (one loop for the pusher's life,
    so a connection made in one batch serves the next).

    `gate`, when given, is asked before every request of the notification (see
    PushGate); a withdrawn notification's outcome is Outcome.WITHDRAWN.

    `services` are the token kinds it pushes to. stopped(service) says why that service
    takes no more pushes in this run (a configuration answer, or its outage breaker
    tripped; both last as long as the pusher, i.e. the run): the delivery service starts
    no push to it after that, and the pusher starts no retry. `concurrency` applies to
    each service on its own."""

    name: str
    services: frozenset[str]
    concurrency: int

    def stopped(self, service: str) -> ServiceStop | None: ...

    def unanswered(self, service: str) -> ServiceStop | None:
        """An outage seen although the service never stopped: this run's attempts to it
        all failed for transient reasons, and none got an answer."""
        ...

    def health(self, service: str) -> ServiceHealth | None:
        """What this run learned of the service; None for a backend that sends nothing."""
        ...

    async def push(self, request: PushRequest, gate: PushGate | None = None) -> PushOutcome: ...

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


def config_hint(reason: str | None, service: str = Service.APNS) -> str:
    """What the operator checks after a service refused our configuration with `reason`."""
    if service == Service.FCM:
        return fcm_reasons.config_hint(reason)
    return apns_reasons.config_hint(reason)
