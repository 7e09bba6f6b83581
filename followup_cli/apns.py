"""The APNs adapter: pyapns-client's notification, token and error classes, sent as
many concurrent HTTP/2 streams over one connection from an asyncio event loop.

Why not pyapns-client's own push(): it is synchronous and opens a TLS connection per
push (keep-alive off); a shared client is unsafe across threads; its push() retries
server errors three times by itself (so any outer retry would multiply attempts). Sending
through httpx costs about 2-3 ms of CPU per push here; this module's small HTTP/2 client
on the `h2` state machine costs about a fifth of that, which is what lets one process
deliver over a thousand follow-ups a second. What stays pyapns-client's: the payload and
headers (IOSNotification / IOSPayload), the provider token (APNSClient._auth_token, ES256,
renewed after 45 minutes or on ExpiredProviderToken) and the mapping from APNs' reason to
its exception classes, which `classify` sorts into our failure classes.

Each notification gets MAX_ATTEMPTS attempts in all (backoff: exponential, full jitter).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import backoff
import h2.config
import h2.connection
import h2.events
import h2.exceptions
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
    EventLoopOwner,
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
# Reasons after which the connection is dropped and a new one made for the next attempt.
RESET_CONNECTION_REASONS = frozenset({"ConnectionError", "IdleTimeout", "Shutdown", "Timeout"})


class PushTimeout(Exception):
    """APNs did not answer within FOLLOWUPS_PUSH_TIMEOUT."""


def classify(exc: BaseException) -> tuple[str, str, int | None, str | None]:
    """(kind, reason, HTTP status, apns-id) for an exception raised by one push attempt."""
    if isinstance(exc, apns_exc.APNSConnectionException):
        return TRANSIENT, "ConnectionError", None, None
    if isinstance(exc, PushTimeout):
        return TRANSIENT, "Timeout", None, None
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


def raise_for_answer(status: int, apns_id: str | None, body: bytes) -> None:
    """pyapns-client's reading of an error answer (client.APNSClient._push), unchanged:
    the reason names its exception class; 410 carries a timestamp."""
    if status == 200:
        return
    apns_data = json.loads(body.decode("utf-8", "replace"))
    reason = apns_data["reason"]
    exception_class = APNSClient._get_exception_class(reason)
    kwargs: dict[str, Any] = {"status_code": status, "apns_id": apns_id}
    if issubclass(exception_class, apns_exc.UnregisteredException):
        kwargs["timestamp"] = apns_data["timestamp"]
    raise exception_class(**kwargs)


class FittedPayload(IOSPayload):
    """pyapns-client's payload with APNs' real 4 KB limit and compact UTF-8 JSON. The body
    is already cut by fit_body, so the library's own 2 KB trimming never runs."""

    MAX_PAYLOAD_SIZE = MAX_PAYLOAD_BYTES

    def _to_json(self, alert_body: str | None = None) -> bytes:
        return encode_payload(self.to_dict(alert_body=alert_body))


