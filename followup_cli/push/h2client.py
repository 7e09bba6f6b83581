"""A small HTTP/2 client (RFC 9113) on asyncio, shared by the APNs and FCM pushers: many
concurrent streams over one TLS connection at a time, flow control honoured, and "not
processed" (refused stream, GOAWAY) told apart from "failed".

The frames are read and written here; HPACK (RFC 7541) is hpack's: its decoder reads the
answers' headers (with their dynamic table), and the request headers are encoded with
its static table and integer coding, without a dynamic table of our own
(`HeaderEncoder`). Why not httpx: it costs 2-3 ms of CPU per request here. Why not h2's
state machine: a client that only opens its own streams, sends small bodies and reads
short answers needs a small part of it, and h2's frame and stream objects were half of
the CPU of a delivery; three of its behaviours also had to be worked around (frames
after a GOAWAY taken as protocol errors, unwritten bytes thrown away as a GOAWAY
arrives, every stream walked to count the open ones). The tests run this client against
h2's server side, which ends the connection on any frame it does not accept.

- Streams: never more open than the server's SETTINGS_MAX_CONCURRENT_STREAMS; one at a
  time until the server's first SETTINGS frame has arrived and the first request on the
  connection is answered (APNs allows one stream until the provider token is accepted,
  and drops to one again after a rejected notification; for FCM it means a refused
  access token costs one request, not a hundred).
- Not processed is not failed: a stream refused (RST_STREAM REFUSED_STREAM), above a
  GOAWAY's last-stream-id, or not started on a connection that no longer takes streams
  raises NotProcessed, so the caller may send it again without using an attempt. Streams
  at or below the last-stream-id are still answered after a GOAWAY, and what was queued
  for them is still written (RFC 9113, section 6.8), so nothing is sent twice; new
  streams go to a new connection.
- A retired connection (a timeout, or the caller's choice) takes no new streams but its
  other streams are still answered.
- Anything the server sends that breaks the protocol (a frame too large, a header block
  hpack cannot decode, a CONTINUATION out of place, a PUSH_PROMISE we disabled, a frame
  on a stream we never opened) ends the connection with a GOAWAY; its streams fail with
  ConnectionLost.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import re
import ssl
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from hpack import Decoder
from hpack.exceptions import HPACKError
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


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class Answer:
    __slots__ = ("status", "headers", "body")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()


# -- frames (RFC 9113, sections 4.1 and 6)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0x0, 0x1, 0x2, 0x3, 0x4, 0x5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Error codes (section 7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
# Settings (section 6.5.2).
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

DEFAULT_WINDOW: Final = 65_535
DEFAULT_FRAME_SIZE: Final = 16_384  # the largest frame we accept: we do not raise it
MAX_WINDOW: Final = 2**31 - 1
MAX_STREAM_ID: Final = 2**31 - 1
MAX_HEADER_LIST: Final = 65_536  # what our SETTINGS tell the server, and hpack enforces
# What the client tells the server first: no server push, and the answers' header lists
# it reads. The rest keep their defaults (a 4,096-byte table for the answers' headers,
# 64 KiB windows, 16 KiB frames).
CLIENT_SETTINGS: Final = ((S_ENABLE_PUSH, 0), (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST))
# The most bytes of one header block the client collects from HEADERS and CONTINUATION
# frames: a server sending CONTINUATION frames without end (the "CONTINUATION flood" of
# 2024) ends the connection instead of filling the memory. Huffman coding can make a
# block larger than the list it decodes to, up to nearly four times.
MAX_HEADER_BLOCK: Final = 4 * MAX_HEADER_LIST
# Timeouts are checked by one timer per connection, at most this often (seconds): a
# request times out no more than this late, and costs no timer of its own.
TIMEOUT_GRANULARITY: Final = 0.1
# Received bytes are acknowledged (WINDOW_UPDATE) once this many are unacknowledged.
ACK_AFTER: Final = DEFAULT_WINDOW // 2

# The frames that belong to a stream (PRIORITY may name any stream, 5.1).
_STREAM_FRAMES: Final = frozenset({DATA, HEADERS, RST_STREAM, WINDOW_UPDATE, CONTINUATION})

_FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEADER.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


class ProtocolViolation(Exception):
    """The server broke the protocol: the connection ends with this error code."""

    def __init__(self, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(code)
        self.code = code


def _unpadded(payload: bytes, flags: int) -> bytes:
    """A DATA or HEADERS payload without its padding (section 6.1)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolViolation()
    return payload[1 : len(payload) - payload[0]]


