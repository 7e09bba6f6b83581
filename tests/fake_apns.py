"""A fake Apple Push Notification service: real HTTP/2 over TLS on 127.0.0.1.

    with FakeAPNs() as apns:
        client = SomeAPNSClient(url=apns.url, ca_file=apns.ca_file, key_file=apns.key_file,
                                key_id=apns.key_id, team_id=apns.team_id)
        ...
        assert [r.token for r in apns.accepted()] == [TOKEN]

On start it creates, in a temporary directory removed on stop, a CA (``ca_file``: what a
client passes as its trust root), a server certificate for 127.0.0.1/localhost, the ES256
provider-token key (``key_file``, PKCS#8 PEM like Apple's .p8) and a second key the server
does not accept (``wrong_key_file``).

Each request is checked the way APNs checks it, in this order, and refused with APNs's
status and ``{"reason": ...}`` body:

1. path ``/3/device/<token>`` (404 BadPath), method POST (405 MethodNotAllowed);
2. ``authorization: bearer <JWT>``: missing (403 MissingProviderToken); not ES256, not
   signed by ``key_file``, ``kid`` != key_id or ``iss`` != team_id (403
   InvalidProviderToken); ``iat`` older than one hour (403 ExpiredProviderToken);
3. ``apns-topic``: missing (400 MissingTopic), not ``topic`` (400 TopicDisallowed);
4. scripted transport events (``action`` reset, stall or refuse), first match wins;
5. malformed ``apns-id`` / ``apns-priority`` / ``apns-collapse-id`` (> 64 bytes) /
   ``apns-expiration`` / ``apns-push-type`` headers (400 BadMessageId, BadPriority,
   BadCollapseId, BadExpirationDate, InvalidPushType);
6. body over 4096 bytes (5120 for voip) (413 PayloadTooLarge); empty, not JSON or not a
   JSON object (400 PayloadEmpty);
7. device token empty (400 MissingDeviceToken) or not 64 hex digits (400 BadDeviceToken);
8. the scripted answers added with :meth:`FakeAPNs.respond`, first match wins.

Otherwise 200 with an empty body. Every answer carries ``apns-id`` (the request's, else a
new uuid4).

The connection and token rules Apple's servers enforce (Apple's "Sending notification
requests to APNs" and "Establishing a token-based connection to APNs", and what pushy,
apns2, PyAPNs2 and aioapns learned in their issue trackers), on unless switched off:

- ``settings_delay`` (20 ms): the server's first bytes (its SETTINGS frame) reach the
  client that long after the connection is up, as over a real network, so a client that
  does not wait for them sends into the unknown limit.
- ``stream_gating``: a new connection advertises SETTINGS_MAX_CONCURRENT_STREAMS = 1 until
  a notification is accepted, then ``max_streams`` (1000); a rejected notification drops
  it to 1 again, the next accepted one raises it. The SETTINGS frame goes out before the
  answer that caused it. A stream above the advertised limit (counting streams not yet
  answered) is reset with REFUSED_STREAM and recorded with reason "refused".
- ``token_rules``: per key id and team, a provider token never seen before is a renewal;
  a renewal within 20 minutes of the previous one is answered 429
  TooManyProviderTokenUpdates, across every connection and client (``token_renewals``
  counts them). A token with ``iat`` over an hour old is 403 ExpiredProviderToken.
- ``goaway_after``: after that many requests on a connection, GOAWAY (NO_ERROR, debug
  data ``{"reason": "Shutdown"}``) with the last stream id received; streams at or below
  it are still answered, then the connection closes. Streams above it are never
  processed (recorded with reason "goaway"). ``goaway_now()`` does it on every open
  connection at once.

Each request that reached the handler is recorded in :attr:`FakeAPNs.requests` just
before its answer is written, so once a client has its response the record is there.
Requests never answered are recorded with ``status=0`` and ``reason`` "reset", "stall"
or "cancelled" (stream or connection went away while the answer was pending).

The server's event loop reads the real monotonic clock, so it keeps working under
freezegun; the JWT ``iat`` check and 410 timestamps use ``time.time()`` as patched, i.e.
the same clock as the client under test.

Standalone: ``python tests/fake_apns.py --port 8443 --latency 0.02`` prints
``FOLLOWUPS_APNS_*=...`` lines and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Final, Literal, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fake_server import REAL_CLOCK, ServerThread

__all__ = ["FakeAPNs", "Received"]

log = logging.getLogger(__name__)


MAX_PAYLOAD_BYTES: Final = 4096
MAX_VOIP_PAYLOAD_BYTES: Final = 5120
TOKEN_MAX_AGE_SECONDS: Final = 3600
_BODY_KEEP_LIMIT: Final = 1 << 20  # bytes of an oversized body kept in the record
_TOKEN_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_PUSH_TYPES: Final = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
TOKEN_RENEWAL_MIN_SECONDS: Final = 20 * 60
_HIGH_STREAM_LIMIT: Final = 1000
_AUTH_STATUS: Final[dict[str, int]] = {"TooManyProviderTokenUpdates": 429}


class _UnenforcedSettings(h2.settings.Settings):
    """h2 would end the whole connection (PROTOCOL_ERROR) on a stream above the advertised
    limit; APNs refuses just that stream, which the protocol below does itself."""

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


_DEFAULT_REASONS: Final[dict[int, str]] = {
    400: "BadDeviceToken",
    403: "InvalidProviderToken",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}

Action = Literal["reset", "stall", "refuse"]


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it, and what it answered."""

    token: str
    path: str
    method: str
    headers: dict[str, str]  # lower-case names, no pseudo-headers
    body: bytes
    payload: dict[str, Any] | None  # the body parsed, when it is a JSON object
    status: int  # 0: never answered (reason "reset", "stall" or "cancelled")
    reason: str | None
    apns_id: str
    jwt_claims: dict[str, Any] | None  # claims as sent (unverified when the key is wrong)


