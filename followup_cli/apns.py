"""The APNs adapter: pyapns-client over keep-alive HTTP/2, with our retry policy.

Facts about pyapns-client 2.0.6 this module is shaped by:
- its push() retries server errors three times and resets the connection each time; we
  call its single-attempt path (_push) and retry with `backoff`, so a notification gets
  exactly MAX_ATTEMPTS attempts in all, not nine;
- its client disables keep-alive (a TLS handshake per push); ours keeps the connection;
- a shared client is unsafe across threads, so each worker thread gets its own;
- an unknown reason raises NotImplementedError, a non-JSON body a JSON error, a 410
  without timestamp a KeyError: all classified as transient, never a crash;
- its own payload trimming stops at 2,048 bytes; APNs allows 4,096 (see push.fit_body).
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid

import backoff
import httpx
import pyapns_client.exceptions as apns_exc
from pyapns_client import APNSClient, IOSNotification, IOSPayload, IOSPayloadAlert

from followup_cli.clock import utcnow
from followup_cli.push import (
    CONFIG,
    MAX_ATTEMPTS,
    MAX_PAYLOAD_BYTES,
    PERMANENT,
    SENT,
    TRANSIENT,
    Attempt,
    PushOutcome,
    PushRequest,
    encode_payload,
    fit_body,
)
from followup_cli.settings import Settings

log = logging.getLogger("followups.push")

# APNs reasons that say our own setup is wrong: the same answer would come for every
# follow-up, so the run stops and marks nothing failed.
CONFIG_REASONS = frozenset(
    {
        "InvalidProviderToken",
        "MissingProviderToken",
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
# Reasons after which the HTTP/2 connection is rebuilt before the next attempt.
RESET_CONNECTION_REASONS = frozenset({"ConnectionError", "IdleTimeout", "Shutdown"})


def classify(exc: BaseException) -> tuple[str, str, int | None, str | None]:
    """(kind, reason, HTTP status, apns-id) for an exception raised by one push attempt."""
    if isinstance(exc, apns_exc.APNSConnectionException):
        return TRANSIENT, "ConnectionError", None, None
    if isinstance(exc, apns_exc.APNSException):
        reason = type(exc).__name__.removesuffix("Exception")
        status, apns_id = exc.status_code, exc.apns_id
        if reason in CONFIG_REASONS:
            return CONFIG, reason, status, apns_id
        if isinstance(exc, apns_exc.APNSServerException):
            return TRANSIENT, reason, status, apns_id
        # Device errors (BadDeviceToken, Unregistered, DeviceTokenNotForTopic) and the
        # remaining request errors (PayloadTooLarge, ...) concern this notification only.
        return PERMANENT, reason, status, apns_id
    if isinstance(exc, NotImplementedError):  # a reason string pyapns-client does not know
        return TRANSIENT, "UnknownReason", None, None
    if isinstance(exc, ValueError | KeyError):  # non-JSON body, 410 without timestamp
        return TRANSIENT, "UnreadableResponse", None, None
    return TRANSIENT, type(exc).__name__, None, None


class FittedPayload(IOSPayload):
    """pyapns-client's payload with APNs' real 4 KB limit and compact UTF-8 JSON. The body
    is already cut by fit_body, so the library's own trimming never runs."""

    MAX_PAYLOAD_SIZE = MAX_PAYLOAD_BYTES

    def _to_json(self, alert_body: str | None = None) -> bytes:
        return encode_payload(self.to_dict(alert_body=alert_body))