class _Answer:
    __slots__ = ("status", "headers", "body")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to APNs: many concurrent streams, flow control honoured,
    every pending request failed (as a connection error) when the connection goes."""

    def __init__(self, authority: str) -> None:
        self._authority = authority
        # Our headers are built valid, so h2's per-header validation (a large share of the
        # CPU per push) is skipped; normalising stays (it lower-cases and encodes them).
        self._h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(
                client_side=True, header_encoding="utf-8", validate_outbound_headers=False
            )
        )
        # Huffman-coding each new header value (path, collapse id) costs more CPU than the
        # few bytes it saves on a local link to APNs.
        encode = self._h2.encoder.encode
        self._h2.encoder.encode = lambda headers, huffman=True: encode(headers, huffman=False)  # type: ignore[method-assign]
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._answers: dict[int, _Answer] = {}
        self._waiters: dict[int, asyncio.Future[_Answer]] = {}
        self._unsent: dict[int, memoryview] = {}  # request bodies waiting for window
        self._slot_waiters: list[asyncio.Future[None]] = []
        self.closed = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._fail_all()
            return
        for event in events:
            self._on_event(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all()

    # -- requests

    async def request(
        self, path: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> _Answer:
        await self._wait_for_stream_slot(timeout)
        if self.closed:
            raise apns_exc.APNSConnectionException()
        stream_id = self._h2.get_next_available_stream_id()
        waiter: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = waiter
        self._answers[stream_id] = _Answer()
        self._h2.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", self._authority),
                (":path", path),
                *headers.items(),
            ],
        )
        self._unsent[stream_id] = memoryview(body)
        self._send_pending()
        self._flush_soon()
        # A timer instead of asyncio.wait_for: this runs for every push and must be cheap.
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, stream_id)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiters.pop(stream_id, None)
            self._answers.pop(stream_id, None)

    def _time_out(self, stream_id: int) -> None:
        waiter = self._waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(PushTimeout())
            self._forget(stream_id, reset=True)

    async def _wait_for_stream_slot(self, timeout: float) -> None:
        """APNs caps concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)."""
        loop = asyncio.get_running_loop()
        while (
            not self.closed
            and self._h2.open_outbound_streams >= self._h2.remote_settings.max_concurrent_streams
        ):
            slot: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(slot)
            timer = loop.call_later(timeout, _expire, slot)
            try:
                await slot
            finally:
                timer.cancel()

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            try:
                self._h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self._transport.close()
        self._fail_all()

    # -- internals

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            answer = self._answers.get(event.stream_id)
            if answer is not None:
                headers = {str(k): str(v) for k, v in event.headers}
                answer.status = int(headers.get(":status", "0"))
                answer.headers = headers
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            answer = self._answers.get(event.stream_id)
            if answer is not None:
                answer.body.extend(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._forget(event.stream_id, reset=False)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._send_pending()
            self._notify_capacity()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # GOAWAY: no new streams here; streams above last_stream_id were not processed.
            self.closed = True
            for stream_id in list(self._waiters):
                if event.last_stream_id is None or stream_id > event.last_stream_id:
                    self._forget(stream_id, reset=False)
            self._notify_capacity()

    def _finish(self, stream_id: int) -> None:
        waiter = self._waiters.get(stream_id)
        answer = self._answers.get(stream_id)
        if waiter is not None and answer is not None and not waiter.done():
            waiter.set_result(answer)
        self._notify_capacity()

    def _forget(self, stream_id: int, *, reset: bool) -> None:
        self._unsent.pop(stream_id, None)
        if reset and not self.closed:
            try:
                self._h2.reset_stream(stream_id)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
        waiter = self._waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(apns_exc.APNSConnectionException())
        self._notify_capacity()

    def _send_pending(self) -> None:
        for stream_id in list(self._unsent):
            data = self._unsent[stream_id]
            try:
                window = self._h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                self._unsent.pop(stream_id, None)
                continue
            size = min(window, self._h2.max_outbound_frame_size, len(data))
            while size > 0:
                self._h2.send_data(stream_id, data[:size].tobytes())
                data = data[size:]
                window -= size
                size = min(window, self._h2.max_outbound_frame_size, len(data))
            if len(data) == 0:
                self._h2.end_stream(stream_id)
                del self._unsent[stream_id]
            else:
                self._unsent[stream_id] = data

    def _flush_soon(self) -> None:
        """One TLS write for all the requests made in this turn of the event loop."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _notify_capacity(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for slot in waiters:
            if not slot.done():
                slot.set_result(None)

    def _fail_all(self) -> None:
        self.closed = True
        for stream_id in list(self._waiters):
            self._forget(stream_id, reset=False)


