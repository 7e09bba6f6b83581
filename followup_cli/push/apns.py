"""The APNs adapter: concurrent HTTP/2 streams over one connection at a time from an
asyncio event loop, under the rules Apple's servers enforce.

Why not pyapns-client's own push(): it is synchronous and opens a TLS connection per
push (keep-alive off); a shared client is unsafe across threads; its push() retries
server errors three times by itself (so any outer retry would multiply attempts). The
requests go through h2client's small HTTP/2 client instead (about a fifth of httpx's
CPU per push). The payload and headers are push.payload's (apns_body, headers_for), the
very bytes its body cut was measured on. What stays pyapns-client's: the mapping from
APNs' reason to its exception classes and its reading of an error answer, which
`classify` sorts into our failure classes. The provider token is
provider_token.ProviderToken: one per key and 30-minute window, the same in every process.

How the connection follows APNs (docs/reliability.md, "The APNs connection"; the
mechanics are in h2client):

- Streams: never more open than the server's SETTINGS_MAX_CONCURRENT_STREAMS; one at a
  time until the server's first SETTINGS frame has arrived and the first notification on
  the connection is answered (APNs allows one stream until the provider token is
  accepted, and drops to one again after a rejected notification).
- Not processed is not failed: a stream refused (RST_STREAM REFUSED_STREAM), above a
  GOAWAY's last-stream-id, or never written is sent again without using an attempt.
  Streams at or below the last-stream-id are still answered after a GOAWAY and are
  waited for, so nothing is pushed twice; new streams go to a new connection.
- A timeout, `Shutdown` or `IdleTimeout` retires the connection: it takes no new streams
  but its other streams are still answered.

Each notification gets MAX_ATTEMPTS attempts in all (backoff: exponential, full jitter).
The run's OutageBreaker counts failed attempts; once it trips no retry starts.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pyapns_client.exceptions as apns_exc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pyapns_client import APNSClient

from followup_cli.clock import utcnow
from followup_cli.push.h2client import (
    MAX_RESENDS,
    ConnectionLost,
    H2Connection,
    H2Endpoint,
    Halted,
    NotProcessed,
    PushTimeout,
)
from followup_cli.push.payload import apns_body, headers_for
from followup_cli.push.protocol import Attempt, PushGate, PushOutcome, PushRequest
from followup_cli.push.provider_token import ProviderToken
from followup_cli.push.service import ServicePusher
from followup_cli.settings import Settings
from followup_cli.vocabulary import Outcome, Service

log = logging.getLogger("followups.push")

# APNs reasons that say our own setup is wrong: the same answer would come for every
# follow-up, so the run stops and marks nothing failed. TooManyProviderTokenUpdates is
# one: APNs refuses our token until 20 minutes after the key's last renewal (something
# else signs tokens with the same key, or a host's clock is far off).
CONFIG_REASONS = frozenset(
    {
        "InvalidProviderToken",
        "MissingProviderToken",
        "TooManyProviderTokenUpdates",
        "BadTopic",
        "MissingTopic",
        "TopicDisallowed",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "BadPath",
        "MethodNotAllowed",
        "InvalidPushType",
    }
)
# After these the connection takes no new streams; its other streams are still answered.
RETIRE_CONNECTION_REASONS = frozenset({"Timeout", "IdleTimeout", "Shutdown"})
# Transient answers that show APNs is up (429: too many pushes to one device): the
# outage breaker does not count them.
NOT_AN_OUTAGE_REASONS = frozenset({"TooManyRequests"})


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


class UnknownReason(Exception):
    """An error answer whose reason pyapns-client has no class for."""

    def __init__(self, status: int, reason: str, apns_id: str | None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.apns_id = status, reason, apns_id


def classify(exc: BaseException) -> tuple[Outcome, str, int | None, str | None]:
    """(kind, reason, HTTP status, apns-id) for an exception raised by one push attempt."""
    if isinstance(exc, apns_exc.APNSConnectionException | ConnectionLost):
        return Outcome.TRANSIENT, "ConnectionError", None, None
    if isinstance(exc, PushTimeout):
        return Outcome.TRANSIENT, "Timeout", None, None
    if isinstance(exc, NotProcessed):
        return Outcome.TRANSIENT, "NotProcessed", None, None
    if isinstance(exc, apns_exc.APNSException):
        reason = type(exc).__name__.removesuffix("Exception")
        status, apns_id = exc.status_code, exc.apns_id
        if reason in CONFIG_REASONS:
            return Outcome.CONFIG, reason, status, apns_id
        if isinstance(exc, apns_exc.APNSServerException):
            return Outcome.TRANSIENT, reason, status, apns_id
        # Device errors (BadDeviceToken, Unregistered, DeviceTokenNotForTopic) and the
        # remaining request errors (PayloadTooLarge, ...) concern this notification only.
        return Outcome.PERMANENT, reason, status, apns_id
    if isinstance(exc, UnknownReason):
        # A reason newer than pyapns-client (e.g. 410 ExpiredToken): judged by its status,
        # as APNs documents them: 410 a dead token, other 4xx this request, 5xx APNs.
        if exc.status >= 500:
            return Outcome.TRANSIENT, exc.reason, exc.status, exc.apns_id
        return Outcome.PERMANENT, exc.reason, exc.status, exc.apns_id
    if isinstance(exc, ValueError | KeyError):  # non-JSON body, 410 without timestamp
        return Outcome.TRANSIENT, "UnreadableResponse", None, None
    return Outcome.TRANSIENT, type(exc).__name__, None, None


def raise_for_answer(status: int, apns_id: str | None, body: bytes) -> None:
    """pyapns-client's reading of an error answer (client.APNSClient._push), unchanged:
    the reason names its exception class; 410 carries a timestamp."""
    if status == 200:
        return
    apns_data = json.loads(body.decode("utf-8", "replace"))
    reason = apns_data["reason"]
    try:
        exception_class = APNSClient._get_exception_class(reason)
    except NotImplementedError:
        safe = reason if isinstance(reason, str) and _WORD.fullmatch(reason) else "UnknownReason"
        raise UnknownReason(status, safe, apns_id) from None
    kwargs: dict[str, Any] = {"status_code": status, "apns_id": apns_id}
    if issubclass(exception_class, apns_exc.UnregisteredException):
        kwargs["timestamp"] = apns_data["timestamp"]
    raise exception_class(**kwargs)


class APNsPusher(ServicePusher):
    """Pushes through APNs; up to `concurrency` notifications in flight, on one connection
    at a time (a retired one finishes its streams while the next one takes new ones)."""

    service = Service.APNS
    name = "apns"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._settings = settings
        assert settings.apns_key_file and settings.apns_key_id and settings.apns_team_id
        key = load_pem_private_key(Path(settings.apns_key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the APNs key is not an ES256 key")
        self._token = ProviderToken(key, settings.apns_key_id, settings.apns_team_id)
        mode = APNSClient.MODE_PROD if settings.apns_env == "production" else APNSClient.MODE_DEV
        self._endpoint = H2Endpoint(
            settings.apns_url or APNSClient.BASE_URLS[mode],
            ca_file=settings.apns_ca_file,
            connect_timeout=settings.push_timeout_seconds,
            label="APNs",
        )

    async def _attempt_once(
        self, request: PushRequest, attempts: list[Attempt], gate: PushGate | None
    ) -> PushOutcome:
        at = utcnow()
        # No apns-id of ours: APNs makes one and answers with it (one header less to encode).
        headers = headers_for(request, self._settings.apns_topic)
        body = apns_body(request)
        path = f"/3/device/{request.device_token}"
        resends = 0
        renewed = fell_back = False
        while True:
            withheld = await self._request_allowed(request, attempts, gate)
            if withheld is not None:
                return withheld
            conn: H2Connection | None = None
            try:
                conn = await self._endpoint.connection(self._may_start)
                answer = await conn.request(
                    path,
                    headers,
                    body,
                    self._settings.push_timeout_seconds,
                    self._may_stream(request, gate),
                    authorization=self._authorization,
                )
                raise_for_answer(answer.status, answer.headers.get("apns-id"), bytes(answer.body))
            except Halted:
                return self._stopped_while_waiting(request, attempts, gate)
            except NotProcessed as exc:
                if resends < MAX_RESENDS:
                    resends += 1  # APNs never saw it: not an attempt
                    continue
                return self._failed(exc, at, attempts, conn)
            except apns_exc.ExpiredProviderTokenException as exc:
                if not renewed:
                    renewed = True
                    self._token.forget()
                    log.info("APNs called the provider token expired; signing it again")
                    continue
                # Still expired with a freshly signed token: this host's clock is off.
                return self._failed(exc, at, attempts, conn, kind=Outcome.CONFIG)
            except apns_exc.TooManyProviderTokenUpdatesException as exc:
                if not fell_back and self._token.fall_back():
                    fell_back = True  # not an attempt: the notification was never judged
                    log.warning(
                        "APNs refused this window's provider token as a renewal too soon "
                        "after the last one; using the previous window's token"
                    )
                    continue
                return self._failed(exc, at, attempts, conn)
            except Exception as exc:  # every failure is classified; none escapes as a crash
                return self._failed(exc, at, attempts, conn)
            break
        self.breaker.answered()
        answered = answer.headers.get("apns-id")
        attempts.append(Attempt(at, len(attempts) + 1, Outcome.SENT, None, 200, answered))
        return PushOutcome(Outcome.SENT, attempts)

    def _authorization(self) -> str:
        return f"bearer {self._token.current()}"

    def _failed(
        self,
        exc: Exception,
        at: datetime,
        attempts: list[Attempt],
        conn: H2Connection | None,
        *,
        kind: Outcome | None = None,
    ) -> PushOutcome:
        """Record a failed attempt; a transient one raises for backoff to retry."""
        classified, reason, status, answered_id = classify(exc)
        kind = kind or classified
        if kind == Outcome.TRANSIENT and reason in RETIRE_CONNECTION_REASONS and conn is not None:
            conn.retire()
        return self._record_failure(
            at,
            attempts,
            kind,
            reason,
            status,
            answered_id,
            outage=reason not in NOT_AN_OUTAGE_REASONS,
            cause=exc,
        )

    async def aclose(self) -> None:
        await self._endpoint.aclose()