@dataclass
class _Rule:
    status: int
    reason: str | None
    token: str | None
    remaining: int | None
    body: bytes | None
    timestamp: bool
    action: str | None


@dataclass
class _Answer:
    status: int
    reason: str | None
    body: bytes = b""
    action: str | None = None


@dataclass
class _Stream:
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    body_len: int = 0
    task: asyncio.Task[None] | None = None
    window_open: asyncio.Event = field(default_factory=asyncio.Event)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _error_body(reason: str, *, with_timestamp: bool = False) -> bytes:
    doc: dict[str, Any] = {"reason": reason}
    if with_timestamp:
        doc["timestamp"] = int(time.time() * 1000)
    return json.dumps(doc, separators=(",", ":")).encode()


# -- certificates and keys ----------------------------------------------------------------


def _write_private_key(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(path, "wb") as f:
        f.write(pem)


def _write_cert(path: str, cert: x509.Certificate) -> None:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _make_pki(directory: str) -> tuple[str, str, str]:
    """A CA and a 127.0.0.1/localhost server certificate it signed: (ca, cert, key) paths."""
    now = dt.datetime.fromtimestamp(REAL_CLOCK["time"](), dt.UTC)
    not_before = now - dt.timedelta(days=1)
    not_after = now + dt.timedelta(days=3650)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "followups fake APNs CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server-key.pem")
    _write_cert(ca_path, ca_cert)
    _write_cert(cert_path, server_cert)
    _write_private_key(key_path, server_key)
    return ca_path, cert_path, key_path


# -- one connection ----------------------------------------------------------------------


