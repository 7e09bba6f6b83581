"""The FCM service account's OAuth 2 access tokens.

- The service account's key file is read with google-auth, which signs the JWT
  assertion and fetches the access token from the file's token_uri.
- Access tokens cannot be computed afresh by every process, as APNs' provider token is.
  They are kept in followups_push_credentials and shared by every run and host: a
  process renews the stored token REFRESH_MARGIN before it expires, after winning a
  compare-and-set on the row, while the others keep using the stored one or wait for the
  new one. A 401 refusal of the token renews it once (push.fcm.pusher); a second one is
  a configuration error.
- FOLLOWUPS_FCM_CA_FILE, when set, is the only trust root for the token endpoint too.
  requests would let REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace a session's `verify`,
  so it is passed with every token request instead.
"""

from __future__ import annotations

import asyncio
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
from followup_cli.push.h2client import NotProcessed
from followup_cli.push.service import CredentialUnavailable

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
_SAFE_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")


class TokenUnavailable(CredentialUnavailable):
    """No access token: the token endpoint refused us (`config`) or could not be reached."""


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
