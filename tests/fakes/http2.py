"""The HTTP/2 server both push-service fakes run on: TLS with ALPN h2 on 127.0.0.1, an
asyncio loop on real time in a daemon thread, and everything about connections and
streams that is not one service's rule.

A service subclasses `H2Fake`: it judges each complete request in `_decide` (an `Answer`,
or a transport action from its rules, see rules.py), turns requests into its own records
in `_to_record`, and may say what stream limit a connection advertises
(`_stream_limit`). The core does the rest, the same for every service:

- records: each request that reached a connection is in `requests` just before its
  answer is written, so once a client has its response the record is there. Requests
  never answered have status 0 and a reason: "refused" (above the stream limit, or a
  scripted refusal), "stall", "reset", "goaway" (above a GOAWAY's last stream id, never
  processed) or "cancelled" (the stream or connection went away first). Each record
  also has its connection's serial number (from 1, per fake) and the real monotonic
  times at which the request was complete and was answered or given up on;
- latency: each answer, and each scripted "reset", waits `latency` seconds first;
- stream limit: SETTINGS_MAX_CONCURRENT_STREAMS is what `_stream_limit` says for the
  connection's last answer, sent again whenever that changes, before the answer that
  changed it. A stream above the advertised limit (counting streams not yet answered)
  is reset with REFUSED_STREAM, as a real server refuses that one stream, where h2 alone
  would end the whole connection;
- slow SETTINGS: the server's first bytes (its SETTINGS frame) reach the client
  `settings_delay` seconds after the connection is up, as over a real network, so a
  client that does not wait for them sends into the unknown limit;
- GOAWAY: after `goaway_after` requests on a connection, or on every open connection at
  `goaway_now()`: NO_ERROR with the last stream id received; streams at or below it are
  still answered, then the connection closes; streams above it are never processed;
- scripted actions: "reset" drops the connection, "stall" never answers, "refuse" resets
  the stream with REFUSED_STREAM;
- `drop_connections()` drops every connection at once (TCP RST), the listener stays up.
  `connections_cut` says when the fake itself cut which connection (a "reset" or a drop),
  so that a client's lost answers can be told from its own repeats;
- flow control both ways; clients without ALPN h2, or not speaking HTTP/2, are dropped
  without harm to the server;
- protocol errors end the connection, as h2 ends it (GOAWAY, then close), and are
  counted in `protocol_errors`: among them a frame on a stream the client never opened
  (RFC 9113, section 5.1), even above a GOAWAY's last stream id, where the RFC lets a
  server ignore it. A client that loses a HEADERS frame and sends its DATA is caught
  here rather than by a lenient server.

The server's event loop reads the real monotonic clock, so it keeps working under
freezegun.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import shutil
import signal
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Final, Generic, Self, TypeVar, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import NeverIndexedHeaderTuple

from tests.fakes.clock import REAL_CLOCK, wait_until
from tests.fakes.pki import Pki, make_pki, server_context
from tests.fakes.rules import Action, Rule, Rules
from tests.fakes.threads import ServerThread

__all__ = [
    "Answer",
    "Exchange",
    "H2Fake",
    "Stream",
    "serve_until_interrupted",
    "standalone_parser",
]

log = logging.getLogger(__name__)

BODY_KEEP_LIMIT: Final = 1 << 20  # bytes of a request body kept; the rest is only counted


class _UnenforcedSettings(h2.settings.Settings):
    """h2 would end the whole connection (PROTOCOL_ERROR) on a stream above the advertised
    limit; a real server refuses just that stream, which the connection below does."""

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


_Inputs = h2.connection.ConnectionInputs
_CLOSED = h2.connection.ConnectionState.CLOSED


class _DrainingStateMachine(h2.connection.H2ConnectionStateMachine):
    """After its GOAWAY a server still answers the streams at or below the last stream id;
    h2 would refuse to send or receive anything once the GOAWAY is out."""

    _transitions = {
        **h2.connection.H2ConnectionStateMachine._transitions,
        **{
            (_CLOSED, event): (None, _CLOSED)
            for event in (
                _Inputs.SEND_HEADERS,
                _Inputs.SEND_DATA,
                _Inputs.SEND_RST_STREAM,
                _Inputs.SEND_WINDOW_UPDATE,
                _Inputs.SEND_SETTINGS,
                _Inputs.RECV_HEADERS,
                _Inputs.RECV_DATA,
                _Inputs.RECV_RST_STREAM,
                _Inputs.RECV_WINDOW_UPDATE,
                _Inputs.RECV_SETTINGS,
                _Inputs.RECV_PING,
                _Inputs.RECV_PRIORITY,
            )
        },
    }


@dataclass(frozen=True, kw_only=True)
class Exchange:
    """What the core knows of every request, whatever the service: the base of each
    service's record."""

    status: int  # 0: never answered (the record's reason says why)
    connection: int = 0  # serial number of the connection it came on, from 1
    arrived: float = 0.0  # real monotonic time: the request was complete (or refused)
    answered: float = 0.0  # real monotonic time: answered, or given up on