class _H2Protocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: FakeAPNs) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._conn.state_machine = _DrainingStateMachine()
        self._limit = 1 if server.stream_gating else _HIGH_STREAM_LIMIT
        self._conn.local_settings = _UnenforcedSettings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._limit,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 2**16,
            },
        )
        self._streams: dict[int, _Stream] = {}
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
            log.debug("fake APNs: refusing a connection without ALPN h2 (got %r)", alpn)
            self._closed = True
            self._transport.abort()
            return
        self._server._connection_opened(self)
        self._conn.initiate_connection()
        delay = self._server.settings_delay
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
            events = self._conn.receive_data(data)
            for event in events:
                self._on_event(event)
            self._flush()
        except h2.exceptions.ProtocolError as exc:
            log.debug("fake APNs: HTTP/2 protocol error from client: %r", exc)
            self._flush()
            self.close()
        except Exception:
            log.exception("fake APNs: error handling a connection; dropping it")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._connection_closed(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
            stream.window_open.set()

    # used by the server

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

    def goaway(self, reason: str = "Shutdown") -> None:
        """GOAWAY with the last stream received: those still get their answers."""
        if self._closed or self._goaway_last is not None:
            return
        self._goaway_last = self._last_request_id
        self._conn.close_connection(
            h2.errors.ErrorCodes.NO_ERROR,
            additional_data=json.dumps({"reason": reason}).encode(),
            last_stream_id=self._goaway_last,
        )
        self._server._goaway_sent()
        self._flush()
        self._close_if_drained()

    def _stream_done(self, stream_id: int) -> None:
        self._active.discard(stream_id)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._goaway_last is not None and not self._active:
            self.close()

    def _advertise_for(self, status: int) -> None:
        """APNs' limit follows its answers: 1 after a rejection, high after an acceptance."""
        if not self._server.stream_gating:
            return
        wanted = _HIGH_STREAM_LIMIT if status == 200 else 1
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
            stream = _Stream()
            for name_raw, value_raw in event.headers or []:
                name, value = _text(name_raw), _text(value_raw)
                if name == ":method":
                    stream.method = value
                elif name == ":path":
                    stream.path = value
                elif not name.startswith(":"):
                    previous = stream.headers.get(name)
                    stream.headers[name] = value if previous is None else f"{previous}, {value}"
            if self._goaway_last is not None and event.stream_id > self._goaway_last:
                self._server._record_unanswered(stream, "goaway")  # ignored, as RFC 9113 says
                return
            if len(self._active) >= self._limit:
                self._conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self._server._record_unanswered(stream, "refused")
                return
            self._streams[event.stream_id] = stream
            self._last_request_id = event.stream_id
            self._active.add(event.stream_id)
            self._server._in_flight(len(self._active))
            self._requests_seen += 1
            after = self._server.goaway_after
            if after is not None and self._requests_seen >= after and self._goaway_last is None:
                self.goaway()
        elif isinstance(event, h2.events.DataReceived):
            data = event.data or b""
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is not None:
                stream_or_none.body_len += len(data)
                room = _BODY_KEEP_LIMIT - len(stream_or_none.body)
                if room > 0:
                    stream_or_none.body += data[:room]
            if event.flow_controlled_length:
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is not None and stream_or_none.task is None:
                stream_or_none.task = asyncio.get_running_loop().create_task(
                    self._respond(event.stream_id, stream_or_none)
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

    async def _respond(self, stream_id: int, stream: _Stream) -> None:
        server = self._server
        recorded = False
        stalled = False
        try:
            token, answer, apns_id, payload, claims = server._decide(stream)

            def record(status: int, reason: str | None) -> None:
                nonlocal recorded
                recorded = True
                server._record(
                    Received(
                        token=token,
                        path=stream.path,
                        method=stream.method,
                        headers=dict(stream.headers),
                        body=bytes(stream.body),
                        payload=payload,
                        status=status,
                        reason=reason,
                        apns_id=apns_id,
                        jwt_claims=claims,
                    )
                )

            if answer.action == "refuse":
                record(0, "refused")
                self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self._flush()
                return
            if answer.action == "stall":
                record(0, "stall")
                stalled = True  # holds its stream slot until the client resets it
                return
            latency = server.latency
            if latency > 0:
                await asyncio.sleep(latency)
            if answer.action == "reset":
                record(0, "reset")
                self.abort(rst=True)
                return
            if self._closed:
                return  # recorded as "cancelled" below
            record(answer.status, answer.reason)
            self._advertise_for(answer.status)
            headers = [(":status", str(answer.status)), ("apns-id", apns_id)]
            if answer.body:
                headers.append(("content-type", "application/json"))
                headers.append(("content-length", str(len(answer.body))))
            self._conn.send_headers(stream_id, headers, end_stream=not answer.body)
            self._flush()
            if answer.body:
                await self._send_body(stream_id, stream, answer.body)
            self._streams.pop(stream_id, None)
        except asyncio.CancelledError:
            raise
        except h2.exceptions.StreamClosedError:
            self._streams.pop(stream_id, None)
        except Exception:
            log.exception("fake APNs: error answering stream %d", stream_id)
            with contextlib.suppress(Exception):
                self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self._flush()
        finally:
            if not recorded:
                server._record_unanswered(stream, "cancelled")
            if not stalled:
                self._stream_done(stream_id)

    async def _send_body(self, stream_id: int, stream: _Stream, data: bytes) -> None:
        while data:
            if self._closed:
                return
            window = self._conn.local_flow_control_window(stream_id)
            if window <= 0:
                stream.window_open.clear()
                await stream.window_open.wait()
                continue
            size = min(window, len(data), self._conn.max_outbound_frame_size)
            self._conn.send_data(stream_id, data[:size])
            data = data[size:]
            self._flush()
        self._conn.end_stream(stream_id)
        self._flush()


# -- the server ---------------------------------------------------------------------------


class FakeAPNs:
    """A fake APNs on https://127.0.0.1:<port> (HTTP/2, TLS, ALPN h2) in a daemon thread."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        topic: str = "com.example.parent",
        key_id: str = "ABC123DEFG",
        team_id: str = "TEAM123456",
        port: int = 0,
        stream_gating: bool = True,
        token_rules: bool = True,
        goaway_after: int | None = None,
        settings_delay: float = 0.02,
    ) -> None:
        self.latency = latency
        self.topic = topic
        self.key_id = key_id
        self.team_id = team_id
        self.stream_gating = stream_gating
        self.token_rules = token_rules
        self.goaway_after = goaway_after
        self.settings_delay = settings_delay
        self.requests: list[Received] = []
        self.connections_opened = 0
        self.goaways_sent = 0
        self.max_streams_in_flight = 0  # on one connection, since the last reset_records()
        # Provider-token renewals per (kid, iss): tokens seen, and when the last was new.
        self.token_renewals = 0
        self._tokens_seen: dict[tuple[str, str], set[str]] = {}
        self._last_renewal: dict[tuple[str, str], float] = {}

        self._requested_port = port
        self._port: int | None = None
        self._tmpdir: str | None = None
        self._ca_file = ""
        self._key_file = ""
        self._wrong_key_file = ""
        self._public_key: ec.EllipticCurvePublicKey | None = None
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._protocols: set[_H2Protocol] = set()
        self._server: ServerThread | None = None

    # -- lifecycle

    def start(self) -> FakeAPNs:
        if self._server is not None:
            raise RuntimeError("FakeAPNs is already running")
        self._tmpdir = tempfile.mkdtemp(prefix="fake-apns-")
        try:
            ca_file, cert_file, server_key_file = _make_pki(self._tmpdir)
            token_key = ec.generate_private_key(ec.SECP256R1())
            self._public_key = token_key.public_key()
            self._key_file = os.path.join(self._tmpdir, f"AuthKey_{self.key_id}.p8")
            _write_private_key(self._key_file, token_key)
            self._wrong_key_file = os.path.join(self._tmpdir, "AuthKey_WRONG.p8")
            _write_private_key(self._wrong_key_file, ec.generate_private_key(ec.SECP256R1()))
            self._ca_file = ca_file

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.options |= ssl.OP_NO_COMPRESSION
            ctx.set_alpn_protocols(["h2"])
            ctx.load_cert_chain(cert_file, server_key_file)

            self._server = ServerThread(
                "fake APNs",
                lambda: _H2Protocol(self),
                ctx,
                port=self._requested_port,
                on_stop=self._abort_connections,
            )
            self._port = self._server.start()
        except BaseException:
            self._server = None
            self._cleanup_files()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the thread; delete the files."""
        if self._server is None:
            return
        self._server.stop()
        self._server = None
        self._port = None
        self._cleanup_files()

    def _abort_connections(self) -> None:
        for protocol in list(self._protocols):
            protocol.abort()

    def __enter__(self) -> FakeAPNs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _cleanup_files(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _connection_opened(self, protocol: _H2Protocol) -> None:
        with self._lock:
            self._protocols.add(protocol)
            self.connections_opened += 1

    def _connection_closed(self, protocol: _H2Protocol) -> None:
        with self._lock:
            self._protocols.discard(protocol)

    # -- what tests and clients read

    def _started(self, value: str) -> str:
        if self._server is None:
            raise RuntimeError("FakeAPNs is not running; use start() or a with block")
        return value

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeAPNs is not running; use start() or a with block")
        return self._port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return self._started(self._ca_file)

    @property
    def key_file(self) -> str:
        return self._started(self._key_file)

    @property
    def wrong_key_file(self) -> str:
        return self._started(self._wrong_key_file)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._protocols)

    def goaway_now(self, reason: str = "Shutdown") -> None:
        """Send GOAWAY on every open connection (streams in flight still get answers)."""

        def goaway_all() -> None:
            for protocol in list(self._protocols):
                protocol.goaway(reason)

        self._on_loop(goaway_all)

    def _on_loop(self, action: Callable[[], object]) -> None:
        if self._server is not None:
            self._server.call(action)

    def _in_flight(self, streams: int) -> None:
        if streams > self.max_streams_in_flight:
            self.max_streams_in_flight = streams

    def _goaway_sent(self) -> None:
        with self._lock:
            self.goaways_sent += 1

    def reset_tokens(self) -> None:
        """Forget every provider token seen: the next one is a first, not a renewal."""
        with self._lock:
            self._tokens_seen.clear()
            self._last_renewal.clear()
            self.token_renewals = 0

    def refused(self) -> list[Received]:
        """Requests refused with REFUSED_STREAM (above the advertised stream limit)."""
        with self._lock:
            return [r for r in self.requests if r.reason == "refused"]

    def drop_connections(self) -> None:
        """Abruptly close every client connection (the listener stays up)."""

        def drop_all() -> None:
            for protocol in list(self._protocols):
                protocol.abort(rst=True)

        self._on_loop(drop_all)

    # -- scripting

    def respond(
        self,
        status: int,
        reason: str | None = None,
        *,
        token: str | None = None,
        times: int | None = None,
        body: bytes | None = None,
        timestamp: bool = True,
        action: str | None = None,
    ) -> None:
        """Answer matching requests (``token`` None: all) with ``status``/``reason`` (or the
        raw ``body``) ``times`` times (None: forever), after the auth and topic checks.
        ``reason`` None: APNs's usual reason for ``status``. 410 answers carry a
        ``timestamp`` unless ``timestamp=False``. ``action="reset"`` drops the connection
        instead of answering; ``action="stall"`` never answers; ``action="refuse"`` resets the
        stream with REFUSED_STREAM (not processed)."""
        if action not in (None, "reset", "stall", "refuse"):
            raise ValueError(f"action must be None, 'reset', 'stall' or 'refuse', not {action!r}")
        if times is not None and times < 1:
            raise ValueError("times must be None or >= 1")
        with self._lock:
            self._rules.append(
                _Rule(
                    status=status,
                    reason=reason,
                    token=token,
                    remaining=times,
                    body=body,
                    timestamp=timestamp,
                    action=action,
                )
            )

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    # -- records

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def collapse_ids(self) -> list[str]:
        """``apns-collapse-id`` of the accepted requests that had one, in arrival order."""
        return [
            r.headers["apns-collapse-id"]
            for r in self.accepted()
            if "apns-collapse-id" in r.headers
        ]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least ``n`` requests were recorded; return them all.
        Raises TimeoutError otherwise."""
        deadline = REAL_CLOCK["monotonic"]() + timeout
        with self._recorded:
            while len(self.requests) < n:
                remaining = deadline - REAL_CLOCK["monotonic"]()
                if remaining <= 0:
                    raise TimeoutError(
                        f"fake APNs: {len(self.requests)} request(s) recorded, "
                        f"wanted {n} within {timeout}s"
                    )
                self._recorded.wait(remaining)
            return list(self.requests)

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections_opened = 0
            self.goaways_sent = 0
            self.max_streams_in_flight = 0

    def _record(self, received: Received) -> None:
        with self._recorded:
            self.requests.append(received)
            self._recorded.notify_all()

    def _record_unanswered(self, stream: _Stream, reason: str) -> None:
        path = stream.path.split("?", 1)[0]
        self._record(
            Received(
                token=path.removeprefix("/3/device/") if path.startswith("/3/device/") else "",
                path=stream.path,
                method=stream.method,
                headers=dict(stream.headers),
                body=bytes(stream.body),
                payload=None,
                status=0,
                reason=reason,
                apns_id=stream.headers.get("apns-id", ""),
                jwt_claims=None,
            )
        )

    # -- the APNs rules

    def _decide(
        self, stream: _Stream
    ) -> tuple[str, _Answer, str, dict[str, Any] | None, dict[str, Any] | None]:
        """(token, answer, apns-id, parsed payload, JWT claims) for one complete request."""
        headers = stream.headers
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        payload: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(bytes(stream.body))
            if isinstance(parsed, dict):
                payload = parsed

        path = stream.path.split("?", 1)[0]
        token = path.removeprefix("/3/device/") if path.startswith("/3/device/") else ""
        claims: dict[str, Any] | None = None

        def answer(status: int, reason: str) -> _Answer:
            return _Answer(status, reason, _error_body(reason))

        if not path.startswith("/3/device/") or "/" in token:
            return token, answer(404, "BadPath"), apns_id, payload, claims
        if stream.method != "POST":
            return token, answer(405, "MethodNotAllowed"), apns_id, payload, claims

        authorization = headers.get("authorization")
        if authorization is None:
            return token, answer(403, "MissingProviderToken"), apns_id, payload, claims
        claims, auth_problem = self._check_provider_token(authorization)
        if auth_problem is not None:
            status = _AUTH_STATUS.get(auth_problem, 403)
            return token, answer(status, auth_problem), apns_id, payload, claims

        topic = headers.get("apns-topic")
        if topic is None:
            return token, answer(400, "MissingTopic"), apns_id, payload, claims
        if topic != self.topic:
            return token, answer(400, "TopicDisallowed"), apns_id, payload, claims

        acted = self._match_rule(token, transport=True)
        if acted is not None:
            return token, acted, apns_id, payload, claims

        problem = self._check_headers(headers)
        if problem is not None:
            return token, answer(400, problem), apns_id, payload, claims

        voip = headers.get("apns-push-type") == "voip"
        limit = MAX_VOIP_PAYLOAD_BYTES if voip else MAX_PAYLOAD_BYTES
        if stream.body_len > limit:
            return token, answer(413, "PayloadTooLarge"), apns_id, payload, claims
        if payload is None:
            return token, answer(400, "PayloadEmpty"), apns_id, payload, claims

        if not token:
            return token, answer(400, "MissingDeviceToken"), apns_id, payload, claims
        if not _TOKEN_RE.fullmatch(token):
            return token, answer(400, "BadDeviceToken"), apns_id, payload, claims
        scripted = self._match_rule(token, transport=False)
        if scripted is not None:
            return token, scripted, apns_id, payload, claims
        return token, _Answer(200, None), apns_id, payload, claims

    def _check_provider_token(self, authorization: str) -> tuple[dict[str, Any] | None, str | None]:
        """(claims as sent, refusal reason or None)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, "InvalidProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            sent: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, "InvalidProviderToken"
        if header.get("alg") != "ES256":
            return sent, "InvalidProviderToken"
        if self._public_key is None:
            return sent, "InvalidProviderToken"
        try:
            jwt.decode(
                token,
                self._public_key,
                algorithms=["ES256"],
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "require": [],
                },
            )
        except jwt.PyJWTError:
            return sent, "InvalidProviderToken"
        if header.get("kid") != self.key_id or sent.get("iss") != self.team_id:
            return sent, "InvalidProviderToken"
        iat = sent.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            return sent, "InvalidProviderToken"
        if time.time() - iat > TOKEN_MAX_AGE_SECONDS:
            return sent, "ExpiredProviderToken"
        if self.token_rules and not self._is_allowed_renewal(
            (str(header.get("kid")), str(sent.get("iss"))), token
        ):
            return sent, "TooManyProviderTokenUpdates"
        return sent, None

    def _is_allowed_renewal(self, signer: tuple[str, str], token: str) -> bool:
        """A token not seen before is a renewal: at most one per 20 minutes per key."""
        now = time.time()
        with self._lock:
            seen = self._tokens_seen.setdefault(signer, set())
            if token in seen:
                return True
            last = self._last_renewal.get(signer)
            if last is not None and now - last < TOKEN_RENEWAL_MIN_SECONDS:
                return False
            seen.add(token)
            self._last_renewal[signer] = now
            self.token_renewals += 1
            return True

    @staticmethod
    def _check_headers(headers: dict[str, str]) -> str | None:
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID_RE.fullmatch(apns_id):
            return "BadMessageId"
        priority = headers.get("apns-priority")
        if priority is not None and priority not in ("1", "5", "10"):
            return "BadPriority"
        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > 64:
            return "BadCollapseId"
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return "BadExpirationDate"
        push_type = headers.get("apns-push-type")
        if push_type is not None and push_type not in _PUSH_TYPES:
            return "InvalidPushType"
        return None

    def _match_rule(self, token: str, *, transport: bool) -> _Answer | None:
        """The first scripted rule for `token`: with transport=True only those that act on
        the stream (reset, stall, refuse: before any check, as the network would), else
        only answers (after the request's own checks, as the real service judges a
        malformed request before any device)."""
        with self._lock:
            for rule in self._rules:
                if rule.token is not None and rule.token != token:
                    continue
                if (rule.action is not None) != transport:
                    continue
                if rule.remaining is not None:
                    if rule.remaining <= 0:
                        continue
                    rule.remaining -= 1
                if rule.action is not None:
                    return _Answer(rule.status, rule.reason, action=rule.action)
                if rule.body is not None:
                    return _Answer(rule.status, rule.reason, rule.body)
                if rule.status == 200 and rule.reason is None:
                    return _Answer(200, None)
                reason = rule.reason or _DEFAULT_REASONS.get(rule.status, "InternalServerError")
                body = _error_body(reason, with_timestamp=rule.status == 410 and rule.timestamp)
                return _Answer(rule.status, reason, body)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake APNs until Ctrl-C.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument("--topic", default="com.example.parent")
    parser.add_argument("--key-id", default="ABC123DEFG")
    parser.add_argument("--team-id", default="TEAM123456")
    parser.add_argument("--goaway-after", type=int, default=None, help="requests per connection")
    parser.add_argument("--no-gating", action="store_true", help="no APNs stream limits")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    apns = FakeAPNs(
        latency=args.latency,
        topic=args.topic,
        key_id=args.key_id,
        team_id=args.team_id,
        port=args.port,
        stream_gating=not args.no_gating,
        goaway_after=args.goaway_after,
    )
    with apns:
        print(f"FOLLOWUPS_APNS_URL={apns.url}")
        print(f"FOLLOWUPS_APNS_CA_FILE={apns.ca_file}")
        print(f"FOLLOWUPS_APNS_KEY_FILE={apns.key_file}")
        print(f"FOLLOWUPS_APNS_KEY_ID={apns.key_id}")
        print(f"FOLLOWUPS_APNS_TEAM_ID={apns.team_id}")
        print(f"FOLLOWUPS_APNS_TOPIC={apns.topic}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        print(f"# served {len(apns.requests)} request(s), {len(apns.accepted())} accepted")


if __name__ == "__main__":
    main()
