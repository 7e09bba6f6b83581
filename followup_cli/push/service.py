"""What the APNs and FCM pushers share: the one attempt loop every push goes through, and
the rules that stop a service for the rest of the run. A service supplies only what it
does its own way, as a ServiceStrategy (push.apns.pusher, push.fcm.pusher).

- MAX_ATTEMPTS attempts in all per notification, through `backoff`: exponential waits
  with full jitter, never shorter than the server's Retry-After.
- The run's OutageBreaker for this service counts failed attempts. While it is suspect
  (the last attempt failed) attempts go one at a time; once it trips, no attempt starts.
- A configuration answer halts the service: no new request starts, since the answer
  would be the same.
- The delivery service's PushGate is asked before every request (`_request_allowed`):
  the first attempt, each retry, each resend of a push the service did not process,
  each resend with a renewed credential. A follow-up the app cancelled meanwhile gets no
  further request.

One attempt (`_attempt_once`), the same code for both services:

1. the gate; the credential (FCM's access token may have to be fetched first);
2. the connection and a stream slot (h2client), the request, the strategy's verdict;
3. not processed (refused stream, above a GOAWAY's last-stream-id, never written, or a
   credential refused while the request waited): sent again, not an attempt, up to
   MAX_RESENDS times;
4. a verdict that asks to renew the credential (or fall back to the previous one): each
   step once per attempt, then the request again; refused again, the verdict's own kind
   (a configuration stop);
5. recorded (`_record_attempt`): sent or refused, the service answered
   (`breaker.answered()`); transient, backoff may try again.

A timeout retires the connection (and so may a verdict): it takes no new streams, its
other streams are still answered. Any other exception in the middle of a push is a
transient failure named by its class, never a crash of the run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import backoff

from followup_cli.clock import utcnow
from followup_cli.push.h2client import (
    MAX_RESENDS,
    Answer,
    ConnectionLost,
    H2Connection,
    H2Endpoint,
    Halted,
    NotProcessed,
    PushTimeout,
)
from followup_cli.push.protocol import (
    MAX_ATTEMPTS,
    Attempt,
    EventLoopOwner,
    OutageBreaker,
    PushGate,
    PushOutcome,
    PushRequest,
    withheld,
)
from followup_cli.report import ServiceHealth, ServiceStop
from followup_cli.settings import Settings
from followup_cli.vocabulary import Outcome, RunEnd

log = logging.getLogger("followups.push")


class TransientAttempt(Exception):
    """One transient attempt failed; backoff decides whether to try again, and waits at
    least `retry_after` seconds when the server asked for it."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__()
        self.retry_after = retry_after


def wait_before_next_attempt(*, factor: float) -> Generator[float, Any, None]:
    """backoff's exponential wait with full jitter (a random time up to factor, then up to
    2 x factor), but never shorter than the Retry-After the failed attempt carried."""
    failure = yield 0.0  # backoff primes the generator before the first attempt
    step = 0
    while True:
        wait = random.uniform(0, factor * 2**step)
        step += 1
        retry_after = failure.retry_after if isinstance(failure, TransientAttempt) else None
        failure = yield max(wait, retry_after or 0.0)


# -- what a service supplies ----------------------------------------------------------


class Renewal(StrEnum):
    """A step a verdict may ask for before the request goes again (each once per attempt)."""

    RENEW = "renew"  # a new credential: APNs' provider token signed anew, FCM's fetched
    FALL_BACK = "fall_back"  # the previous credential (APNs' previous window's token)


@dataclass(frozen=True)
class Verdict:
    """A service's judgement of one request: sent, or failed with `kind`.

    `retire`: the connection takes no new streams. `outage`: a transient failure counts
    for the outage breaker (a refusal about one device does not). `trip`: the breaker
    trips at once (the service asks to wait longer than a run should). `renewal`: the
    credential step to take first; `kind` applies when it was taken already or cannot be.
    """

    kind: Outcome
    reason: str | None = None
    status: int | None = None
    provider_id: str | None = None  # APNs' apns-id, FCM's message name
    retry_after: float | None = None
    retire: bool = False
    outage: bool = True
    trip: bool = False
    renewal: Renewal | None = None


@dataclass(frozen=True)
class Outgoing:
    """One notification's request as sent, the authorization header aside."""

    path: str
    headers: dict[str, str]
    body: bytes