@dataclass
class Answer:
    """A service's verdict on one request: what to answer, or an action instead."""

    status: int = 0
    reason: str | None = None  # the service's word for it, recorded; None when accepted
    headers: list[tuple[str, str]] = field(default_factory=list)  # besides :status, length
    body: bytes = b""
    action: Action | None = None


@dataclass(eq=False)
class Stream:
    """One request as it arrives."""

    id: int
    connection: int
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case, no pseudo-headers
    body: bytearray = field(default_factory=bytearray)  # the first BODY_KEEP_LIMIT bytes
    body_len: int = 0
    arrived: float = 0.0
    task: asyncio.Task[None] | None = None
    window_open: asyncio.Event = field(default_factory=asyncio.Event)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- one connection ----------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, fake: H2Fake[Any, Any]) -> None:
        self._fake = fake
        self.serial = 0
        self.last_status: int | None = None  # of the connection's last answer
        self._transport: asyncio.Transport | None = None
        self._conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._conn.state_machine = _DrainingStateMachine()
        self._limit = fake._stream_limit(None)
        self._conn.local_settings = _UnenforcedSettings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._limit,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 2**16,
            },
        )
        self._streams: dict[int, Stream] = {}
        self._active: set[int] = set()  # received, not yet answered or reset
        self._requests_seen = 0
        self._last_request_id = 0
        self._goaway_last: int | None = None
        self._held = False  # output held back until settings_delay has passed
        self._closed = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != "h2":
            log.debug("%s: refusing a connection without ALPN h2 (got %r)", self._fake, alpn)
            self._closed = True
            self._transport.abort()
            return
        self.serial = self._fake._connection_opened(self)
        self._conn.initiate_connection()
        delay = self._fake.settings_delay
        if delay > 0:
            # Over a real network the server's SETTINGS frame reaches the client about one
            # round trip after the client may start sending: hold every byte until then.
            self._held = True
            asyncio.get_running_loop().call_later(delay, self._release_held)
        self._flush()

    def _release_held(self) -> None:
        self._held = False
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            for event in self._conn.receive_data(data):
                self._on_event(event)
            self._flush()
        except h2.exceptions.ProtocolError as exc:
            log.debug("%s: HTTP/2 protocol error from client: %r", self._fake, exc)
            self._fake._protocol_error()
            self._flush()
            self.close()
        except Exception:
            log.exception("%s: error handling a connection; dropping it", self._fake)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._fake._connection_closed(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
            stream.window_open.set()

    # used by the fake

    def close(self) -> None:
        """Close gracefully: whatever is still held back goes out first."""
        self._held = False
        self._flush()
        self._closed = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self, *, rst: bool = False) -> None:
        """Close the TCP connection now, with an RST when ``rst``."""
        self._closed = True
        if self._transport is None:
            return
        if rst:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def cut(self) -> None:
        """The fake drops the connection (TCP RST), as a network fault does."""
        if not self._closed:
            self._fake._connection_cut(self.serial)
        self.abort(rst=True)

    def goaway(self, reason: str) -> None:
        """GOAWAY with the last stream received: those still get their answers."""
        if self._closed or self._goaway_last is not None:
            return
        self._goaway_last = self._last_request_id
        self._conn.close_connection(
            h2.errors.ErrorCodes.NO_ERROR,
            additional_data=self._fake._goaway_data(reason),
            last_stream_id=self._goaway_last,
        )
        self._fake._goaway_sent()
        self._flush()
        self._close_if_drained()

    def _stream_done(self, stream_id: int) -> None:
        self._active.discard(stream_id)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._goaway_last is not None and not self._active:
            self.close()

    def _advertise(self) -> None:
        """Send SETTINGS_MAX_CONCURRENT_STREAMS again if the service's limit changed."""
        wanted = self._fake._stream_limit(self.last_status)
        if wanted != self._limit:
            self._limit = wanted
            self._conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: wanted})

    # HTTP/2

    def _flush(self) -> None:
        if self._held:
            return
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request_received(event)
        elif isinstance(event, h2.events.DataReceived):
            data = event.data or b""
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is not None:
                stream_or_none.body_len += len(data)
                room = BODY_KEEP_LIMIT - len(stream_or_none.body)
                if room > 0:
                    stream_or_none.body += data[:room]
            if event.flow_controlled_length:
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is not None and stream_or_none.task is None:
                stream_or_none.arrived = REAL_CLOCK["monotonic"]()
                stream_or_none.task = asyncio.get_running_loop().create_task(
                    self._respond(stream_or_none)
                )
        elif isinstance(event, h2.events.StreamReset):
            self._stream_done(event.stream_id)
            stream_or_none = self._streams.pop(event.stream_id, None)
            if stream_or_none is not None:
                if stream_or_none.task is not None:
                    stream_or_none.task.cancel()
                stream_or_none.window_open.set()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in self._streams.values():
                    stream.window_open.set()
            else:
                stream_or_none = self._streams.get(event.stream_id)
                if stream_or_none is not None:
                    stream_or_none.window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._flush()
            self.close()
        # Settings, pings and priority are handled by h2 itself.

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        assert event.stream_id is not None
        stream = Stream(event.stream_id, self.serial, arrived=REAL_CLOCK["monotonic"]())
        for header in event.headers or []:
            name, value = _text(header[0]), _text(header[1])
            self._fake._header_seen(name, never_indexed=isinstance(header, NeverIndexedHeaderTuple))
            if name == ":method":
                stream.method = value
            elif name == ":path":
                stream.path = value
            elif not name.startswith(":"):
                previous = stream.headers.get(name)
                stream.headers[name] = value if previous is None else f"{previous}, {value}"
        if self._goaway_last is not None and stream.id > self._goaway_last:
            self._fake._record(stream, None, 0, "goaway")  # ignored, as RFC 9113 says
            return
        self._advertise()
        if len(self._active) >= self._limit:
            self._conn.reset_stream(stream.id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._fake._record(stream, None, 0, "refused")
            return
        self._streams[stream.id] = stream
        self._last_request_id = stream.id
        self._active.add(stream.id)
        self._fake._in_flight(len(self._active))
        self._requests_seen += 1
        after = self._fake.goaway_after
        if after is not None and self._requests_seen >= after and self._goaway_last is None:
            self.goaway("Shutdown")

    async def _respond(self, stream: Stream) -> None:
        fake = self._fake
        answer: Answer | None = None
        recorded = False
        stalled = False
        try:
            answer = fake._decide(stream)
            if answer.action == "refuse":
                recorded = True
                fake._record(stream, answer, 0, "refused")
                self._conn.reset_stream(stream.id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self._flush()
                return
            if answer.action == "stall":
                recorded = stalled = True  # holds its stream slot until the client resets it
                fake._record(stream, answer, 0, "stall")
                return
            if fake.latency > 0:
                await asyncio.sleep(fake.latency)
            if answer.action == "reset":
                recorded = True
                fake._record(stream, answer, 0, "reset")
                self.cut()
                return
            if self._closed:
                return  # recorded as "cancelled" below
            recorded = True
            fake._record(stream, answer, answer.status, answer.reason)
            self.last_status = answer.status
            self._advertise()
            headers = [(":status", str(answer.status)), *answer.headers]
            if answer.body:
                headers.append(("content-length", str(len(answer.body))))
            self._conn.send_headers(stream.id, headers, end_stream=not answer.body)
            self._flush()
            if answer.body:
                await self._send_body(stream, answer.body)
            self._streams.pop(stream.id, None)
        except asyncio.CancelledError:
            raise
        except h2.exceptions.StreamClosedError:
            self._streams.pop(stream.id, None)
        except Exception:
            log.exception("%s: error answering stream %d", fake, stream.id)
            with contextlib.suppress(Exception):
                self._conn.reset_stream(stream.id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self._flush()
        finally:
            if not recorded:
                fake._record(stream, answer, 0, "cancelled")
            if not stalled:
                self._stream_done(stream.id)

    async def _send_body(self, stream: Stream, data: bytes) -> None:
        while data:
            if self._closed:
                return
            window = self._conn.local_flow_control_window(stream.id)
            if window <= 0:
                stream.window_open.clear()
                await stream.window_open.wait()
                continue
            size = min(window, len(data), self._conn.max_outbound_frame_size)
            self._conn.send_data(stream.id, data[:size])
            data = data[size:]
            self._flush()
        self._conn.end_stream(stream.id)
        self._flush()


# -- the fake ----------------------------------------------------------------------------

AnswerT = TypeVar("AnswerT", bound=Answer)
RecordT = TypeVar("RecordT", bound=Exchange)


class H2Fake(abc.ABC, Generic[AnswerT, RecordT]):
    """A fake service on https://127.0.0.1:<port> (HTTP/2, TLS, ALPN h2) in a daemon
    thread; see the module docstring for what every service gets from here."""

    # The service's scripted answers and transport events (its own kind of answer).
    _rules: Rules[Any]

    def __init__(
        self,
        *,
        latency: float,
        port: int,
        max_streams: int,
        goaway_after: int | None,
        settings_delay: float,
    ) -> None:
        self.latency = latency
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.settings_delay = settings_delay
        self.requests: list[RecordT] = []
        self.connections_opened = 0
        self.goaways_sent = 0
        self.protocol_errors = 0  # connections ended for a client's protocol error
        self.max_streams_in_flight = 0  # on one connection, since the last reset_records()
        # How each header name arrived, since the last reset_records(): the names that
        # came as HPACK "never indexed" literals (kept out of the compression table),
        # and those that came any other way.
        self.never_indexed: set[str] = set()
        self.indexable: set[str] = set()
        self.connections_cut: dict[int, float] = {}  # connection -> when the fake cut it

        self._requested_port = port
        self._port: int | None = None
        self._tmpdir: str | None = None
        self._pki: Pki | None = None
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._connections: set[_Connection] = set()
        self._serials = itertools.count(1)  # never reset: records keep pointing at one
        self._server: ServerThread | None = None

    def __str__(self) -> str:
        return f"fake {self._service_name()}"

    # -- what a service provides

    @abc.abstractmethod
    def _decide(self, stream: Stream) -> AnswerT:
        """The service's verdict on one complete request (on the server's loop)."""

    @abc.abstractmethod
    def _to_record(
        self, stream: Stream, answer: AnswerT | None, status: int, reason: str | None
    ) -> RecordT:
        """The record of one request: `answer` None if it was never decided (refused
        above the limit, above a GOAWAY, cancelled first)."""

    def _prepare(self, directory: str, pki: Pki) -> None:
        """Write the service's own files (keys, credentials) into `directory` and start
        whatever else it serves (with `pki`'s certificate), before the HTTP/2 listener."""

    def _shutdown(self) -> None:
        """Stop what `_prepare` started."""

    def _stream_limit(self, last_status: int | None) -> int:
        """SETTINGS_MAX_CONCURRENT_STREAMS for a connection whose last answer had
        `last_status` (None: nothing answered yet)."""
        return self.max_streams

    def _goaway_data(self, reason: str) -> bytes:
        """The GOAWAY frame's debug data."""
        return reason.encode()

    def _service_name(self) -> str:
        return type(self).__name__.removeprefix("Fake")

    # -- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._tmpdir = tempfile.mkdtemp(prefix=f"fake-{self._service_name().lower()}-")
        try:
            self._pki = make_pki(self._tmpdir)
            self._prepare(self._tmpdir, self._pki)
            self._server = ServerThread(
                str(self),
                lambda: _Connection(self),
                server_context(self._pki, alpn=["h2"]),
                port=self._requested_port,
                on_stop=self._abort_connections,
            )
            self._port = self._server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the thread; delete the files."""
        if self._server is not None:
            self._server.stop()
        self._shutdown()
        self._server = None
        self._port = None
        self._pki = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests and clients read

    def _running(self) -> Pki:
        if self._pki is None or self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running; use start() or a with block")
        return self._pki

    @property
    def port(self) -> int:
        self._running()
        assert self._port is not None
        return self._port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        """The CA certificate a client trusts to reach this fake."""
        return self._running().ca_file

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def accepted(self) -> list[RecordT]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[RecordT]:
        """Block until at least ``n`` requests were recorded; return them all.
        Raises TimeoutError otherwise."""
        with self._recorded:
            if not wait_until(self._recorded, lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(
                    f"{self}: {len(self.requests)} request(s) recorded, "
                    f"wanted {n} within {timeout}s"
                )
            return list(self.requests)

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections_opened = 0
            self.goaways_sent = 0
            self.protocol_errors = 0
            self.max_streams_in_flight = 0
            self.connections_cut.clear()
            self.never_indexed.clear()
            self.indexable.clear()

    def _header_seen(self, name: str, *, never_indexed: bool) -> None:
        with self._lock:
            (self.never_indexed if never_indexed else self.indexable).add(name)

    # -- transport events and scripting

    def goaway_now(self, reason: str = "Shutdown") -> None:
        """Send GOAWAY on every open connection (streams in flight still get answers)."""

        def goaway_all() -> None:
            for connection in list(self._connections):
                connection.goaway(reason)

        self._on_loop(goaway_all)

    def drop_connections(self) -> None:
        """Abruptly close every client connection (the listener stays up)."""

        def cut_all() -> None:
            for connection in list(self._connections):
                connection.cut()

        self._on_loop(cut_all)

    def clear_rules(self) -> None:
        self._rules.clear()

    def drop_rule(self, rule: Rule[Any]) -> None:
        """Take back one rule that `respond(...)` returned."""
        self._rules.drop(rule)

    # -- called by the connections, on the server's loop

    def _on_loop(self, action: Callable[[], object]) -> None:
        if self._server is not None:
            self._server.call(action)

    def _abort_connections(self) -> None:
        for connection in list(self._connections):
            connection.abort()

    def _connection_opened(self, connection: _Connection) -> int:
        with self._lock:
            self._connections.add(connection)
            self.connections_opened += 1
            return next(self._serials)

    def _connection_closed(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _connection_cut(self, serial: int) -> None:
        with self._lock:
            self.connections_cut.setdefault(serial, REAL_CLOCK["monotonic"]())

    def _protocol_error(self) -> None:
        with self._lock:
            self.protocol_errors += 1

    def _goaway_sent(self) -> None:
        with self._lock:
            self.goaways_sent += 1

    def _in_flight(self, streams: int) -> None:
        with self._lock:
            self.max_streams_in_flight = max(self.max_streams_in_flight, streams)

    def _record(
        self, stream: Stream, answer: AnswerT | None, status: int, reason: str | None
    ) -> None:
        now = REAL_CLOCK["monotonic"]()
        record = dataclasses.replace(
            self._to_record(stream, answer, status, reason),
            connection=stream.connection,
            arrived=stream.arrived or now,
            answered=now,
        )
        with self._recorded:
            self.requests.append(record)
            self._recorded.notify_all()


# -- standalone --------------------------------------------------------------------------


def standalone_parser(description: str) -> argparse.ArgumentParser:
    """The options every fake takes when it runs on its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def serve_until_interrupted(
    fake: H2Fake[Any, Any], environment: Callable[[], dict[str, str]], *, verbose: bool
) -> None:
    """Start `fake`, print the FOLLOWUPS_* lines a client needs (`environment`), serve
    until SIGINT or SIGTERM, then say what was served."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    with fake:
        for name, value in environment().items():
            print(f"{name}={value}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        print(f"# served {len(fake.requests)} request(s), {len(fake.accepted())} accepted")
