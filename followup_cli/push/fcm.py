"""The FCM adapter: Firebase Cloud Messaging's HTTP v1 API
(`POST /v1/projects/{project}/messages:send`), over h2client's HTTP/2 connection (many
concurrent streams on one connection, as for APNs), with OAuth 2 access tokens of a
Google service account.

- The service account's key file is read with google-auth, which signs the JWT
  assertion and fetches the access token from the file's token_uri.
- Access tokens cannot be computed afresh by every process, as APNs' provider token is.
  They are kept in followups_push_credentials and shared by every run and host: a
  process renews the stored token REFRESH_MARGIN before it expires, after winning a
  compare-and-set on the row, while the others keep using the stored one or wait for the
  new one. A 401 refusal of the token renews it once; a second one is a configuration
  error.
- FOLLOWUPS_FCM_CA_FILE, when set, is the only trust root for both the token endpoint
  and FCM. requests would let REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace a session's
  `verify`, so it is passed with every token request instead.
- Errors are sorted as FCM documents them (docs/reliability.md): UNREGISTERED and an
  INVALID_ARGUMENT about the registration token are dead tokens; other INVALID_ARGUMENTs
  are this notification's; SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR and a refused
  access token are configuration; QUOTA_EXCEEDED, UNAVAILABLE and INTERNAL are transient,
  and their Retry-After is the shortest wait before the next attempt.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
from followup_cli.push.payload import (
    CONTENT_TYPE,
    MAX_PAYLOAD_BYTES,
    encode_payload,
    fit_body,
    payload_dict,
)
from followup_cli.push.protocol import Attempt, PushGate, PushOutcome, PushRequest
from followup_cli.push.service import ServicePusher
from followup_cli.settings import FCM_DEFAULT_URL, Settings, read_fcm_credentials
from followup_cli.vocabulary import Outcome, Service

if TYPE_CHECKING:
    from followup_cli.db import Database
    from followup_cli.repository import StoredCredential

log = logging.getLogger("followups.push")

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# A stored access token is renewed this long before it expires (Google's last an hour).
REFRESH_MARGIN = timedelta(minutes=5)
# While another process renews, a token with at least this much left is used meanwhile.
STILL_USABLE = timedelta(seconds=60)
# A renewal started longer ago than this is taken over (its process died or hangs).
RENEWAL_TIMEOUT = timedelta(seconds=30)
RENEWAL_POLL_SECONDS = 0.2
# A Retry-After longer than this is not waited out within a run: the run stops pushing
# to FCM (an outage stop: nothing failed) and the next run tries again.
MAX_RETRY_AFTER_SECONDS = 30.0

# FCM's error codes (google.firebase.fcm.v1.FcmError, or the status of the error when it
# carries none) and our failure classes.
CONFIG_REASONS = frozenset(
    {
        "SENDER_ID_MISMATCH",
        "THIRD_PARTY_AUTH_ERROR",
        "UNAUTHENTICATED",  # the access token refused twice, the second one fresh
        "PERMISSION_DENIED",  # the service account lacks the role, or the API is off
        "NOT_FOUND",  # no such project (a dead token answers UNREGISTERED)
        "TOKEN_REFUSED",  # the token endpoint refused our service account's assertion
    }
)
TRANSIENT_REASONS = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})
# How INVALID_ARGUMENT names the registration token as the culprit.
_TOKEN_FIELD = "message.token"
_TOKEN_MESSAGE = re.compile(r"registration token", re.IGNORECASE)
_SAFE_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_./:%-]{1,200}")
_SAFE_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")
# FCM hands an iPhone the same payload as the APNs pusher plus keys of its own
# (gcm.message_id, google.c.*), all within APNs' 4,096 bytes: the body is cut this much
# shorter.
FCM_PAYLOAD_MARGIN = 256


def fcm_message(req: PushRequest) -> dict[str, Any]:
    """The messages:send body: the same content and semantics as the APNs payload (the
    generic body of FOLLOWUPS_PUSH_BODY=generic too, built in push.payload.build_request), in FCM
    v1's shape (which refuses unknown fields, such as the legacy notification.sound)."""
    priority = "high" if req.urgent else "normal"
    # The APNs payload's aps, less the alert (FCM builds it from `notification`).
    aps = {k: v for k, v in payload_dict(req)["aps"].items() if k != "alert"}
    return {
        "message": {
            "token": req.device_token,
            "notification": {
                "title": req.title,
                "body": fit_body(req, MAX_PAYLOAD_BYTES - FCM_PAYLOAD_MARGIN),
            },
            # FCM data values must be strings.
            "data": {
                "conversation_id": req.conversation_id,
                "type": "follow_up",
                "follow_up_id": req.follow_up_id,
            },
            "android": {
                "priority": priority,
                "collapse_key": req.follow_up_id,
                "notification": {"sound": "default"},
            },
            # For FCM tokens on iPhones: what the APNs pusher puts in its headers and aps.
            "apns": {
                "headers": {"apns-collapse-id": req.follow_up_id, "apns-priority": req.priority},
                "payload": {"aps": aps},
            },
        }
    }