# -- HPACK for the request headers


class HeaderEncoder:
    """HPACK without a compression table of our own: each header goes as an index into
    the static table when it is there whole, otherwise as a literal (never indexed for the
    authorization header and the per-request ones, "without indexing" for the others),
    and the bytes of a header that repeats are computed once. The server's table then
    holds nothing of ours, so a few dozen bytes more per request on the wire buy
    skipping the table lookups and evictions that were a large share of the CPU per
    request. A table size the server sets is announced at the start of the next block,
    as HPACK requires (RFC 7541, section 4.2)."""

    MEMO_LIMIT = 256  # distinct repeating headers remembered (a few are expected)

    def __init__(self) -> None:
        self._memo: dict[tuple[bytes, bytes], bytes] = {}
        self._size_update: bytes = b""

    def table_size_changed(self, size: int) -> None:
        """The server's SETTINGS_HEADER_TABLE_SIZE: announced first in the next block."""
        field = encode_integer(size, 5)
        field[0] |= 0x20
        self._size_update = bytes(field)

    def pending(self) -> bytes:
        """The table size update owed, once (empty when none is)."""
        update, self._size_update = self._size_update, b""
        return update

    def field(self, name: bytes, value: bytes, *, never_indexed: bool = False) -> bytes:
        if never_indexed:
            return _literal(name, value, never_indexed=True)
        encoded = self._memo.get((name, value))
        if encoded is None:
            encoded = _literal(name, value, never_indexed=False)
            if len(self._memo) >= self.MEMO_LIMIT:
                self._memo.clear()
            self._memo[(name, value)] = encoded
        return encoded

    def encode(self, headers: Iterable[tuple[bytes, bytes, bool]]) -> bytes:
        """A whole header block: (name, value, never indexed) in order."""
        return self.pending() + b"".join(
            self.field(name, value, never_indexed=never) for name, value, never in headers
        )


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


_NOTHING = memoryview(b"")