class KeepAliveAPNSClient(APNSClient):
    """APNSClient that keeps its HTTP/2 connection, honours FOLLOWUPS_APNS_URL and
    FOLLOWUPS_APNS_CA_FILE, and exposes one attempt without the library's retry loop."""

    def __init__(self, settings: Settings) -> None:
        mode = self.MODE_PROD if settings.apns_env == "production" else self.MODE_DEV
        super().__init__(
            mode=mode,
            root_cert_path=None,
            auth_key_path=str(settings.apns_key_file),
            auth_key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
        )
        if settings.apns_url:
            self._base_url = settings.apns_url.rstrip("/")
        self._timeout = settings.push_timeout_seconds
        cafile = str(settings.apns_ca_file) if settings.apns_ca_file else None
        self._ssl = ssl.create_default_context(cafile=cafile)

    _client_storage: httpx.Client | None

    @property
    def _client(self) -> httpx.Client:
        if self._client_storage is None:
            self._client_storage = httpx.Client(
                auth=self._authenticate_request,
                verify=self._ssl,
                http2=True,
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                base_url=self._base_url,
            )
        return self._client_storage

    def _send_request(
        self, headers: dict[str, str], json_data: bytes, device_token: str
    ) -> httpx.Response:
        # As the library's, with content= (its data= for raw bytes is deprecated in httpx).
        return self._client.post(f"/3/device/{device_token}", content=json_data, headers=headers)

    def push_once(self, notification: IOSNotification, device_token: str) -> None:
        """One attempt; raises pyapns-client's exception classes on failure."""
        self._push(
            headers=notification.get_headers(),
            json_data=notification.get_json_data(),
            device_token=device_token,
        )


class _Retry(Exception):
    """One transient attempt failed; backoff decides whether to try again."""


class APNsPusher:
    name = "apns"

    def __init__(self, settings: Settings) -> None:
        self.concurrency = settings.push_concurrency
        self._settings = settings
        self._local = threading.local()
        self._clients: list[KeepAliveAPNSClient] = []
        self._clients_lock = threading.Lock()
        self._attempt_with_retries = backoff.on_exception(
            backoff.expo,
            _Retry,
            max_tries=MAX_ATTEMPTS,
            jitter=backoff.full_jitter,
            factor=settings.retry_base_seconds,
            logger=None,  # backoff's logger would print the call's arguments
            raise_on_giveup=False,
        )(self._attempt)

    def push(self, request: PushRequest) -> PushOutcome:
        attempts: list[Attempt] = []
        outcome = self._attempt_with_retries(request, attempts)
        if outcome is None:  # every attempt was transient
            return PushOutcome(TRANSIENT, attempts)
        return outcome

    def _attempt(self, request: PushRequest, attempts: list[Attempt]) -> PushOutcome:
        client = self._client()
        apns_id = str(uuid.uuid4())
        at = utcnow()
        try:
            client.push_once(self.notification(request, apns_id), request.device_token)
        except Exception as exc:  # every failure is classified; none escapes as a crash
            kind, reason, status, answered_id = classify(exc)
            attempts.append(
                Attempt(at, len(attempts) + 1, kind, reason, status, answered_id or apns_id)
            )
            if kind != TRANSIENT:
                return PushOutcome(kind, attempts)
            if reason == "ExpiredProviderToken":
                client._reset_auth_token()
            if reason in RESET_CONNECTION_REASONS:
                client._reset_client()
            raise _Retry() from exc
        attempts.append(Attempt(at, len(attempts) + 1, SENT, None, 200, apns_id))
        return PushOutcome(SENT, attempts)

    def notification(self, request: PushRequest, apns_id: str | None = None) -> IOSNotification:
        payload = FittedPayload(
            alert=IOSPayloadAlert(title=request.title, body=fit_body(request)),
            sound="default",
            thread_id=request.conversation_id,
            interruption_level=request.interruption_level,
            custom={
                "conversation_id": request.conversation_id,
                "type": "follow_up",
                "follow_up_id": request.follow_up_id,
            },
        )
        return IOSNotification(
            payload=payload,
            topic=self._settings.apns_topic,
            apns_id=apns_id,
            collapse_id=request.follow_up_id,
            priority=request.priority,
            push_type=IOSNotification.PUSH_TYPE_ALERT,
        )

    def _client(self) -> KeepAliveAPNSClient:
        client: KeepAliveAPNSClient | None = getattr(self._local, "client", None)
        if client is None:
            client = KeepAliveAPNSClient(self._settings)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort at the end of a run
                log.debug("closing an APNs client failed", exc_info=True)
