"""A small HTTP/2 client on the `h2` state machine and asyncio, shared by the APNs and
FCM pushers: many concurrent streams over one TLS connection at a time, flow control
honoured, and "not processed" (refused stream, GOAWAY) told apart from "failed".

Why not httpx: sending through it costs about 2-3 ms of CPU per request here; this
client costs about a fifth of that, which is what lets one process deliver over a
thousand follow-ups a second.

- Streams: never more open than the server's SETTINGS_MAX_CONCURRENT_STREAMS; one at a
  time until the server's first SETTINGS frame has arrived and the first request on the
  connection is answered (APNs allows one stream until the provider token is accepted,
  and drops to one again after a rejected notification; for FCM it means a refused
  access token costs one request, not a hundred).
- Not processed is not failed: a stream refused (RST_STREAM REFUSED_STREAM), above a
  GOAWAY's last-stream-id, or never written raises NotProcessed, so the caller may send
  it again without using an attempt. Streams at or below the last-stream-id are still
  answered after a GOAWAY and are waited for, so nothing is sent twice; new streams go
  to a new connection.
- A retired connection (a timeout, or the caller's choice) takes no new streams but its
  other streams are still answered.
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

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

log = logging.getLogger("followups.push")

_SAFE_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# How often one attempt's request may come back unprocessed (refused stream, GOAWAY) and
# be sent again before it counts as a failed attempt.
MAX_RESENDS = 20


class ConnectionLost(Exception):
    """The connection could not be made, or went away before the answer (reset stream,
    dropped transport, protocol error). `event` is what the requests lost together share
    (the connection that went away, or the connect that failed): one event, however
    many streams it took with it. None for a loss of this stream alone."""

    def __init__(self, event: object | None = None) -> None:
        super().__init__()
        self.event = event


class PushTimeout(Exception):
    """No answer within the timeout."""


class Halted(Exception):
    """The caller stopped (configuration answer, or the outage breaker tripped) while this
    request waited for a stream: it is not sent."""


class NotProcessed(Exception):
    """The server did not process the request (refused stream, above a GOAWAY's
    last-stream-id, or never written): it may be sent again, and it is not an attempt."""


def goaway_reason(data: bytes | None) -> str:
    """APNs' GOAWAY carries JSON such as {"reason": "Shutdown"}; only a plain word is kept."""
    try:
        reason = json.loads(data or b"").get("reason")
    except (ValueError, AttributeError):
        return "-"
    return reason if isinstance(reason, str) and _SAFE_REASON.fullmatch(reason) else "-"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Answer:
    __slots__ = ("status", "headers", "body")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


class _StaticEncoder(Encoder):
    """HPACK without a compression table of our own: each header goes as an index into
    the static table when it is there whole, otherwise as a literal (never indexed for a
    NeverIndexedHeaderTuple, "without indexing" for the others), and the bytes of a
    header that repeats are computed once. hpack's encoder looks every header up in its
    table and adds the new ones, a large share of the CPU per request; the bytes this
    saves are few on a connection that carries one service's few repeating headers.
    Table size updates the server asks for are still sent first, as HPACK requires."""

    MEMO_LIMIT = 256  # distinct repeating headers remembered (a few are expected)

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        block = []
        if self.header_table.resized:
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
        memo = self._memo
        for header in headers:
            name, value = header[0], header[1]
            if isinstance(header, NeverIndexedHeaderTuple):
                block.append(_literal(name, value, never_indexed=True))
                continue
            encoded = memo.get((name, value))
            if encoded is None:
                encoded = _literal(name, value, never_indexed=False)
                if len(memo) >= self.MEMO_LIMIT:
                    memo.clear()
                memo[(name, value)] = encoded
            block.append(encoded)
        return b"".join(block)