def fcm_headers() -> dict[str, str]:
    """The request headers besides the bearer token (test-send shows these)."""
    return {"content-type": CONTENT_TYPE}  # the same as every APNs request


def fcm_path(project_id: str) -> str:
    return f"/v1/projects/{project_id}/messages:send"


@dataclass(frozen=True)
class FcmError:
    """One error answer of messages:send, reduced to what decides its class."""

    http_status: int
    code: str  # the FcmError errorCode, else the error's status, else "HTTP_<status>"
    token_field: bool  # INVALID_ARGUMENT names the registration token
    retry_after: float | None

    @property
    def access_token_refused(self) -> bool:
        return self.http_status == 401 and self.code == "UNAUTHENTICATED"


def read_error(status: int, headers: dict[str, str], body: bytes) -> FcmError:
    """Google's error shape: {"error": {"code", "message", "status", "details": [...]}},
    details carrying an FcmError (errorCode) and a BadRequest (fieldViolations)."""
    code: str | None = None
    token_field = False
    try:
        error = json.loads(body.decode("utf-8", "replace")).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    fields: list[str] = []
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.firebase.fcm.v1.FcmError"):
            code = detail.get("errorCode") if isinstance(detail.get("errorCode"), str) else code
        elif kind.endswith("google.rpc.BadRequest"):
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, dict):
                    fields.append(str(violation.get("field", "")))
    code = code or (error.get("status") if isinstance(error.get("status"), str) else None)
    if code == "INVALID_ARGUMENT":
        message = str(error.get("message", ""))
        token_field = _TOKEN_FIELD in fields or (
            not fields and bool(_TOKEN_MESSAGE.search(message))
        )
    if code is None or not _SAFE_CODE.fullmatch(code):
        code = f"HTTP_{status}"
    return FcmError(status, code, token_field, retry_after_seconds(headers.get("retry-after")))


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - utcnow()).total_seconds())


def classify(error: FcmError) -> tuple[Outcome, str]:
    """(kind, reason) of an error answer (not the access-token refusal, renewed first)."""
    code = error.code
    if code == "INVALID_ARGUMENT":
        return Outcome.PERMANENT, "INVALID_REGISTRATION_TOKEN" if error.token_field else code
    if code == "UNREGISTERED":
        return Outcome.PERMANENT, code
    if code in CONFIG_REASONS:
        return Outcome.CONFIG, code
    if code in TRANSIENT_REASONS or error.http_status >= 500 or error.http_status == 429:
        return Outcome.TRANSIENT, code
    # Any other request error concerns this notification only.
    return Outcome.PERMANENT, code


# -- access tokens ------------------------------------------------------------------------


