"""A fake Firebase Cloud Messaging (HTTP v1) with its OAuth 2 token endpoint, on 127.0.0.1.

    with FakeFCM() as fcm:
        settings = Settings(push="fcm", fcm_credentials_file=Path(fcm.credentials_file),
                            fcm_url=fcm.url, fcm_ca_file=Path(fcm.ca_file))
        ...
        assert [r.token for r in fcm.accepted()] == [TOKEN]

On start it creates, in a temporary directory removed on stop, a CA (``ca_file``) and a
server certificate for 127.0.0.1/localhost (tests/fake_apns.py's PKI), a service account
with a fresh RSA key (``credentials_file``: the JSON key file the Google Cloud console
hands out, its ``token_uri`` pointing at this fake) and the same account with a key the
fake does not know (``wrong_credentials_file``).

The token endpoint (``token_uri``, HTTPS, HTTP/1.1 as Google's) takes the JWT-bearer
grant: the assertion must be RS256, signed by the account's key, with ``iss`` the
account's email, ``aud`` Google's token endpoint, the firebase.messaging scope, and ``iat``/``exp``
at most an hour apart and around now. Otherwise 400 ``invalid_grant``. It answers an
opaque bearer token valid ``token_lifetime`` seconds (``tokens_issued`` counts them).
``token_respond(status, error)`` scripts its next answers.

``POST /v1/projects/<project_id>/messages:send`` (HTTP/2 over TLS, ALPN h2, at most
``max_streams`` concurrent streams, refused above) is checked as FCM checks it, in this
order, answering Google's error shape (``{"error": {"code", "message", "status",
"details": [FcmError, BadRequest]}}``):

1. method POST and the path, with this project (404 NOT_FOUND);
2. ``authorization: Bearer <token>`` issued by the token endpoint and not expired or
   revoked (401 UNAUTHENTICATED, no FcmError: the access-token refusal);
3. the scripted rules added with :meth:`FakeFCM.respond`, first match wins;
4. the body, strictly: JSON, only the fields FCM v1 defines (an unknown one such as the
   legacy ``notification.sound`` is 400 INVALID_ARGUMENT with a BadRequest field
   violation), exactly one target, ``data`` values strings and no reserved keys,
   ``android.priority`` normal or high, ``apns.headers`` values strings with a valid
   apns-priority and an apns-collapse-id of at most 64 bytes, and the payload an iPhone
   would get (aps alert, data and FCM's own keys) at most 4,096 bytes;
5. the registration token: an FCM token's shape, else 400 INVALID_ARGUMENT "The
   registration token is not a valid FCM registration token" (no field violation, as FCM).

Otherwise 200 ``{"name": "projects/<p>/messages/0:<n>"}``. Every request reaching step 3
is recorded in :attr:`FakeFCM.requests` just before its answer is written.

Standalone: ``python tests/fake_fcm.py --port 8444 --latency 0.02`` prints the
``FOLLOWUPS_FCM_*`` lines and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import logging
import os
import re
import shutil
import signal
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Final, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fake_apns import _DrainingStateMachine, _make_pki, _UnenforcedSettings
from tests.fake_server import REAL_CLOCK, ServerThread

__all__ = ["FakeFCM", "FcmReceived"]

log = logging.getLogger(__name__)

SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
JWT_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion's audience is Google's token endpoint whatever token_uri says (Google
# checks it, and google-auth always writes it).
TOKEN_AUDIENCE: Final = "https://oauth2.googleapis.com/token"
MAX_APNS_PAYLOAD: Final = 4096
_FCM_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+:[A-Za-z0-9_-]{60,}")
_RESERVED_DATA: Final = frozenset({"from", "notification", "message_type"})

# The fields FCM v1 defines (projects.messages resource), per object.
_MESSAGE_FIELDS: Final = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    }
)
_NOTIFICATION_FIELDS: Final = frozenset({"title", "body", "image"})
_ANDROID_FIELDS: Final = frozenset(
    {
        "collapse_key",
        "priority",
        "ttl",
        "restricted_package_name",
        "data",
        "notification",
        "fcm_options",
        "direct_boot_ok",
    }
)
_ANDROID_NOTIFICATION_FIELDS: Final = frozenset(
    {
        "title",
        "body",
        "icon",
        "color",
        "sound",
        "tag",
        "click_action",
        "body_loc_key",
        "body_loc_args",
        "title_loc_key",
        "title_loc_args",
        "channel_id",
        "ticker",
        "sticky",
        "event_time",
        "local_only",
        "notification_priority",
        "default_sound",
        "default_vibrate_timings",
        "default_light_settings",
        "vibrate_timings",
        "visibility",
        "notification_count",
        "light_settings",
        "image",
    }
)
_APNS_FIELDS: Final = frozenset({"headers", "payload", "fcm_options", "live_activity_token"})

# Scripted errors: HTTP status, the error's status, and the FcmError errorCode (None: the
# error carries no FcmError detail, as for an access-token refusal).
_ERRORS: Final[dict[str, tuple[int, str, str | None, str]]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    "THIRD_PARTY_AUTH_ERROR": (
        401,
        "UNAUTHENTICATED",
        "THIRD_PARTY_AUTH_ERROR",
        "Auth error from APNS or Web Push Service",
    ),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "INTERNAL", "Internal error encountered."),
    "PERMISSION_DENIED": (
        403,
        "PERMISSION_DENIED",
        None,
        "Permission 'cloudmessaging.messages.create' denied on resource",
    ),
    "UNAUTHENTICATED": (
        401,
        "UNAUTHENTICATED",
        None,
        "Request had invalid authentication credentials. Expected OAuth 2 access token.",
    ),
}


@dataclass(frozen=True)
class FcmReceived:
    """One messages:send request as the fake saw it, and what it answered."""

    token: str  # message.token, "" when absent
    path: str
    headers: dict[str, str]
    body: bytes
    message: dict[str, Any] | None  # the body's "message", when the body is a JSON object
    status: int  # 0: never answered (reason "reset", "stall", "refused" or "cancelled")
    code: str | None  # the FcmError errorCode, else the error's status; None when accepted
    bearer: str | None


@dataclass
class _Rule:
    error: str | None
    token: str | None
    remaining: int | None
    retry_after: str | None
    action: str | None
    message: str | None


@dataclass
class _Answer:
    status: int
    code: str | None
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: str | None = None


@dataclass
class _Stream:
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None


def error_body(
    status: int,
    google_status: str,
    message: str,
    fcm_code: str | None = None,
    field_violation: tuple[str, str] | None = None,
) -> bytes:
    details: list[dict[str, Any]] = []
    if fcm_code is not None:
        details.append(
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        )
    if field_violation is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": field_violation[0], "description": field_violation[1]}
                ],
            }
        )
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


class _ShapeError(Exception):
    def __init__(self, field_path: str, description: str) -> None:
        super().__init__(description)
        self.field_path = field_path
        self.description = description


def _unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    for name in obj:
        if name not in allowed:
            raise _ShapeError(
                where,
                f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': "
                "Cannot find field.",
            )


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ShapeError(where, f"Invalid value at '{where}': expected an object")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    mapping = _object(value, where)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise _ShapeError(f"{where}[{key}]", f"Invalid value at '{where}[{key}]' (TYPE_STRING)")
    return mapping


def check_message(doc: Any) -> dict[str, Any]:
    """The body's message if FCM v1 would take its shape; raises _ShapeError otherwise."""
    body = _object(doc, "")
    _unknown(body, frozenset({"message", "validate_only"}), "")
    message = _object(body.get("message"), "message")
    _unknown(message, _MESSAGE_FIELDS, "message")
    targets = [t for t in ("token", "topic", "condition") if t in message]
    if len(targets) != 1:
        raise _ShapeError("message", "Exactly one of token, topic or condition is required")
    data = _string_map(message.get("data", {}), "message.data")
    for key in data:
        if key in _RESERVED_DATA or key.startswith(("google", "gcm")):
            raise _ShapeError("message.data", f"Invalid data key {key!r}: reserved")
    notification = _object(message.get("notification", {}), "message.notification")
    _unknown(notification, _NOTIFICATION_FIELDS, "message.notification")
    android = _object(message.get("android", {}), "message.android")
    _unknown(android, _ANDROID_FIELDS, "message.android")
    if android.get("priority", "normal") not in ("normal", "high", "NORMAL", "HIGH"):
        raise _ShapeError("message.android.priority", "Invalid value (TYPE_ENUM)")
    if not isinstance(android.get("collapse_key", ""), str):
        raise _ShapeError("message.android.collapse_key", "Invalid value (TYPE_STRING)")
    android_notification = _object(android.get("notification", {}), "message.android.notification")
    _unknown(android_notification, _ANDROID_NOTIFICATION_FIELDS, "message.android.notification")
    apns = _object(message.get("apns", {}), "message.apns")
    _unknown(apns, _APNS_FIELDS, "message.apns")
    headers = _string_map(apns.get("headers", {}), "message.apns.headers")
    if headers.get("apns-priority", "10") not in ("1", "5", "10"):
        raise _ShapeError("message.apns.headers", "Invalid apns-priority")
    if len(headers.get("apns-collapse-id", "").encode()) > 64:
        raise _ShapeError("message.apns.headers", "apns-collapse-id is longer than 64 bytes")
    aps_payload = _object(apns.get("payload", {}), "message.apns.payload")
    aps = _object(aps_payload.get("aps", {}), "message.apns.payload.aps")
    # What an iPhone would receive: FCM merges the notification into aps.alert and adds
    # its own keys; APNs takes at most 4,096 bytes.
    delivered = {
        **data,
        **{k: v for k, v in aps_payload.items() if k != "aps"},
        "aps": {**aps, "alert": notification},
        "gcm.message_id": "1234567890123456",
        "google.c.a.e": "1",
        "google.c.fid": "f" * 22,
        "google.c.sender.id": "123456789012",
    }
    size = len(json.dumps(delivered, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_APNS_PAYLOAD:
        raise _ShapeError("message", f"Message is too big: {size} bytes")
    return message


# -- the HTTP/2 side ----------------------------------------------------------------------


class _H2Protocol(asyncio.Protocol):
    def __init__(self, server: FakeFCM) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._conn.state_machine = _DrainingStateMachine()
        self._conn.local_settings = _UnenforcedSettings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams},
        )
        self._streams: dict[int, _Stream] = {}
        self._active: set[int] = set()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self._closed = True
            self._transport.abort()
            return
        self._server._opened(self)
        self._conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            for event in self._conn.receive_data(data):
                self._on_event(event)
            self._flush()
        except h2.exceptions.ProtocolError:
            self._flush()
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._closed(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()

    def close(self) -> None:
        self._closed = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = _Stream()
            for raw_name, raw_value in event.headers or []:
                name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
                value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
                if name == ":method":
                    stream.method = value
                elif name == ":path":
                    stream.path = value
                elif not name.startswith(":"):
                    stream.headers[name] = value
            if len(self._active) >= self._server.max_streams:
                self._conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self._server._record(stream, 0, "refused")
                return
            self._streams[event.stream_id] = stream
            self._active.add(event.stream_id)
            self._server._in_flight(len(self._active))
        elif isinstance(event, h2.events.DataReceived):
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is not None:
                stream_or_none.body += event.data or b""
            if event.flow_controlled_length:
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is not None and stream_or_none.task is None:
                stream_or_none.task = asyncio.get_running_loop().create_task(
                    self._respond(event.stream_id, stream_or_none)
                )
        elif isinstance(event, h2.events.StreamReset):
            self._active.discard(event.stream_id)
            stream_or_none = self._streams.pop(event.stream_id, None)
            if stream_or_none is not None and stream_or_none.task is not None:
                stream_or_none.task.cancel()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    async def _respond(self, stream_id: int, stream: _Stream) -> None:
        server = self._server
        recorded = False
        stalled = False
        try:
            answer = server._decide(stream)
            if answer.action == "refuse":
                recorded = True
                server._record(stream, 0, "refused")
                self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self._flush()
                return
            if answer.action == "stall":
                recorded = stalled = True
                server._record(stream, 0, "stall")
                return
            if server.latency > 0:
                await asyncio.sleep(server.latency)
            if answer.action == "reset":
                recorded = True
                server._record(stream, 0, "reset")
                self.abort()
                return
            if self._closed:
                return
            recorded = True
            server._record(stream, answer.status, answer.code)
            headers = [
                (":status", str(answer.status)),
                ("content-type", "application/json; charset=UTF-8"),
                ("content-length", str(len(answer.body))),
                *answer.headers,
            ]
            self._conn.send_headers(stream_id, headers)
            self._conn.send_data(stream_id, answer.body, end_stream=True)
            self._flush()
            self._streams.pop(stream_id, None)
        except asyncio.CancelledError:
            raise
        except h2.exceptions.StreamClosedError:
            self._streams.pop(stream_id, None)
        finally:
            if not recorded:
                server._record(stream, 0, "cancelled")
            if not stalled:
                self._active.discard(stream_id)


# -- the token endpoint -------------------------------------------------------------------


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TokenServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake FCM token endpoint: " + format, *args)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode()
        status, doc = self.server.fake._token_answer(self.path, raw)
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TokenServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeFCM, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.fake = fake
        self.socket = context.wrap_socket(self.socket, server_side=True)


# -- the server ---------------------------------------------------------------------------


def _write_key(path: str, key: rsa.RSAPrivateKey) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with open(path, "w") as f:
        f.write(pem)
    return pem


class FakeFCM:
    """A fake FCM on https://127.0.0.1:<port> (HTTP/2) and its token endpoint, in daemon
    threads."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        project_id: str = "clara-parents",
        client_email: str = "followups@clara-parents.iam.gserviceaccount.com",
        port: int = 0,
        max_streams: int = 100,
        token_lifetime: int = 3599,
    ) -> None:
        self.latency = latency
        self.project_id = project_id
        self.client_email = client_email
        self.max_streams = max_streams
        self.token_lifetime = token_lifetime
        self.requests: list[FcmReceived] = []
        self.token_requests = 0  # assertions received, good or bad
        self.tokens_issued = 0
        self.connections_opened = 0
        self.max_streams_in_flight = 0
        self._issued: dict[str, float] = {}  # bearer token -> expiry (time.time())
        self._rules: list[_Rule] = []
        self._token_rules: list[tuple[int, str, int | None]] = []
        self._message_ids = 0
        self._requested_port = port
        self._port: int | None = None
        self._tmpdir: str | None = None
        self._files: dict[str, str] = {}
        self._public_key: Any = None
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._protocols: set[_H2Protocol] = set()
        self._server: ServerThread | None = None
        self._token_server: _TokenServer | None = None
        self._token_thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeFCM:
        if self._server is not None:
            raise RuntimeError("FakeFCM is already running")
        self._tmpdir = tempfile.mkdtemp(prefix="fake-fcm-")
        try:
            ca_file, cert_file, server_key_file = _make_pki(self._tmpdir)
            self._files["ca"] = ca_file
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert_file, server_key_file)
            token_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            token_context.load_cert_chain(cert_file, server_key_file)
            context.set_alpn_protocols(["h2"])

            self._token_server = _TokenServer(self, token_context)
            self._token_thread = threading.Thread(
                target=self._token_server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-fcm-token",
                daemon=True,
            )
            self._token_thread.start()

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._public_key = key.public_key()
            self._files["credentials"] = self._write_credentials("service-account.json", key)
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._files["wrong"] = self._write_credentials("wrong-service-account.json", other)

            self._server = ServerThread(
                "fake FCM",
                lambda: _H2Protocol(self),
                context,
                port=self._requested_port,
                on_stop=self._abort_connections,
            )
            self._port = self._server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_credentials(self, name: str, key: rsa.RSAPrivateKey) -> str:
        assert self._tmpdir is not None and self._token_server is not None
        pem = _write_key(os.path.join(self._tmpdir, name + ".pem"), key)
        path = os.path.join(self._tmpdir, name)
        info = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": uuid.uuid4().hex,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "123456789012345678901",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }
        with open(path, "w") as f:
            json.dump(info, f, indent=2)
        return path

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._token_server is not None:
            self._token_server.shutdown()
            self._token_server.server_close()
        self._server = None
        self._token_server = self._token_thread = None
        self._port = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> FakeFCM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _opened(self, protocol: _H2Protocol) -> None:
        with self._lock:
            self._protocols.add(protocol)
            self.connections_opened += 1

    def _closed(self, protocol: _H2Protocol) -> None:
        with self._lock:
            self._protocols.discard(protocol)

    def _in_flight(self, streams: int) -> None:
        self.max_streams_in_flight = max(self.max_streams_in_flight, streams)

    # -- what tests read

    def _file(self, name: str) -> str:
        if name not in self._files or self._tmpdir is None:
            raise RuntimeError("FakeFCM is not running; use start() or a with block")
        return self._files[name]

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeFCM is not running; use start() or a with block")
        return f"https://127.0.0.1:{self._port}"

    @property
    def token_uri(self) -> str:
        if self._token_server is None:
            raise RuntimeError("FakeFCM is not running; use start() or a with block")
        return f"https://127.0.0.1:{self._token_server.server_address[1]}/token"

    @property
    def ca_file(self) -> str:
        return self._file("ca")

    @property
    def credentials_file(self) -> str:
        return self._file("credentials")

    @property
    def wrong_credentials_file(self) -> str:
        return self._file("wrong")

    def accepted(self) -> list[FcmReceived]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def collapse_keys(self) -> list[str]:
        """android.collapse_key (the follow-up id) of each accepted message."""
        return [
            r.message["android"]["collapse_key"]
            for r in self.accepted()
            if r.message is not None and "android" in r.message
        ]

    def bearers(self) -> set[str | None]:
        with self._lock:
            return {r.bearer for r in self.requests}

    def reset(self) -> None:
        """Forget records, rules and issued tokens (a new test)."""
        with self._lock:
            self.requests.clear()
            self._rules.clear()
            self._token_rules.clear()
            self._issued.clear()
            self.token_requests = 0
            self.tokens_issued = 0
            self.connections_opened = 0
            self.max_streams_in_flight = 0
        self.latency = 0.0

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        with self._lock:
            self._issued.clear()

    def drop_connections(self) -> None:
        """Abruptly close every client connection (the listener stays up)."""
        if self._server is not None:
            self._server.call(self._abort_connections)

    def _abort_connections(self) -> None:
        for protocol in list(self._protocols):
            protocol.abort()

    # -- scripting

    def respond(
        self,
        error: str | None = None,
        *,
        token: str | None = None,
        times: int | None = None,
        retry_after: str | None = None,
        action: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer matching messages (``token`` None: all) with FCM's answer for ``error``
        (a key of _ERRORS; None with ``action`` only), ``times`` times (None: forever),
        after the path and auth checks, with a Retry-After header when given.
        ``action`` "reset" drops the connection, "stall" never answers, "refuse" resets
        the stream with REFUSED_STREAM."""
        if error is not None and error not in _ERRORS:
            raise ValueError(f"unknown FCM error {error!r}")
        if action not in (None, "reset", "stall", "refuse"):
            raise ValueError(f"unknown action {action!r}")
        with self._lock:
            self._rules.append(_Rule(error, token, times, retry_after, action, message))

    def token_respond(self, status: int, error: str, *, times: int | None = None) -> None:
        """The token endpoint's next answers: ``status`` with OAuth ``error``."""
        with self._lock:
            self._token_rules.append((status, error, times))

    # -- the token endpoint

    def _token_answer(self, path: str, raw: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests += 1
            for i, (status, error, times) in enumerate(self._token_rules):
                if times is not None:
                    if times <= 0:
                        continue
                    self._token_rules[i] = (status, error, times - 1)
                return status, {"error": error, "error_description": "scripted"}
        form = urllib.parse.parse_qs(raw)
        if path.split("?")[0] != "/token":
            return 404, {"error": "not_found"}
        if form.get("grant_type") != [JWT_GRANT] or len(form.get("assertion", [])) != 1:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant"}
        problem = self._check_assertion(form["assertion"][0])
        if problem is not None:
            return 400, {"error": "invalid_grant", "error_description": problem}
        token = f"ya29.fake-{uuid.uuid4().hex}"
        with self._lock:
            self._issued[token] = time.time() + self.token_lifetime
            self.tokens_issued += 1
        return 200, {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }

    def _check_assertion(self, assertion: str) -> str | None:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self._public_key,
                algorithms=["RS256"],
                audience=TOKEN_AUDIENCE,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return "Invalid JWT Signature."
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg"
        if claims.get("iss") != self.client_email:
            return "Invalid JWT: iss"
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: scope"
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or not 0 < exp - iat <= 3600:
            return "Invalid JWT: Token must be a short-lived token (60 minutes)"
        now = time.time()
        if iat > now + 60 or exp < now:
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
        return None

    # -- messages:send

    def _decide(self, stream: _Stream) -> _Answer:
        expected = f"/v1/projects/{self.project_id}/messages:send"
        if stream.method != "POST" or stream.path != expected:
            return self._error(404, "NOT_FOUND", "Requested entity was not found.")
        scheme, _, bearer = stream.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._issued.get(bearer.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.time():
            return self._scripted("UNAUTHENTICATED")
        try:
            doc = json.loads(bytes(stream.body))
        except ValueError:
            doc = None
        message = doc.get("message") if isinstance(doc, dict) else None
        token = message.get("token", "") if isinstance(message, dict) else ""
        acted = self._match_rule(str(token), transport=True)
        if acted is not None:
            return acted
        if doc is None:
            return self._error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            check_message(doc)
        except _ShapeError as exc:
            return self._error(
                400,
                "INVALID_ARGUMENT",
                exc.description,
                fcm_code="INVALID_ARGUMENT",
                field_violation=(exc.field_path, exc.description),
            )
        if not isinstance(token, str) or not _FCM_TOKEN.fullmatch(token):
            return self._scripted("INVALID_ARGUMENT")
        scripted = self._match_rule(token, transport=False)
        if scripted is not None:
            return scripted
        with self._lock:
            self._message_ids += 1
            name = f"projects/{self.project_id}/messages/0:{self._message_ids}%{uuid.uuid4().hex}"
        return _Answer(200, None, json.dumps({"name": name}).encode())

    def _error(
        self,
        status: int,
        google_status: str,
        message: str,
        *,
        fcm_code: str | None = None,
        field_violation: tuple[str, str] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> _Answer:
        body = error_body(status, google_status, message, fcm_code, field_violation)
        return _Answer(status, fcm_code or google_status, body, headers or [])

    def _scripted(
        self, error: str, retry_after: str | None = None, message: str | None = None
    ) -> _Answer:
        status, google_status, fcm_code, default_message = _ERRORS[error]
        headers = [("retry-after", retry_after)] if retry_after is not None else []
        return self._error(
            status, google_status, message or default_message, fcm_code=fcm_code, headers=headers
        )

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
                    return _Answer(0, None, b"", action=rule.action)
                assert rule.error is not None
                return self._scripted(rule.error, rule.retry_after, rule.message)
        return None

    def _record(self, stream: _Stream, status: int, code: str | None) -> None:
        try:
            doc = json.loads(bytes(stream.body))
        except ValueError:
            doc = None
        message = doc.get("message") if isinstance(doc, dict) else None
        message = message if isinstance(message, dict) else None
        token = message.get("token", "") if message is not None else ""
        scheme, _, bearer = stream.headers.get("authorization", "").partition(" ")
        received = FcmReceived(
            token=token if isinstance(token, str) else "",
            path=stream.path,
            headers=dict(stream.headers),
            body=bytes(stream.body),
            message=message,
            status=status,
            code=code,
            bearer=bearer.strip() if scheme.lower() == "bearer" else None,
        )
        with self._recorded:
            self.requests.append(received)
            self._recorded.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[FcmReceived]:
        deadline = REAL_CLOCK["monotonic"]() + timeout
        with self._recorded:
            while len(self.requests) < n:
                remaining = deadline - REAL_CLOCK["monotonic"]()
                if remaining <= 0:
                    raise TimeoutError(f"fake FCM: {len(self.requests)} request(s), wanted {n}")
                self._recorded.wait(remaining)
            return list(self.requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake FCM until Ctrl-C.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    with FakeFCM(latency=args.latency, port=args.port) as fcm:
        print(f"FOLLOWUPS_FCM_URL={fcm.url}")
        print(f"FOLLOWUPS_FCM_CA_FILE={fcm.ca_file}")
        print(f"FOLLOWUPS_FCM_CREDENTIALS_FILE={fcm.credentials_file}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        print(f"# served {len(fcm.requests)} request(s), {len(fcm.accepted())} accepted")


if __name__ == "__main__":
    main()