class CredentialUnavailable(Exception):
    """No credential to send with: refused for good (`config`), or not reachable now."""

    def __init__(self, reason: str, *, config: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.config = config


class ServiceStrategy(ABC):
    """What one push service does its own way: where it is, how its request and credential
    are made, and how its answers are judged. Everything else is ServicePusher's."""

    label: str  # the service in log lines ("APNs", "FCM")
    url: str
    ca_file: Path | None = None
    # Where the authorization header goes among the request's headers (first, or last):
    # each service's requests keep the header order they have always had.
    authorization_first = False
    # Streams go one at a time while the breaker is suspect, even on a connection whose
    # limit is high (FCM keeps its limit through an outage; APNs drops to one by itself).
    one_stream_while_suspect = False
    # Request headers whose value differs with every request (kept out of HTTP/2's
    # header compression table).
    unique_headers: frozenset[str] = frozenset()

    @abstractmethod
    def build(self, request: PushRequest) -> Outgoing:
        """The request for this notification: path, headers and body."""

    async def credential(self) -> str | None:
        """The credential in hand before a request (may wait for a renewal); raises
        CredentialUnavailable. None when the authorization is made as the stream starts."""
        return None

    @abstractmethod
    def authorization(self, credential: str | None) -> str:
        """The authorization header's value, asked as the stream starts (a credential
        refused meanwhile is not sent: raise NotProcessed to fetch the new one)."""

    @abstractmethod
    def judge(self, answer: Answer) -> Verdict:
        """The verdict on one answer."""

    async def renew(self, step: Renewal, credential: str | None) -> bool:
        """Take the credential step a verdict asked for; False when it cannot be taken."""
        return False


# -- the pusher -----------------------------------------------------------------------

_NOT_PROCESSED = Verdict(Outcome.TRANSIENT, "NotProcessed")
_TIMED_OUT = Verdict(Outcome.TRANSIENT, "Timeout", retire=True)
_CONNECTION_LOST = Verdict(Outcome.TRANSIENT, "ConnectionError")


class ServicePusher(EventLoopOwner):
    """One push service's pusher, over one HTTP/2 connection at a time: up to
    `concurrency` notifications in flight (a retired connection finishes its streams
    while the next one takes new ones). `service` is its token kind (a
    vocabulary.Service); `strategy` does what the service does its own way."""

    service: str
    name: str

    def __init__(self, settings: Settings, strategy: ServiceStrategy) -> None:
        super().__init__()
        self.services = frozenset({self.service})
        self.concurrency = settings.push_concurrency
        self.strategy = strategy
        self.breaker = OutageBreaker(settings.outage_threshold)
        self._timeout = settings.push_timeout_seconds
        self._endpoint = H2Endpoint(
            strategy.url,
            ca_file=strategy.ca_file,
            connect_timeout=self._timeout,
            label=strategy.label,
            one_at_a_time=(lambda: self.breaker.suspect)
            if strategy.one_stream_while_suspect
            else None,
            unique_headers=strategy.unique_headers,
        )
        self._probing: asyncio.Lock | None = None
        self._config_stop: str | None = None  # the service refused our configuration
        self._push_with_retries: Callable[..., Any] = backoff.on_exception(
            wait_before_next_attempt,
            TransientAttempt,
            max_tries=MAX_ATTEMPTS,
            jitter=None,  # the wait generator jitters itself, so Retry-After stays a minimum
            factor=settings.retry_base_seconds,
            giveup=lambda _exc: self.breaker.tripped,
            logger=None,  # backoff's logger would print the call's arguments
            raise_on_giveup=False,
        )(self._attempt)

    def stopped(self, service: str) -> ServiceStop | None:
        if self._config_stop is not None:
            return ServiceStop(self.service, RunEnd.CONFIG_ERROR, self._config_stop)
        if self.breaker.tripped:
            return ServiceStop(self.service, RunEnd.OUTAGE, self.breaker.reason)
        return None

    def unanswered(self, service: str) -> ServiceStop | None:
        """An outage this run saw although the breaker never tripped: attempts failed for
        transient reasons and none got an answer (one follow-up due, say, and the service
        unreachable). None once any attempt was answered."""
        if self.breaker.failed_attempts and not self.breaker.answers:
            return ServiceStop(self.service, RunEnd.OUTAGE, self.breaker.reason)
        return None

    def health(self, service: str) -> ServiceHealth:
        return ServiceHealth(
            self.service, answered=self.breaker.answers > 0, judged=self.breaker.judged > 0
        )

    async def push(self, request: PushRequest, gate: PushGate | None = None) -> PushOutcome:
        attempts: list[Attempt] = []
        outcome = await self._push_with_retries(request, attempts, gate)
        if outcome is None:  # every attempt was transient, or the breaker tripped
            return PushOutcome(Outcome.TRANSIENT, attempts)
        assert isinstance(outcome, PushOutcome)
        return outcome

    async def aclose(self) -> None:
        await self._endpoint.aclose()

    def _may_start(self) -> bool:
        return self._config_stop is None and not self.breaker.tripped

    def _halted(self, attempts: list[Attempt]) -> PushOutcome:
        return PushOutcome(Outcome.TRANSIENT if attempts else Outcome.UNSENT, attempts)

    async def _attempt(
        self, request: PushRequest, attempts: list[Attempt], gate: PushGate | None
    ) -> PushOutcome:
        if not self._may_start():
            return self._halted(attempts)
        if not self.breaker.suspect:
            return await self._attempt_once(request, attempts, gate)
        # The last attempt failed: one attempt at a time until one gets an answer.
        if self._probing is None:
            self._probing = asyncio.Lock()
        async with self._probing:
            if not self._may_start():
                return self._halted(attempts)
            if self.breaker.suspect:
                return await self._attempt_once(request, attempts, gate)
        # A probe succeeded while this one waited: no need to go one at a time any more.
        return await self._attempt_once(request, attempts, gate)

    async def _attempt_once(
        self, request: PushRequest, attempts: list[Attempt], gate: PushGate | None
    ) -> PushOutcome:
        """One attempt: its request, and the resends of that request while the service
        does not process it or the credential is renewed. Each request asks
        `_request_allowed` first."""
        at = utcnow()
        strategy = self.strategy
        outgoing = strategy.build(request)
        resends = 0
        renewals: set[Renewal] = set()
        while True:
            stop = await self._request_allowed(request, attempts, gate)
            if stop is not None:
                return stop
            conn: H2Connection | None = None
            cause: BaseException | None = None
            try:
                credential = await strategy.credential()
                if not self._may_start():  # the service stopped while this push waited
                    return self._halted(attempts)
                conn = await self._endpoint.connection(self._may_start)
                answer = await conn.request(
                    outgoing.path,
                    outgoing.headers,
                    outgoing.body,
                    self._timeout,
                    self._may_stream(request, gate),
                    authorization=functools.partial(strategy.authorization, credential),
                    authorization_first=strategy.authorization_first,
                )
                verdict = strategy.judge(answer)
                step = verdict.renewal
                if step is not None and step not in renewals:
                    renewals.add(step)  # not an attempt: the notification was never judged
                    if await strategy.renew(step, credential):
                        continue
            except Halted:
                return self._stopped_while_waiting(request, attempts, gate)
            except NotProcessed as exc:
                if resends < MAX_RESENDS:
                    resends += 1  # the service never saw it: not an attempt
                    continue
                verdict, cause = _NOT_PROCESSED, exc
            except PushTimeout as exc:
                verdict, cause = _TIMED_OUT, exc
            except ConnectionLost as exc:
                verdict, cause = _CONNECTION_LOST, exc
            except CredentialUnavailable as exc:
                kind = Outcome.CONFIG if exc.config else Outcome.TRANSIENT
                verdict, cause = Verdict(kind, exc.reason), exc
            except Exception as exc:  # anything else mid-push: transient, never a crash
                verdict, cause = Verdict(Outcome.TRANSIENT, type(exc).__name__), exc
            break
        if verdict.kind == Outcome.TRANSIENT:
            if verdict.retire and conn is not None:
                conn.retire()
            if verdict.trip:
                log.warning(
                    "%s asks to wait %.0f s (%s): no more %s pushes in this run",
                    strategy.label,
                    verdict.retry_after or 0.0,
                    verdict.reason,
                    strategy.label,
                )
                self.breaker.trip(verdict.reason or "-")
        return self._record_attempt(at, attempts, verdict, cause)

    async def _request_allowed(
        self, request: PushRequest, attempts: list[Attempt], gate: PushGate | None
    ) -> PushOutcome | None:
        """None when the next request of this notification may go out; else the outcome
        the push ends with (the service stopped, or the gate withheld it)."""
        if not self._may_start():
            return self._halted(attempts)
        return await withheld(gate, request, attempts)

    def _may_stream(self, request: PushRequest, gate: PushGate | None) -> Callable[[], bool]:
        """Asked when a request that waited for a stream is about to start."""
        if gate is None:
            return self._may_start
        return lambda: self._may_start() and not gate.withdrawn(request.follow_up_id)

    def _stopped_while_waiting(
        self, request: PushRequest, attempts: list[Attempt], gate: PushGate | None
    ) -> PushOutcome:
        """The outcome of a request that did not start after waiting for a stream."""
        if gate is not None and gate.withdrawn(request.follow_up_id):
            return PushOutcome(Outcome.WITHDRAWN, attempts)
        return self._halted(attempts)

    def _record_attempt(
        self,
        at: datetime,
        attempts: list[Attempt],
        verdict: Verdict,
        cause: BaseException | None = None,
    ) -> PushOutcome:
        """Record an attempt. A sent one, or one the service refused, means the service
        answered (and a configuration refusal stops it). A transient one counts for the
        breaker when `verdict.outage` (the service failed, rather than refused one
        notification) and raises TransientAttempt for backoff."""
        kind, reason = verdict.kind, verdict.reason
        attempts.append(
            Attempt(at, len(attempts) + 1, kind, reason, verdict.status, verdict.provider_id)
        )
        if kind != Outcome.TRANSIENT:
            # The service answered: it is up (and, unless it refused our configuration,
            # our configuration works).
            self.breaker.answered(judged=kind != Outcome.CONFIG)
            if kind == Outcome.CONFIG and self._config_stop is None:
                # No new request starts: the answer would be the same.
                self._config_stop = reason or "-"
            return PushOutcome(kind, attempts)
        assert reason is not None  # every failure has its reason
        if verdict.outage:
            self.breaker.failure(reason, event=getattr(cause, "event", None))
        raise TransientAttempt(verdict.retry_after) from cause