def _literal(name: bytes, value: bytes, *, never_indexed: bool) -> bytes:
    """One header field without the dynamic table (RFC 7541, 6.1 and 6.2.2-6.2.3)."""
    static = HeaderTable.STATIC_TABLE_MAPPING.get(name)
    if static is not None and not never_indexed:
        index = static[1].get(value)
        if index is not None:
            field = encode_integer(index, 7)
            field[0] |= 0x80
            return bytes(field)
    if static is not None:
        field = encode_integer(static[0], 4)
    else:
        field = bytearray(b"\x00") + _string(name)
    if never_indexed:
        field[0] |= 0x10
    return bytes(field + _string(value))


def _string(data: bytes) -> bytearray:
    """An HPACK string literal, not Huffman-coded."""
    return encode_integer(len(data), 7) + data


class _CountingH2(h2.connection.H2Connection):
    """h2's connection, which counts the open streams before each new one by walking
    every stream it holds: with hundreds in flight, the largest single cost of a push.
    Here the walk is made only when it matters: the count kept since the last walk
    plus the streams opened since can only be too high (streams only close in
    between), so a walk is needed only when that bound would reach the server's limit,
    and every RECOUNT_EVERY streams (the walk also forgets closed streams)."""

    RECOUNT_EVERY = 512

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._counted = 0  # open outbound streams at the last walk
        self._opened_since = 0  # streams opened since it

    @property
    def open_outbound_streams(self) -> int:
        # h2 asks once per new stream, just before opening it (send_headers).
        bound = self._counted + self._opened_since
        limit = self.remote_settings.max_concurrent_streams
        if bound + 1 > limit or self._opened_since >= self.RECOUNT_EVERY:
            self._counted = self._open_streams(int(self.config.client_side))
            self._opened_since = 0
            bound = self._counted
        self._opened_since += 1
        return bound

    def clear_outbound_data_buffer(self) -> None:
        """h2 calls this as a GOAWAY arrives, throwing away every byte not yet written:
        with the streams up to the GOAWAY's last-stream-id still being answered
        (_DrainingStateMachine), that would drop the rest of their bodies, and the
        HEADERS of a stream whose DATA is sent later, which the server would take as a
        frame on a stream never opened and end the connection, losing every stream it
        was about to answer. What was queued goes out; the server ignores what is above
        its last-stream-id (RFC 9113, section 6.8)."""


_Inputs = h2.connection.ConnectionInputs
_CLOSED = h2.connection.ConnectionState.CLOSED


