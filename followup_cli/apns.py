"""The APNs adapter: pyapns-client's notification and error classes, sent as concurrent
HTTP/2 streams over one connection at a time from an asyncio event loop, under the rules
Apple's servers enforce.

Why not pyapns-client's own push(): it is synchronous and opens a TLS connection per
push (keep-alive off); a shared client is unsafe across threads; its push() retries
server errors three times by itself (so any outer retry would multiply attempts). Sending
through httpx costs about 2-3 ms of CPU per push here; this module's small HTTP/2 client
on the `h2` state machine costs about a fifth of that, which is what lets one process
deliver over a thousand follow-ups a second. What stays pyapns-client's: the payload and
headers (IOSNotification / IOSPayload) and the mapping from APNs' reason to its exception
classes, which `classify` sorts into our failure classes. The provider token is
provider_token.ProviderToken: one per key and 30-minute window, the same in every process.

How the connection follows APNs (docs/reliability.md, "The APNs connection"):

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

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import backoff
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pyapns_client.exceptions as apns_exc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pyapns_client import APNSClient, IOSNotification, IOSPayload, IOSPayloadAlert

from followup_cli.clock import utcnow
from followup_cli.provider_token import ProviderToken
from followup_cli.push import (
    CONFIG,
    MAX_ATTEMPTS,
    MAX_PAYLOAD_BYTES,
    PERMANENT,
    SENT,
    TRANSIENT,
    UNSENT,
    Attempt,
    EventLoopOwner,
    OutageBreaker,
    PushOutcome,
    PushRequest,
    encode_payload,
    fit_body,
)
from followup_cli.settings import Settings

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
# How often one attempt's request may come back unprocessed (refused stream, GOAWAY) and
# be sent again before it counts as a failed attempt.
MAX_RESENDS = 20
_SAFE_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class PushTimeout(Exception):
    """APNs did not answer within FOLLOWUPS_PUSH_TIMEOUT."""


class Halted(Exception):
    """The pusher stopped (configuration answer, or the outage breaker tripped) while this
    request waited for a stream: it is not sent."""


class NotProcessed(Exception):
    """APNs did not process the request (refused stream, above a GOAWAY's last-stream-id,
    or never written): it may be sent again, and it is not an attempt."""


def classify(exc: BaseException) -> tuple[str, str, int | None, str | None]:
    """(kind, reason, HTTP status, apns-id) for an exception raised by one push attempt."""
    if isinstance(exc, apns_exc.APNSConnectionException):
        return TRANSIENT, "ConnectionError", None, None
    if isinstance(exc, PushTimeout):
        return TRANSIENT, "Timeout", None, None
    if isinstance(exc, NotProcessed):
        return TRANSIENT, "NotProcessed", None, None
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


def goaway_reason(data: bytes | None) -> str:
    """APNs' GOAWAY carries JSON such as {"reason": "Shutdown"}; only a plain word is kept."""
    try:
        reason = json.loads(data or b"").get("reason")
    except (ValueError, AttributeError):
        return "-"
    return reason if isinstance(reason, str) and _SAFE_REASON.fullmatch(reason) else "-"


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


_Inputs = h2.connection.ConnectionInputs
_CLOSED = h2.connection.ConnectionState.CLOSED