class TokenUnavailable(Exception):
    """No access token: the token endpoint refused us (`config`) or could not be reached."""

    def __init__(self, reason: str, *, config: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.config = config


class CredentialStore(Protocol):
    """Where access tokens are shared; the compare-and-set rules are the repository's."""

    def read(self, name: str) -> StoredCredential | None: ...

    def claim_renewal(self, name: str, now: datetime, stale_before: datetime) -> bool: ...

    def store(self, name: str, token: str, expires_at: datetime, now: datetime) -> None: ...

    def abandon_renewal(self, name: str) -> None: ...

    def expire(self, name: str, token: str, now: datetime) -> None: ...


class DatabaseCredentialStore:
    """followups_push_credentials: shared by every run and host."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def read(self, name: str) -> StoredCredential | None:
        with self._db.transaction() as repo:
            return repo.push_credential(name)

    def claim_renewal(self, name: str, now: datetime, stale_before: datetime) -> bool:
        with self._db.transaction() as repo:
            return repo.claim_credential_renewal(name, now, stale_before)

    def store(self, name: str, token: str, expires_at: datetime, now: datetime) -> None:
        with self._db.transaction() as repo:
            repo.store_credential(name, token, expires_at, now)

    def abandon_renewal(self, name: str) -> None:
        with self._db.transaction() as repo:
            repo.abandon_credential_renewal(name)

    def expire(self, name: str, token: str, now: datetime) -> None:
        with self._db.transaction() as repo:
            repo.expire_credential(name, token, now)


class MemoryCredentialStore:
    """This process only (no database given): each process fetches its own token."""

    def __init__(self) -> None:
        from followup_cli.repository import StoredCredential

        self._make = StoredCredential
        self._rows: dict[str, StoredCredential] = {}
        self._lock = threading.Lock()

    def read(self, name: str) -> StoredCredential | None:
        with self._lock:
            return self._rows.get(name)

    def claim_renewal(self, name: str, now: datetime, stale_before: datetime) -> bool:
        with self._lock:
            row = self._rows.get(name)
            if row is not None and row.renewal_started_at is not None:
                if row.renewal_started_at >= stale_before:
                    return False
            token, expires = (row.token, row.expires_at) if row else (None, None)
            self._rows[name] = self._make(token, expires, now)
            return True

    def store(self, name: str, token: str, expires_at: datetime, now: datetime) -> None:
        with self._lock:
            self._rows[name] = self._make(token, expires_at, None)

    def abandon_renewal(self, name: str) -> None:
        with self._lock:
            row = self._rows.get(name)
            if row is not None:
                self._rows[name] = self._make(row.token, row.expires_at, None)

    def expire(self, name: str, token: str, now: datetime) -> None:
        with self._lock:
            row = self._rows.get(name)
            if row is not None and row.token == token:
                self._rows[name] = self._make(row.token, now, row.renewal_started_at)


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: datetime


class AccessTokens:
    """The service account's current access token, shared through `store`: fetched by one
    process at a time and reused by every other until REFRESH_MARGIN before it expires.

    current() may be awaited by many pushes at once: one of them renews, the others wait
    for it, and when that renewal fails they all get its error (no retry storm)."""

    def __init__(
        self, name: str, store: CredentialStore, fetch: Callable[[], tuple[str, datetime]]
    ) -> None:
        self._name = name
        self._store = store
        self._fetch = fetch
        self._cached: _Token | None = None
        self._refused: str | None = None  # the last token the service refused
        self._lock: asyncio.Lock | None = None
        self._round = 0  # renewals finished (or failed) in this process
        self._last_error: TokenUnavailable | None = None

    def _fresh(self, token: _Token | None) -> bool:
        return token is not None and token.expires_at - REFRESH_MARGIN > utcnow()

    async def current(self) -> str:
        cached = self._cached
        if cached is not None and self._fresh(cached):
            return cached.value
        if self._lock is None:
            self._lock = asyncio.Lock()
        round_seen = self._round
        async with self._lock:
            cached = self._cached
            if cached is not None and self._fresh(cached):
                return cached.value
            if self._round != round_seen and self._last_error is not None:
                raise self._last_error  # the renewal this push waited for failed
            try:
                token = await asyncio.get_running_loop().run_in_executor(None, self._obtain)
            except TokenUnavailable as exc:
                self._last_error = exc
                raise
            finally:
                self._round += 1
            self._last_error = None
            self._cached = token
            return token.value

    def latest(self, in_hand: str) -> str:
        """The token to send as a stream starts: the freshest one known, or `in_hand`.
        One that FCM refused while this push waited is not sent: NotProcessed sends the
        push back to fetch the renewed token (current())."""
        cached = self._cached
        if cached is not None and self._fresh(cached):
            return cached.value
        if in_hand == self._refused:
            raise NotProcessed()
        return in_hand

    async def refused(self, value: str) -> None:
        """The service refused this token (401): drop it here and in the store (unless
        another process has replaced it already), so that the next current() renews."""
        self._refused = value
        if self._cached is not None and self._cached.value == value:
            self._cached = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._store.expire, self._name, value, utcnow())

    def _obtain(self) -> _Token:
        """Runs in a worker thread: the stored token, or a new one (compare-and-set)."""
        deadline = time.monotonic() + 2 * RENEWAL_TIMEOUT.total_seconds()
        while True:
            now = utcnow()
            row = self._store.read(self._name)
            stored = (
                _Token(row.token, row.expires_at)
                if row is not None
                and row.token
                and row.expires_at is not None
                # Refused by the service (its expiry may not be in the store yet): renew.
                and row.token != self._refused
                else None
            )
            if stored is not None and self._fresh(stored):
                return stored
            if self._store.claim_renewal(self._name, now, now - RENEWAL_TIMEOUT):
                return self._renew()
            # Another process is renewing: use the old token while it lasts, else wait.
            if stored is not None and stored.expires_at - STILL_USABLE > now:
                return stored
            if time.monotonic() > deadline:
                raise TokenUnavailable("TOKEN_RENEWAL_TIMEOUT", config=False)
            time.sleep(RENEWAL_POLL_SECONDS)

    def _renew(self) -> _Token:
        try:
            value, expires_at = self._fetch()
        except TokenUnavailable:
            self._store.abandon_renewal(self._name)
            raise
        self._store.store(self._name, value, expires_at, utcnow())
        return _Token(value, expires_at)


def service_account_fetcher(
    info: dict[str, Any], ca_file: Path | None, timeout: float
) -> Callable[[], tuple[str, datetime]]:
    """A function fetching a new access token with google-auth: the JWT assertion signed
    with the service account's key, exchanged at its token_uri."""
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    verify = str(ca_file) if ca_file is not None else None

    class TokenRequest(google.auth.transport.requests.Request):
        """google-auth's requests transport with our CA file passed on each request:
        requests consults REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE only when the request
        itself leaves `verify` unset, whatever the session's own `verify` says."""

        def __call__(
            self,
            url: Any,
            method: Any = "GET",
            body: Any = None,
            headers: Any = None,
            timeout: Any = timeout,
            **kwargs: Any,
        ) -> Any:
            if verify is not None:
                kwargs["verify"] = verify
            return super().__call__(url, method, body, headers, timeout, **kwargs)

    request = TokenRequest()

    def fetch() -> tuple[str, datetime]:
        try:
            credentials.refresh(request)
        except google.auth.exceptions.RefreshError as exc:
            code = _oauth_error(exc)
            retryable = bool(getattr(exc, "retryable", False))
            log.warning(
                "the token endpoint refused the FCM service account's assertion (%s)%s",
                code,
                "; will retry" if retryable else "",
            )
            reason = "TOKEN_ENDPOINT_UNAVAILABLE" if retryable else "TOKEN_REFUSED"
            raise TokenUnavailable(reason, config=not retryable) from exc
        except google.auth.exceptions.TransportError as exc:
            log.warning("cannot reach the FCM token endpoint (%s)", _cause_name(exc))
            raise TokenUnavailable("TOKEN_ENDPOINT_UNREACHABLE", config=False) from exc
        expiry = credentials.expiry
        if not credentials.token or expiry is None:
            raise TokenUnavailable("TOKEN_REFUSED", config=True)
        expires_at = expiry.replace(tzinfo=UTC) if expiry.tzinfo is None else expiry
        return str(credentials.token), expires_at

    return fetch


def _oauth_error(exc: Exception) -> str:
    """The OAuth error code of a refusal (e.g. invalid_grant), a safe word or '-'."""
    for arg in exc.args:
        if isinstance(arg, dict) and isinstance(arg.get("error"), str):
            code = arg["error"]
            return code if _SAFE_OAUTH_ERROR.fullmatch(code) else "-"
    return "-"


def _cause_name(exc: BaseException) -> str:
    cause = exc.__cause__ or (exc.args[0] if exc.args else None)
    return type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__


# -- the pusher ---------------------------------------------------------------------------


class FCMPusher(ServicePusher):
    """Pushes through FCM HTTP v1; up to `concurrency` messages in flight as HTTP/2
    streams on one connection at a time."""

    service = Service.FCM
    name = "fcm"

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        super().__init__(settings)
        self._timeout = settings.push_timeout_seconds
        info, project = read_fcm_credentials(settings, load_key=False)
        self._path = fcm_path(project)
        store: CredentialStore = (
            DatabaseCredentialStore(db) if db is not None else MemoryCredentialStore()
        )
        self.tokens = AccessTokens(
            f"fcm:{info['client_email']}",
            store,
            service_account_fetcher(info, settings.fcm_ca_file, self._timeout),
        )
        self._endpoint = H2Endpoint(
            settings.fcm_url or FCM_DEFAULT_URL,
            ca_file=settings.fcm_ca_file,
            connect_timeout=self._timeout,
            label="FCM",
            # FCM keeps its stream limit high through an outage (APNs drops to one after a
            # failure): while the breaker is suspect, streams already waiting go one at a
            # time too, so an outage costs about the threshold's worth of requests.
            one_at_a_time=lambda: self.breaker.suspect,
        )

    def _authorization(self, in_hand: str) -> str:
        return f"Bearer {self.tokens.latest(in_hand)}"

    async def _attempt_once(
        self, request: PushRequest, attempts: list[Attempt], gate: PushGate | None
    ) -> PushOutcome:
        at = utcnow()
        body = encode_payload(fcm_message(request))
        resends = 0
        renewed = False
        while True:
            withheld = await self._request_allowed(request, attempts, gate)
            if withheld is not None:
                return withheld
            try:
                token = await self.tokens.current()
            except TokenUnavailable as exc:
                kind = Outcome.CONFIG if exc.config else Outcome.TRANSIENT
                return self._failed(at, attempts, kind, exc.reason, None, cause=exc)
            if not self._may_start():  # the service stopped while this push waited
                return self._halted(attempts)
            headers = {"authorization": f"Bearer {token}", **fcm_headers()}
            conn: H2Connection | None = None
            try:
                conn = await self._endpoint.connection(self._may_start)
                answer = await conn.request(
                    self._path,
                    headers,
                    body,
                    self._timeout,
                    self._may_stream(request, gate),
                    authorization=functools.partial(self._authorization, token),
                )
            except Halted:
                return self._stopped_while_waiting(request, attempts, gate)
            except NotProcessed as exc:
                if resends < MAX_RESENDS:
                    resends += 1  # FCM never saw it: not an attempt
                    continue
                return self._failed(
                    at, attempts, Outcome.TRANSIENT, "NotProcessed", None, cause=exc
                )
            except PushTimeout as exc:
                if conn is not None:
                    conn.retire()
                return self._failed(at, attempts, Outcome.TRANSIENT, "Timeout", None, cause=exc)
            except ConnectionLost as exc:
                return self._failed(
                    at, attempts, Outcome.TRANSIENT, "ConnectionError", None, cause=exc
                )
            if answer.status == 200:
                break
            error = read_error(answer.status, answer.headers, bytes(answer.body))
            if error.access_token_refused:
                if not renewed:
                    renewed = True
                    log.info("FCM refused the access token; fetching a new one")
                    await self.tokens.refused(token)
                    continue
                # Refused again, freshly fetched: the service account cannot send.
                return self._failed(at, attempts, Outcome.CONFIG, error.code, answer.status)
            kind, reason = classify(error)
            if kind == Outcome.TRANSIENT and (error.retry_after or 0) > MAX_RETRY_AFTER_SECONDS:
                log.warning(
                    "FCM asks to wait %.0f s (%s): no more FCM pushes in this run",
                    error.retry_after,
                    reason,
                )
                self.breaker.trip(reason)
            return self._failed(
                at,
                attempts,
                kind,
                reason,
                answer.status,
                retry_after=error.retry_after,
            )
        self.breaker.answered()
        attempts.append(
            Attempt(at, len(attempts) + 1, Outcome.SENT, None, 200, _message_name(answer.body))
        )
        return PushOutcome(Outcome.SENT, attempts)

    def _failed(
        self,
        at: datetime,
        attempts: list[Attempt],
        kind: Outcome,
        reason: str,
        status: int | None,
        *,
        cause: BaseException | None = None,
        retry_after: float | None = None,
    ) -> PushOutcome:
        return self._record_failure(
            at,
            attempts,
            kind,
            reason,
            status,
            None,
            outage=True,
            cause=cause,
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        await self._endpoint.aclose()


def _message_name(body: bytearray) -> str | None:
    """FCM's id of the message sent ("projects/p/messages/0:123..."), kept as apns_id."""
    try:
        name = json.loads(bytes(body)).get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and _SAFE_NAME.fullmatch(name) else None
