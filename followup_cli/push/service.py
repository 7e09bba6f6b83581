"""What the APNs and FCM pushers share: the attempts at one notification and the rules
that stop a service for the rest of the run.

- MAX_ATTEMPTS attempts in all per notification, through `backoff`: exponential waits
  with full jitter, never shorter than the server's Retry-After.
- The run's OutageBreaker for this service counts failed attempts. While it is suspect
  (the last attempt failed) attempts go one at a time; once it trips, no attempt starts.
- A configuration answer halts the service: no new request starts, since the answer
  would be the same.
- The delivery service's PushGate is asked before every request (`_request_allowed`):
  the first attempt, each retry, each resend of a push the service did not process. A
  follow-up the app cancelled meanwhile gets no further request.

A subclass makes one attempt (`_attempt_once`) and reports a failed one through
`_record_failure`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

import backoff

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
from followup_cli.report import ServiceStop
from followup_cli.settings import Settings
from followup_cli.vocabulary import Outcome, RunEnd


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


class ServicePusher(EventLoopOwner):
    """One push service's pusher. `service` is its token kind (a vocabulary.Service)."""

    service: str
    name: str

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.services = frozenset({self.service})
        self.concurrency = settings.push_concurrency
        self.breaker = OutageBreaker(settings.outage_threshold)
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

    async def push(self, request: PushRequest, gate: PushGate | None = None) -> PushOutcome:
        attempts: list[Attempt] = []
        outcome = await self._push_with_retries(request, attempts, gate)
        if outcome is None:  # every attempt was transient, or the breaker tripped
            return PushOutcome(Outcome.TRANSIENT, attempts)
        assert isinstance(outcome, PushOutcome)
        return outcome

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
        does not process it. Each request asks `_request_allowed` first."""
        raise NotImplementedError

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

    def _record_failure(
        self,
        at: datetime,
        attempts: list[Attempt],
        kind: Outcome,
        reason: str,
        status: int | None,
        answer_id: str | None,
        *,
        outage: bool,
        cause: BaseException | None = None,
        retry_after: float | None = None,
    ) -> PushOutcome:
        """Record a failed attempt. A transient one counts for the breaker when `outage`
        (the service failed, rather than refused one notification) and raises
        TransientAttempt for backoff; any other kind means the service answered."""
        attempts.append(Attempt(at, len(attempts) + 1, kind, reason, status, answer_id))
        if kind != Outcome.TRANSIENT:
            self.breaker.answered()  # the service answered: it is up
            if kind == Outcome.CONFIG and self._config_stop is None:
                self._config_stop = reason  # no new request starts: the answer would be the same
            return PushOutcome(kind, attempts)
        if outage:
            self.breaker.failure(reason)
        raise TransientAttempt(retry_after) from cause