class _DrainingStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2 treats every frame after a GOAWAY as a protocol error, but the server still
    answers the streams at or below the GOAWAY's last-stream-id, and those answers must be
    read or the pushes would be sent twice. Only new streams are refused after a GOAWAY
    (H2Connection.accepting), as RFC 9113 section 6.8 says."""

    _transitions = {
        **h2.connection.H2ConnectionStateMachine._transitions,
        **{
            (_CLOSED, event): (None, _CLOSED)
            for event in (
                _Inputs.RECV_HEADERS,
                _Inputs.RECV_DATA,
                _Inputs.RECV_RST_STREAM,
                _Inputs.RECV_WINDOW_UPDATE,
                _Inputs.RECV_PING,
                _Inputs.RECV_SETTINGS,
                _Inputs.RECV_PRIORITY,
                _Inputs.SEND_DATA,
                _Inputs.SEND_WINDOW_UPDATE,
                _Inputs.SEND_PING,
                _Inputs.SEND_SETTINGS,  # the acknowledgement of a SETTINGS frame
                _Inputs.SEND_RST_STREAM,
            )
        },
    }


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to APNs: as many concurrent streams as the server allows,
    flow control honoured, GOAWAY and refused streams told apart from failures."""

    def __init__(self, authority: str) -> None:
        self._authority = authority
        # Our headers are built valid, so h2's per-header validation (a large share of the
        # CPU per push) is skipped; normalising stays (it lower-cases and encodes them).
        self._h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(
                client_side=True, header_encoding="utf-8", validate_outbound_headers=False
            )
        )
        self._h2.state_machine = _DrainingStateMachine()
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
        self.settings_seen = False  # the server's SETTINGS frame has arrived
        self.answered = False  # a notification on this connection has been answered
        self.accepting = True  # new streams may start here (no GOAWAY, not retired)
        self.closed = False  # the transport is gone

    @property
    def stream_limit(self) -> int:
        """How many streams may be open now: one until APNs has shown its limit and
        answered a notification, then what its latest SETTINGS frame says."""
        if not (self.settings_seen and self.answered):
            return 1
        return int(self._h2.remote_settings.max_concurrent_streams)

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
        self,
        path: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        may_start: Callable[[], bool],
    ) -> _Answer:
        await self._wait_for_stream_slot()
        if not may_start():
            raise Halted()
        if not self.accepting:
            raise NotProcessed()
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
            self._notify_capacity()
            self._close_if_drained()

    def _time_out(self, stream_id: int) -> None:
        waiter = self._waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            self._forget(stream_id, PushTimeout(), reset=True)

    async def _wait_for_stream_slot(self) -> None:
        """Wait while the connection is at its stream limit. No timer of its own: every
        open stream has one, and a timed-out stream retires the connection, which wakes
        the waiters to go to a new one."""
        loop = asyncio.get_running_loop()
        # Counted until each answer has been *read* by its push (not merely received), so
        # no new push starts before a configuration answer or a failure has been seen.
        while self.accepting and len(self._waiters) >= self.stream_limit:
            slot: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(slot)
            await slot

    def retire(self) -> None:
        """Take no new streams; close once the streams in flight are answered."""
        self.accepting = False
        self._notify_capacity()
        self._close_if_drained()

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
            self.answered = True
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            error = NotProcessed() if refused else apns_exc.APNSConnectionException()
            self._forget(event.stream_id, error, reset=False)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
            self._send_pending()
            self._notify_capacity()
        elif isinstance(event, h2.events.WindowUpdated):
            self._send_pending()
            self._notify_capacity()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """No new streams here. Streams above last_stream_id were not processed: they go
        again elsewhere. Those at or below it will still be answered: wait for them."""
        self.accepting = False
        last = event.last_stream_id if event.last_stream_id is not None else 0
        unprocessed = [sid for sid in self._waiters if sid > last]
        for stream_id in unprocessed:
            self._forget(stream_id, NotProcessed(), reset=False)
        log.info(
            "APNs closed a connection (GOAWAY, reason %s, error code %s): %d push(es) in "
            "flight will still be answered, %d will be sent again",
            goaway_reason(event.additional_data),
            int(event.error_code) if event.error_code is not None else "-",
            len(self._waiters),
            len(unprocessed),
        )
        self._notify_capacity()
        self._close_if_drained()

    def _finish(self, stream_id: int) -> None:
        waiter = self._waiters.get(stream_id)
        answer = self._answers.get(stream_id)
        if waiter is not None and answer is not None and not waiter.done():
            waiter.set_result(answer)
        self._notify_capacity()

    def _forget(self, stream_id: int, error: Exception, *, reset: bool) -> None:
        self._unsent.pop(stream_id, None)
        if reset and not self.closed:
            try:
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
        waiter = self._waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
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

    def _close_if_drained(self) -> None:
        if not self.accepting and not self._waiters and not self.closed:
            self.close()

    def _fail_all(self) -> None:
        self.closed = True
        self.accepting = False
        for stream_id in list(self._waiters):
            self._forget(stream_id, apns_exc.APNSConnectionException(), reset=False)
        self._notify_capacity()