class _DrainingStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2 treats every frame after a GOAWAY as a protocol error, but the server still
    answers the streams at or below the GOAWAY's last-stream-id, and those answers must be
    read or the requests would be sent twice. Only new streams are refused after a GOAWAY
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
    """One HTTP/2 connection: as many concurrent streams as the server allows, flow
    control honoured, GOAWAY and refused streams told apart from failures. `label` names
    the service in log lines ("APNs", "FCM")."""

    def __init__(
        self,
        authority: str,
        label: str = "APNs",
        one_at_a_time: Callable[[], bool] | None = None,
        unique_headers: frozenset[str] = frozenset(),
    ) -> None:
        self._authority = authority
        self._label = label
        self._one_at_a_time = one_at_a_time
        # Our headers are built valid, lower-case and as bytes (_header_block), so h2's
        # per-header normalising and validation (a large share of the CPU per request)
        # are skipped; what normalising did for safety, keeping the authorization header
        # out of the compression table, _header_block does itself.
        # The answers' headers are read as bytes and only :status, apns-id and
        # retry-after are used, so h2's checks on them are skipped as well.
        self._h2 = _CountingH2(
            config=h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self._h2.state_machine = _DrainingStateMachine()
        self._h2.encoder = _StaticEncoder()
        self._fixed = [
            HeaderTuple(b":method", b"POST"),
            HeaderTuple(b":scheme", b"https"),
            HeaderTuple(b":authority", authority.encode()),
        ]
        # Headers whose value is new with every request (APNs' path holds the device
        # token): never put in the compression table, where each would push out the
        # headers that do repeat and make every later lookup longer.
        self._unique = frozenset(name.encode() for name in unique_headers)
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._answers: dict[int, Answer] = {}
        self._waiters: dict[int, asyncio.Future[Answer]] = {}
        self._unsent: dict[int, memoryview] = {}  # request bodies waiting for window
        self._slot_waiters: list[asyncio.Future[None]] = []
        self.settings_seen = False  # the server's SETTINGS frame has arrived
        self.answered = False  # an answer on this connection has been read by its caller
        self.accepting = True  # new streams may start here (no GOAWAY, not retired)
        self.closed = False  # the transport is gone

    @property
    def stream_limit(self) -> int:
        """How many streams may be open now: one until the server has shown its limit and
        answered a request, and while the caller's `one_at_a_time` says so (its outage
        breaker is suspect); otherwise what the server's latest SETTINGS frame says."""
        if not (self.settings_seen and self.answered):
            return 1
        if self._one_at_a_time is not None and self._one_at_a_time():
            return 1
        # At least one: a server advertising 0 would otherwise leave every push waiting.
        return max(1, int(self._h2.remote_settings.max_concurrent_streams))

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
            self.close()  # sends h2's GOAWAY and lets the socket go
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
        authorization: Callable[[], str] | None = None,
        *,
        authorization_first: bool = False,
    ) -> Answer:
        """One request. `authorization` gives the header's value when the stream starts,
        not when the request began to wait: a token refused meanwhile is not sent again
        by every request that was queued behind the refusal. The header goes after the
        others, or before them with `authorization_first`."""
        await self._wait_for_stream_slot()
        if not may_start():
            raise Halted()
        if not self.accepting:
            raise NotProcessed()
        token = authorization() if authorization is not None else None
        stream_id = self._h2.get_next_available_stream_id()
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = waiter
        self._answers[stream_id] = Answer()
        self._h2.send_headers(
            stream_id, self._header_block(path, headers, token, first=authorization_first)
        )
        self._unsent[stream_id] = memoryview(body)
        self._send_body(stream_id)
        self._flush_soon()
        # A timer instead of asyncio.wait_for: this runs for every request and must be cheap.
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, stream_id)
        try:
            answer = await waiter
            # Only now, as the caller is about to read it: a stream waiting for a slot
            # may run before this task (woken by a WINDOW_UPDATE in the same read), and
            # must not take the raised limit before a configuration answer has been seen.
            self.answered = True
            return answer
        finally:
            timer.cancel()
            self._waiters.pop(stream_id, None)
            self._answers.pop(stream_id, None)
            self._notify_capacity()
            self._close_if_drained()

    def _header_block(
        self, path: str, headers: dict[str, str], token: str | None, *, first: bool
    ) -> list[HeaderTuple]:
        """The request's header list as h2 sends it without normalising: names lower-case,
        bytes; the authorization header never indexed (as h2 would mark it), before or
        after the others."""
        unique = self._unique
        block = [*self._fixed, self._header(b":path", path, unique)]
        auth = [] if token is None else [NeverIndexedHeaderTuple(b"authorization", token.encode())]
        if first:
            block += auth
        block += [self._header(name.lower().encode(), v, unique) for name, v in headers.items()]
        if not first:
            block += auth
        return block

    @staticmethod
    def _header(name: bytes, value: str, unique: frozenset[bytes]) -> HeaderTuple:
        kind = NeverIndexedHeaderTuple if name in unique else HeaderTuple
        return kind(name, value.encode())

    def _time_out(self, stream_id: int) -> None:
        waiter = self._waiters.get(stream_id)
        if waiter is not None and not waiter.done():
            self._forget(stream_id, PushTimeout(), reset=True)

    async def _wait_for_stream_slot(self) -> None:
        """Wait while the connection is at its stream limit. No timer of its own: every
        open stream has one, and a timed-out stream retires the connection, which wakes
        the waiters to go to a new one."""
        loop = asyncio.get_running_loop()
        # Counted until each answer has been *read* by its caller (not merely received),
        # so no new request starts before a configuration answer or a failure has been seen.
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
                headers = {_text(k): _text(v) for k, v in event.headers}
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
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            error = NotProcessed() if refused else ConnectionLost()
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
            "%s closed a connection (GOAWAY, reason %s, error code %s): %d push(es) in "
            "flight will still be answered, %d will be sent again",
            self._label,
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
        """Send what the flow-control windows now allow of every body still waiting."""
        for stream_id in list(self._unsent):
            self._send_body(stream_id)

    def _send_body(self, stream_id: int) -> None:
        """Send what the windows allow of one stream's body, and end the stream once it
        is all out."""
        data = self._unsent.get(stream_id)
        if data is None:
            return
        try:
            window = self._h2.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            self._unsent.pop(stream_id, None)
            return
        size = min(window, self._h2.max_outbound_frame_size, len(data))
        try:
            while size > 0:
                self._h2.send_data(stream_id, data[:size].tobytes())
                data = data[size:]
                window -= size
                size = min(window, self._h2.max_outbound_frame_size, len(data))
            if len(data) == 0:
                self._h2.end_stream(stream_id)
        except h2.exceptions.StreamClosedError:
            # The server reset it in the frames being read right now (h2 has closed
            # it; its StreamReset event comes after this one): nothing more to send,
            # and that event tells the waiter.
            self._unsent.pop(stream_id, None)
            return
        if len(data) == 0:
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
            self._forget(stream_id, ConnectionLost(self), reset=False)
        self._notify_capacity()