class _Stream:
    """One request in flight: its caller's future, its answer so far, the part of its
    body the flow-control windows have not let out yet, its send window, and the
    answer's bytes not yet acknowledged."""

    __slots__ = ("waiter", "answer", "unsent", "window", "unacked")

    def __init__(self, waiter: asyncio.Future[Answer], window: int) -> None:
        self.waiter = waiter
        self.answer = Answer()
        self.unsent = _NOTHING
        self.window = window
        self.unacked = 0


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
        self._label = label
        self._one_at_a_time = one_at_a_time
        self._encoder = HeaderEncoder()
        self._decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        # The headers every request starts with, encoded once.
        self._fixed = self._encoder.encode(
            [
                (b":method", b"POST", False),
                (b":scheme", b"https", False),
                (b":authority", authority.encode(), False),
            ]
        )
        # Headers whose value is new with every request (APNs' path holds the device
        # token): never indexed, so the server's table keeps none of them either.
        self._unique = frozenset(name.encode() for name in unique_headers)
        self._out = bytearray()  # frames not yet written to the transport
        self._in = b""  # bytes read that do not yet make a whole frame
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        # Our requests in flight, counted until each answer has been read by its caller.
        self._streams: dict[int, _Stream] = {}
        self._unsent: dict[int, _Stream] = {}  # bodies waiting for the windows
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._next_stream_id = 1
        # The server's settings, and the connection's windows both ways.
        self._max_streams = MAX_STREAM_ID  # no limit until the server sets one (6.5.2)
        self._initial_window = DEFAULT_WINDOW
        self._max_frame = DEFAULT_FRAME_SIZE
        self._window = DEFAULT_WINDOW  # what we may still send on the connection
        self._unacked = 0  # what we have read on it and not yet acknowledged
        self._continued: tuple[int, int, bytearray] | None = None  # a header block's start
        # (deadline, stream id) of the requests sent, a heap; the timer that checks them.
        self._deadlines: list[tuple[float, int]] = []
        self._sweep: asyncio.TimerHandle | None = None
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
        return max(1, self._max_streams)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        settings = b"".join(_SETTING.pack(code, value) for code, value in CLIENT_SETTINGS)
        self._out += PREFACE + frame(SETTINGS, 0, 0, settings)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._in:
            data = self._in + data
        pos, end = 0, len(data)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(data, pos)
                size = (high << 16) | low
                if size > DEFAULT_FRAME_SIZE:
                    raise ProtocolViolation(FRAME_SIZE_ERROR)
                if end - pos - 9 < size:
                    break
                payload = data[pos + 9 : pos + 9 + size]
                pos += 9 + size
                self._on_frame(kind, flags, stream_id & MAX_STREAM_ID, payload)
                if self.closed:
                    return
        except ProtocolViolation as exc:
            self._end(exc.code)
            return
        self._in = data[pos:]
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
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:  # this connection has used up its stream ids
            self.retire()
            raise NotProcessed()
        self._next_stream_id += 2
        token = authorization() if authorization is not None else None
        loop = asyncio.get_running_loop()
        stream = _Stream(loop.create_future(), self._initial_window)
        self._streams[stream_id] = stream
        block = self._header_block(path, headers, token, first=authorization_first)
        self._send_headers(stream_id, block, end_stream=not body)
        if body:
            stream.unsent = memoryview(body)
            self._send_body(stream_id, stream)
        self._flush_soon()
        # Not asyncio.wait_for, nor a timer each: this runs for every request.
        deadline = loop.time() + timeout
        heapq.heappush(self._deadlines, (deadline, stream_id))
        if self._sweep is None or deadline < self._sweep.when():  # a shorter timeout
            if self._sweep is not None:
                self._sweep.cancel()
            self._sweep = loop.call_at(deadline, self._time_out_due)
        try:
            answer = await stream.waiter
            # Only now, as the caller is about to read it: a stream waiting for a slot
            # may run before this task (woken by a SETTINGS frame in the same read), and
            # must not take the raised limit before a configuration answer has been seen.
            self.answered = True
            return answer
        finally:
            self._streams.pop(stream_id, None)
            self._unsent.pop(stream_id, None)
            self._notify_capacity()
            self._close_if_drained()

    def _header_block(
        self, path: str, headers: dict[str, str], token: str | None, *, first: bool
    ) -> bytes:
        """The request's header block: the fixed start, the path, the service's headers,
        and the authorization header (never indexed) before or after them."""
        field, unique = self._encoder.field, self._unique
        auth = b""
        if token is not None:
            auth = field(b"authorization", token.encode(), never_indexed=True)
        parts = [
            self._encoder.pending(),
            self._fixed,
            field(b":path", path.encode(), never_indexed=b":path" in unique),
        ]
        if first:
            parts.append(auth)
        for name, value in headers.items():
            key = name.lower().encode()
            parts.append(field(key, value.encode(), never_indexed=key in unique))
        if not first:
            parts.append(auth)
        return b"".join(parts)

    def _time_out_due(self) -> None:
        """Time out the requests whose deadline has passed, then wait for the next one
        (no sooner than TIMEOUT_GRANULARITY from now). Answered requests leave their
        deadlines behind; they are dropped as they come due, or all at once when no
        stream is left."""
        self._sweep = None
        if self.closed or not self._streams:
            self._deadlines.clear()
            return
        loop = asyncio.get_running_loop()
        now, deadlines = loop.time(), self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, stream_id = heapq.heappop(deadlines)
            stream = self._streams.get(stream_id)
            if stream is not None and not stream.waiter.done():
                self._forget(stream_id, PushTimeout(), reset=True)
        if deadlines:
            when = max(deadlines[0][0], now + TIMEOUT_GRANULARITY)
            self._sweep = loop.call_at(when, self._time_out_due)

    async def _wait_for_stream_slot(self) -> None:
        """Wait while the connection is at its stream limit. No timer of its own: every
        open stream has one, and a timed-out stream retires the connection, which wakes
        the waiters to go to a new one."""
        # Counted until each answer has been *read* by its caller (not merely received),
        # so no new request starts before a configuration answer or a failure has been seen.
        while self.accepting and len(self._streams) >= self.stream_limit:
            slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(slot)
            await slot

    def retire(self) -> None:
        """Take no new streams; close once the streams in flight are answered."""
        self.accepting = False
        self._notify_capacity()
        self._close_if_drained()

    def close(self) -> None:
        self._end(NO_ERROR)

    # -- frames read

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is not None and kind != CONTINUATION:
            raise ProtocolViolation()  # a header block must not be interrupted (6.10)
        if stream_id and kind in _STREAM_FRAMES and not self._opened(stream_id):
            # A stream we never opened (an idle one, or one of the server's own, which
            # only a PUSH_PROMISE could open): a connection error (5.1). Frames for our
            # streams that have ended are ignored below.
            raise ProtocolViolation()
        if kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ProtocolViolation(FRAME_SIZE_ERROR if stream_id else PROTOCOL_ERROR)
            refused = _U32.unpack(payload)[0] == REFUSED_STREAM
            self._forget(stream_id, NotProcessed() if refused else ConnectionLost(), reset=False)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise ProtocolViolation()
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
        elif kind == GOAWAY:
            if stream_id != 0 or len(payload) < 8:
                raise ProtocolViolation()
            last, code = _GOAWAY.unpack_from(payload)
            self._on_goaway(last & MAX_STREAM_ID, code, payload[8:])
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation()  # our SETTINGS disabled server push (8.4)
        # PRIORITY and frame types we do not know are ignored (5.5).

    def _opened(self, stream_id: int) -> bool:
        return stream_id % 2 == 1 and stream_id < self._next_stream_id

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation()
        block = _unpadded(payload, flags)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags & END_STREAM, block)
        else:
            self._continued = (stream_id, flags & END_STREAM, bytearray(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is None or self._continued[0] != stream_id:
            raise ProtocolViolation()
        self._continued[2].extend(payload)
        if len(self._continued[2]) > MAX_HEADER_BLOCK:
            raise ProtocolViolation(ENHANCE_YOUR_CALM)
        if flags & END_HEADERS:
            _, end_stream, block = self._continued
            self._continued = None
            self._on_header_block(stream_id, end_stream, bytes(block))

    def _on_header_block(self, stream_id: int, end_stream: int, block: bytes) -> None:
        # Decoded even for a stream we no longer wait for: the decoder's table must see
        # every block the server encoded.
        try:
            headers = self._decoder.decode(block, raw=True)
        except HPACKError:
            raise ProtocolViolation(COMPRESSION_ERROR) from None
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.answer.status:
            fields = {_text(name): _text(value) for name, value in headers}
            status = fields.get(":status", "0")
            # An informational answer (1xx) comes before the real one (8.1).
            if not status.startswith("1"):
                stream.answer.status = int(status) if status.isdigit() else 0
                stream.answer.headers = fields
        if end_stream:
            self._finish(stream_id)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation()
        size = len(payload)  # padding included: it counts for flow control
        data = _unpadded(payload, flags)
        self._unacked += size
        if self._unacked >= ACK_AFTER:
            self._out += frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._unacked))
            self._unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.answer.body += data
        if flags & END_STREAM:
            self._finish(stream_id)
            return
        stream.unacked += size
        if stream.unacked >= ACK_AFTER:
            self._out += frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked))
            stream.unacked = 0

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolViolation()
        if flags & ACK:
            if payload:
                raise ProtocolViolation(FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR)
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == S_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
            elif code == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR)
                delta, self._initial_window = value - self._initial_window, value
                for stream in self._streams.values():
                    stream.window += delta
            elif code == S_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise ProtocolViolation()
                self._max_frame = value
            elif code == S_HEADER_TABLE_SIZE:
                self._encoder.table_size_changed(value)
            # ENABLE_PUSH, MAX_HEADER_LIST_SIZE (our lists are small) and unknown ones: ignored.
        self._out += frame(SETTINGS, ACK, 0)
        self.settings_seen = True
        self._send_pending()
        self._notify_capacity()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR)
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0 or self._window + increment > MAX_WINDOW:
                raise ProtocolViolation(PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
            self._window += increment
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            if increment == 0 or stream.window + increment > MAX_WINDOW:
                self._forget(stream_id, ConnectionLost(), reset=True)
                return
            stream.window += increment
        self._send_pending()

    def _on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        """No new streams here. Streams above last_stream_id were not processed: they go
        again elsewhere. Those at or below it will still be answered: wait for them."""
        self.accepting = False
        unprocessed = [sid for sid in self._streams if sid > last_stream_id]
        for stream_id in unprocessed:
            self._forget(stream_id, NotProcessed(), reset=False)
        log.info(
            "%s closed a connection (GOAWAY, reason %s, error code %s): %d push(es) in "
            "flight will still be answered, %d will be sent again",
            self._label,
            goaway_reason(debug),
            code,
            len(self._streams) - len(unprocessed),
            len(unprocessed),
        )
        self._notify_capacity()
        self._close_if_drained()

    # -- frames written

    def _send_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        flags = END_STREAM if end_stream else 0
        size = self._max_frame
        if len(block) <= size:
            self._out += frame(HEADERS, flags | END_HEADERS, stream_id, block)
            return
        self._out += frame(HEADERS, flags, stream_id, block[:size])
        for start in range(size, len(block), size):
            last = start + size >= len(block)
            piece = block[start : start + size]
            self._out += frame(CONTINUATION, END_HEADERS if last else 0, stream_id, piece)

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        """Send what the windows allow of one stream's body, ending the stream with its
        last byte; the rest waits for a WINDOW_UPDATE."""
        data = stream.unsent
        while data:
            size = min(stream.window, self._window, self._max_frame, len(data))
            if size <= 0:
                break
            last = size == len(data)
            self._out += frame(DATA, END_STREAM if last else 0, stream_id, data[:size].tobytes())
            stream.window -= size
            self._window -= size
            data = data[size:]
        stream.unsent = data
        if data:
            self._unsent[stream_id] = stream
        else:
            self._unsent.pop(stream_id, None)

    def _send_pending(self) -> None:
        """Send what the windows now allow of every body still waiting, in order."""
        for stream_id, stream in list(self._unsent.items()):
            self._send_body(stream_id, stream)

    def _flush_soon(self) -> None:
        """One TLS write for all the requests made in this turn of the event loop."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(self._out))
        self._out.clear()

    # -- streams ending

    def _finish(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.waiter.done():
            stream.waiter.set_result(stream.answer)

    def _forget(self, stream_id: int, error: Exception, *, reset: bool) -> None:
        stream = self._streams.get(stream_id)
        self._unsent.pop(stream_id, None)
        if reset and not self.closed:
            self._out += frame(RST_STREAM, 0, stream_id, _U32.pack(CANCEL))
            self._flush()
        if stream is not None and not stream.waiter.done():
            stream.waiter.set_exception(error)

    def _notify_capacity(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for slot in waiters:
            if not slot.done():
                slot.set_result(None)

    def _close_if_drained(self) -> None:
        if not self.accepting and not self._streams and not self.closed:
            self.close()

    def _end(self, code: int) -> None:
        """Close the connection: a GOAWAY with `code` (we process no streams of the
        server's, so its last-stream-id is 0), and the transport let go."""
        if self._transport is not None and not self.closed:
            if code != NO_ERROR:
                log.warning(
                    "%s broke the HTTP/2 protocol (error code %d); closing the connection",
                    self._label,
                    code,
                )
            self._out += frame(GOAWAY, 0, 0, _GOAWAY.pack(0, code))
            self._flush()
            self._transport.close()
        self._fail_all()

    def _fail_all(self) -> None:
        self.closed = True
        self.accepting = False
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for stream_id in list(self._streams):
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