class APNsPusher(EventLoopOwner):
    """Pushes through APNs; up to `concurrency` notifications in flight on one connection."""

    name = "apns"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.concurrency = settings.push_concurrency
        self._settings = settings
        mode = APNSClient.MODE_PROD if settings.apns_env == "production" else APNSClient.MODE_DEV
        # Only for its provider token (and key loading): no HTTP client is ever made.
        self._tokens = APNSClient(
            mode=mode,
            root_cert_path=None,
            auth_key_path=str(settings.apns_key_file),
            auth_key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
        )
        base = urlsplit(settings.apns_url or APNSClient.BASE_URLS[mode])
        self._host = base.hostname or "api.push.apple.com"
        self._port = base.port or 443
        self._authority = self._host if self._port == 443 else f"{self._host}:{self._port}"
        self._conn: H2Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._push_with_retries: Callable[..., Any] = backoff.on_exception(
            backoff.expo,
            _Retry,
            max_tries=MAX_ATTEMPTS,
            jitter=backoff.full_jitter,
            factor=settings.retry_base_seconds,
            logger=None,  # backoff's logger would print the call's arguments
            raise_on_giveup=False,
        )(self._attempt)

    async def push(self, request: PushRequest) -> PushOutcome:
        attempts: list[Attempt] = []
        outcome = await self._push_with_retries(request, attempts)
        if outcome is None:  # every attempt was transient
            return PushOutcome(TRANSIENT, attempts)
        assert isinstance(outcome, PushOutcome)
        return outcome

    async def _attempt(self, request: PushRequest, attempts: list[Attempt]) -> PushOutcome:
        at = utcnow()
        # No apns-id of ours: APNs makes one and answers with it (one header less to encode).
        notification = self.notification(request)
        headers = notification.get_headers()
        headers["authorization"] = f"bearer {self._tokens._auth_token}"
        try:
            conn = await self._connection()
            answer = await conn.request(
                f"/3/device/{request.device_token}",
                headers,
                notification.get_json_data(),
                self._settings.push_timeout_seconds,
            )
            raise_for_answer(answer.status, answer.headers.get("apns-id"), bytes(answer.body))
        except Exception as exc:  # every failure is classified; none escapes as a crash
            kind, reason, status, answered_id = classify(exc)
            attempts.append(Attempt(at, len(attempts) + 1, kind, reason, status, answered_id))
            if kind != TRANSIENT:
                return PushOutcome(kind, attempts)
            if reason == "ExpiredProviderToken":
                self._tokens._reset_auth_token()
            if reason in RESET_CONNECTION_REASONS:
                self._drop_connection()
            raise _Retry() from exc
        answered = answer.headers.get("apns-id")
        attempts.append(Attempt(at, len(attempts) + 1, SENT, None, 200, answered))
        return PushOutcome(SENT, attempts)

    def notification(self, request: PushRequest, apns_id: str | None = None) -> IOSNotification:
        payload = FittedPayload(
            alert=IOSPayloadAlert(title=request.title, body=fit_body(request)),
            sound="default",
            mutable_content=request.mutable_content,
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
            priority=request.priority,  # a string: httpx and h2 want str header values
            push_type=IOSNotification.PUSH_TYPE_ALERT,
        )

    async def _connection(self) -> H2Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> H2Connection:
        settings = self._settings
        cafile = str(settings.apns_ca_file) if settings.apns_ca_file else None
        context = ssl.create_default_context(cafile=cafile)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H2Connection(self._authority),
                    self._host,
                    self._port,
                    ssl=context,
                    server_hostname=self._host,
                ),
                settings.push_timeout_seconds,
            )
        except (OSError, TimeoutError) as exc:
            log.warning("cannot connect to APNs at %s (%s)", self._authority, type(exc).__name__)
            raise apns_exc.APNSConnectionException() from exc
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        self._drop_connection()
        await asyncio.sleep(0)  # let the transport finish closing


def _expire(slot: asyncio.Future[None]) -> None:
    if not slot.done():
        slot.set_exception(PushTimeout())


class _Retry(Exception):
    """One transient attempt failed; backoff decides whether to try again."""