class H2Endpoint:
    """One service's https://host[:port]: one connection at a time takes new streams; a
    retired one finishes its streams while the next one takes new ones."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None,
        connect_timeout: float,
        label: str,
        one_at_a_time: Callable[[], bool] | None = None,
        unique_headers: frozenset[str] = frozenset(),
    ) -> None:
        base = urlsplit(url)
        self.host = base.hostname or ""
        self.port = base.port or 443
        self.authority = self.host if self.port == 443 else f"{self.host}:{self.port}"
        self._ca_file = ca_file
        self._connect_timeout = connect_timeout
        self._label = label
        self._one_at_a_time = one_at_a_time
        self._unique_headers = unique_headers
        self._conn: H2Connection | None = None
        self._connections: list[H2Connection] = []
        self._connecting: asyncio.Lock | None = None
        self._connect_tries = 0  # connects started, and how many of them failed
        self._connect_failures = 0
        self._failed_connect: object | None = None  # the last connect that failed

    async def connection(self, may_start: Callable[[], bool] | None = None) -> H2Connection:
        """The connection new streams go to, made when there is none. Requests that
        waited for a connect that failed share its failure rather than each trying (and
        timing out) again in turn; none is made once `may_start` says no."""
        conn = self._conn
        if conn is not None and conn.accepting:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        tries_seen = self._connect_tries
        async with self._connecting:
            if self._conn is not None and self._conn.accepting:
                return self._conn
            if self._connect_tries != tries_seen and self._connect_failures:
                # The connect this request waited for failed: the same event.
                raise ConnectionLost(self._failed_connect)
            if may_start is not None and not may_start():
                raise Halted()
            self._connect_tries += 1
            try:
                self._conn = await self._connect()
            except ConnectionLost as exc:
                self._connect_failures += 1
                self._failed_connect = exc.event = object()
                raise
            self._connect_failures = 0
            self._connections = [c for c in self._connections if not c.closed]
            self._connections.append(self._conn)
            return self._conn

    async def _connect(self) -> H2Connection:
        # With a CA file given, only it is trusted: create_default_context then loads no
        # default paths, so SSL_CERT_FILE and the like cannot widen or replace it.
        cafile = str(self._ca_file) if self._ca_file else None
        context = ssl.create_default_context(cafile=cafile)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H2Connection(
                        self.authority, self._label, self._one_at_a_time, self._unique_headers
                    ),
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host,
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "cannot connect to %s at %s (%s)", self._label, self.authority, type(exc).__name__
            )
            raise ConnectionLost() from exc
        return conn

    async def aclose(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._conn = None
        await asyncio.sleep(0)  # let the transports finish closing