class APNsPusher(EventLoopOwner):
    """Pushes through APNs; up to `concurrency` notifications in flight, on one connection
    at a time (a retired one finishes its streams while the next one takes new ones)."""

    name = "apns"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.concurrency = settings.push_concurrency
        self.breaker = OutageBreaker(settings.outage_threshold)
        self._settings = settings
        assert settings.apns_key_file and settings.apns_key_id and settings.apns_team_id
        key = load_pem_private_key(Path(settings.apns_key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the APNs key is not an ES256 key")
        self._token = ProviderToken(key, settings.apns_key_id, settings.apns_team_id)
        mode = APNSClient.MODE_PROD if settings.apns_env == "production" else APNSClient.MODE_DEV
        base = urlsplit(settings.apns_url or APNSClient.BASE_URLS[mode])
        self._host = base.hostname or "api.push.apple.com"
        self._port = base.port or 443
        self._authority = self._host if self._port == 443 else f"{self._host}:{self._port}"
        self._conn: H2Connection | None = None
        self._connections: list[H2Connection] = []
        self._connecting: asyncio.Lock | None = None
        self._probing: asyncio.Lock | None = None
        self._config_stop: str | None = None  # APNs refused our configuration
        self._push_with_retries: Callable[..., Any] = backoff.on_exception(
            backoff.expo,
            _Retry,
            max_tries=MAX_ATTEMPTS,
            jitter=backoff.full_jitter,
            factor=settings.retry_base_seconds,
            giveup=lambda _exc: self.breaker.tripped,
            logger=None,  # backoff's logger would print the call's arguments
            raise_on_giveup=False,
        )(self._attempt)

    async def push(self, request: PushRequest) -> PushOutcome:
        attempts: list[Attempt] = []
        outcome = await self._push_with_retries(request, attempts)
        if outcome is None:  # every attempt was transient, or the breaker tripped
            return PushOutcome(TRANSIENT, attempts)
        assert isinstance(outcome, PushOutcome)
        return outcome

    def _may_start(self) -> bool:
        return self._config_stop is None and not self.breaker.tripped

    def _halted(self, attempts: list[Attempt]) -> PushOutcome:
        return PushOutcome(TRANSIENT if attempts else UNSENT, attempts)

    async def _attempt(self, request: PushRequest, attempts: list[Attempt]) -> PushOutcome:
        if not self._may_start():
            return self._halted(attempts)
        if not self.breaker.suspect:
            return await self._attempt_once(request, attempts)
        # The last attempt failed: one attempt at a time until one gets an answer.
        if self._probing is None:
            self._probing = asyncio.Lock()
        async with self._probing:
            if not self._may_start():
                return self._halted(attempts)
            return await self._attempt_once(request, attempts)

    async def _attempt_once(self, request: PushRequest, attempts: list[Attempt]) -> PushOutcome:
        at = utcnow()
        # No apns-id of ours: APNs makes one and answers with it (one header less to encode).
        notification = self.notification(request)
        headers = notification.get_headers()
        body = notification.get_json_data()
        path = f"/3/device/{request.device_token}"
        resends = 0
        renewed = False
        while True:
            headers["authorization"] = f"bearer {self._token.current()}"
            conn: H2Connection | None = None
            try:
                conn = await self._connection()
                answer = await conn.request(
                    path, headers, body, self._settings.push_timeout_seconds, self._may_start
                )
                raise_for_answer(answer.status, answer.headers.get("apns-id"), bytes(answer.body))
            except Halted:
                return self._halted(attempts)
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
                return self._failed(exc, at, attempts, conn, kind=CONFIG)
            except Exception as exc:  # every failure is classified; none escapes as a crash
                return self._failed(exc, at, attempts, conn)
            break
        self.breaker.answered()
        answered = answer.headers.get("apns-id")
        attempts.append(Attempt(at, len(attempts) + 1, SENT, None, 200, answered))
        return PushOutcome(SENT, attempts)

    def _failed(
        self,
        exc: Exception,
        at: Any,
        attempts: list[Attempt],
        conn: H2Connection | None,
        *,
        kind: str | None = None,
    ) -> PushOutcome:
        """Record a failed attempt; a transient one raises _Retry for backoff."""
        classified, reason, status, answered_id = classify(exc)
        kind = kind or classified
        attempts.append(Attempt(at, len(attempts) + 1, kind, reason, status, answered_id))
        if kind != TRANSIENT:
            self.breaker.answered()  # APNs answered: it is up
            if kind == CONFIG and self._config_stop is None:
                self._config_stop = reason  # no new request starts: the answer would be the same
            return PushOutcome(kind, attempts)
        if reason not in NOT_AN_OUTAGE_REASONS:
            self.breaker.failure(reason)
        if reason in RETIRE_CONNECTION_REASONS and conn is not None:
            conn.retire()
        raise _Retry() from exc

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
        conn = self._conn
        if conn is not None and conn.accepting:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or not self._conn.accepting:
                self._conn = await self._connect()
                self._connections = [c for c in self._connections if not c.closed]
                self._connections.append(self._conn)
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

    async def aclose(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._conn = None
        await asyncio.sleep(0)  # let the transports finish closing


class _Retry(Exception):
    """One transient attempt failed; backoff decides whether to try again."""
