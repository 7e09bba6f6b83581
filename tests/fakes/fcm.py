"""A fake Firebase Cloud Messaging (HTTP v1) with its OAuth 2 token endpoint, on 127.0.0.1.

    with FakeFCM() as fcm:
        settings = Settings(push="fcm", fcm_credentials_file=Path(fcm.credentials_file),
                            fcm_url=fcm.url, fcm_ca_file=Path(fcm.ca_file))
        ...
        assert [r.token for r in fcm.accepted()] == [TOKEN]

On start it creates, in a temporary directory removed on stop, a CA (``ca_file``) and a
server certificate for 127.0.0.1/localhost (pki.py), a service account with a fresh RSA
key (``credentials_file``: the JSON key file the Google Cloud console hands out, its
``token_uri`` pointing at this fake) and the same account with a key the fake does not
know (``wrong_credentials_file``).

The token endpoint (``token_uri``, HTTPS, HTTP/1.1 as Google's) takes the JWT-bearer
grant: the assertion must be RS256, signed by the account's key, with ``iss`` the
account's email, ``aud`` Google's token endpoint, the firebase.messaging scope, and
``iat``/``exp`` at most an hour apart and around now. Otherwise 400 ``invalid_grant``. It
answers an opaque bearer token valid ``token_lifetime`` seconds (``tokens_issued`` counts
them). ``token_respond(status, error)`` scripts its next answers.

``POST /v1/projects/<project_id>/messages:send`` (HTTP/2 over TLS, ALPN h2, at most
``max_streams`` concurrent streams, refused above) is checked as FCM checks it, in this
order, answering Google's error shape (``{"error": {"code", "message", "status",
"details": [FcmError, BadRequest]}}``):

1. method POST and the path, with this project (404 NOT_FOUND);
2. ``authorization: Bearer <token>`` issued by the token endpoint and not expired or
   revoked (401 UNAUTHENTICATED, no FcmError: the access-token refusal);
3. the scripted transport events added with :meth:`FakeFCM.respond` (``action`` reset,
   stall or refuse), first match wins;
4. the body, strictly: JSON, only the fields FCM v1 defines (an unknown one such as the
   legacy ``notification.sound`` is 400 INVALID_ARGUMENT with a BadRequest field
   violation), exactly one target, ``data`` values strings and no reserved keys,
   ``android.priority`` normal or high, ``apns.headers`` values strings with a valid
   apns-priority and an apns-collapse-id of at most 64 bytes, and the payload an iPhone
   would get (aps alert, data and FCM's own keys) at most 4,096 bytes;
5. the registration token: an FCM token's shape, else 400 INVALID_ARGUMENT "The
   registration token is not a valid FCM registration token" (no field violation, as FCM);
6. the scripted answers added with :meth:`FakeFCM.respond`, first match wins.

Otherwise 200 ``{"name": "projects/<p>/messages/0:<n>"}``.

Records, latency, the stream limit, GOAWAY (``goaway_after``, ``goaway_now()``), slow
SETTINGS (``settings_delay``, none by default), dropped connections and the scripted
actions are the shared HTTP/2 core's (http2.py): each request is in
:attr:`FakeFCM.requests` just before its answer is written; requests never answered have
``status=0`` and ``code`` "refused", "reset", "stall", "goaway" or "cancelled".

Standalone: ``python -m tests.fakes.fcm --port 8444 --latency 0.02`` prints the
``FOLLOWUPS_FCM_*`` lines and serves until Ctrl-C.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.http2 import (
    Answer,
    Exchange,
    H2Fake,
    Stream,
    serve_until_interrupted,
    standalone_parser,
)
from tests.fakes.pki import Pki, server_context, write_private_key
from tests.fakes.rules import Rule, Rules
from tests.fakes.threads import HttpServerThread

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
class FcmReceived(Exchange):
    """One messages:send request as the fake saw it, and what it answered (``status``: 0
    never answered, see ``code``)."""

    token: str  # message.token, "" when absent
    path: str
    headers: dict[str, str]
    body: bytes
    message: dict[str, Any] | None  # the body's "message", when the body is a JSON object
    code: str | None  # the FcmError errorCode, else the error's status; None when accepted
    bearer: str | None


@dataclass
class _Scripted:
    """A scripted answer: one of _ERRORS, with a Retry-After or a message of its own."""

    error: str
    retry_after: str | None
    message: str | None


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

    def __init__(self, fake: FakeFCM, pki: Pki) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.fake = fake
        self.socket = server_context(pki).wrap_socket(self.socket, server_side=True)


# -- the fake -----------------------------------------------------------------------------


class FakeFCM(H2Fake[Answer, FcmReceived]):
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
        goaway_after: int | None = None,
        settings_delay: float = 0.0,
    ) -> None:
        super().__init__(
            latency=latency,
            port=port,
            max_streams=max_streams,
            goaway_after=goaway_after,
            settings_delay=settings_delay,
        )
        self.project_id = project_id
        self.client_email = client_email
        self.token_lifetime = token_lifetime
        self.token_requests = 0  # assertions received, good or bad
        self.tokens_issued = 0
        self._issued: dict[str, float] = {}  # bearer token -> expiry (time.time())
        self._rules: Rules[_Scripted] = Rules()
        self._token_rules: Rules[tuple[int, str]] = Rules()
        self._state_lock = threading.Lock()  # issued tokens, counters
        self._message_ids = 0
        self._credentials_file = ""
        self._wrong_credentials_file = ""
        self._public_key: rsa.RSAPublicKey | None = None
        self._token_server: HttpServerThread | None = None

    # -- lifecycle

    def _prepare(self, directory: str, pki: Pki) -> None:
        self._token_server = HttpServerThread(_TokenServer(self, pki), "fake-fcm-token")
        self._token_server.start()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = key.public_key()
        self._credentials_file = self._write_credentials(directory, "service-account.json", key)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._wrong_credentials_file = self._write_credentials(
            directory, "wrong-service-account.json", other
        )

    def _shutdown(self) -> None:
        if self._token_server is not None:
            self._token_server.stop()
            self._token_server = None

    def _write_credentials(self, directory: str, name: str, key: rsa.RSAPrivateKey) -> str:
        pem = write_private_key(os.path.join(directory, name + ".pem"), key)
        path = os.path.join(directory, name)
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

    # -- what tests read

    @property
    def token_uri(self) -> str:
        if self._token_server is None:
            raise RuntimeError("FakeFCM is not running; use start() or a with block")
        return f"https://127.0.0.1:{self._token_server.port}/token"

    @property
    def credentials_file(self) -> str:
        self._running()
        return self._credentials_file

    @property
    def wrong_credentials_file(self) -> str:
        self._running()
        return self._wrong_credentials_file

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
        self.reset_records()
        self._rules.clear()
        self._token_rules.clear()
        with self._state_lock:
            self._issued.clear()
            self.token_requests = 0
            self.tokens_issued = 0
        self.latency = 0.0
        self.goaway_after = None

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        with self._state_lock:
            self._issued.clear()

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
    ) -> Rule[_Scripted]:
        """Answer matching messages (``token`` None: all) with FCM's answer for ``error``
        (a key of _ERRORS; None with ``action`` only), ``times`` times (None: forever),
        after the path and auth checks, with a Retry-After header when given.
        ``action`` "reset" drops the connection, "stall" never answers, "refuse" resets
        the stream with REFUSED_STREAM. Returns the rule, for ``drop_rule``."""
        if error is not None and error not in _ERRORS:
            raise ValueError(f"unknown FCM error {error!r}")
        scripted = None if error is None else _Scripted(error, retry_after, message)
        return self._rules.add(scripted, action=action, token=token, times=times)

    def token_respond(self, status: int, error: str, *, times: int | None = None) -> None:
        """The token endpoint's next answers: ``status`` with OAuth ``error``."""
        self._token_rules.add((status, error), times=times)

    # -- the token endpoint

    def _token_answer(self, path: str, raw: str) -> tuple[int, dict[str, Any]]:
        with self._state_lock:
            self.token_requests += 1
        scripted = self._token_rules.answer_for("")
        if scripted is not None:
            status, error = scripted
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
        with self._state_lock:
            self._issued[token] = time.time() + self.token_lifetime
            self.tokens_issued += 1
        return 200, {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }

    def _check_assertion(self, assertion: str) -> str | None:
        if self._public_key is None:
            return "Invalid JWT Signature."
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

    def _decide(self, stream: Stream) -> Answer:
        expected = f"/v1/projects/{self.project_id}/messages:send"
        if stream.method != "POST" or stream.path != expected:
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        scheme, _, bearer = stream.headers.get("authorization", "").partition(" ")
        with self._state_lock:
            expiry = self._issued.get(bearer.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.time():
            return _scripted(_Scripted("UNAUTHENTICATED", None, None))
        doc, message = _parse(stream.body)
        token = message.get("token", "") if message is not None else ""
        action = self._rules.action_for(str(token))
        if action is not None:
            return Answer(action=action)
        if doc is None:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            check_message(doc)
        except _ShapeError as exc:
            return _error(
                400,
                "INVALID_ARGUMENT",
                exc.description,
                fcm_code="INVALID_ARGUMENT",
                field_violation=(exc.field_path, exc.description),
            )
        if not isinstance(token, str) or not _FCM_TOKEN.fullmatch(token):
            return _scripted(_Scripted("INVALID_ARGUMENT", None, None))
        scripted = self._rules.answer_for(token)
        if scripted is not None:
            return _scripted(scripted)
        with self._state_lock:
            self._message_ids += 1
            name = f"projects/{self.project_id}/messages/0:{self._message_ids}%{uuid.uuid4().hex}"
        return Answer(200, None, [_CONTENT_TYPE], json.dumps({"name": name}).encode())

    def _to_record(
        self, stream: Stream, answer: Answer | None, status: int, reason: str | None
    ) -> FcmReceived:
        _, message = _parse(stream.body)
        token = message.get("token", "") if message is not None else ""
        scheme, _, bearer = stream.headers.get("authorization", "").partition(" ")
        return FcmReceived(
            token=token if isinstance(token, str) else "",
            path=stream.path,
            headers=dict(stream.headers),
            body=bytes(stream.body),
            message=message,
            status=status,
            code=reason,
            bearer=bearer.strip() if scheme.lower() == "bearer" else None,
        )


_CONTENT_TYPE: Final = ("content-type", "application/json; charset=UTF-8")


def _parse(body: bytearray) -> tuple[Any, dict[str, Any] | None]:
    """(the body as JSON or None, its "message" when that is an object, else None)."""
    try:
        doc = json.loads(bytes(body))
    except ValueError:
        return None, None
    message = doc.get("message") if isinstance(doc, dict) else None
    return doc, message if isinstance(message, dict) else None


def _error(
    status: int,
    google_status: str,
    message: str,
    *,
    fcm_code: str | None = None,
    field_violation: tuple[str, str] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Answer:
    body = error_body(status, google_status, message, fcm_code, field_violation)
    return Answer(status, fcm_code or google_status, [_CONTENT_TYPE, *(headers or [])], body)


def _scripted(scripted: _Scripted) -> Answer:
    status, google_status, fcm_code, default_message = _ERRORS[scripted.error]
    retry_after = scripted.retry_after
    return _error(
        status,
        google_status,
        scripted.message or default_message,
        fcm_code=fcm_code,
        headers=[("retry-after", retry_after)] if retry_after is not None else [],
    )


def main(argv: list[str] | None = None) -> None:
    args = standalone_parser("Run the fake FCM until Ctrl-C.").parse_args(argv)
    fcm = FakeFCM(latency=args.latency, port=args.port)

    def environment() -> dict[str, str]:
        return {
            "FOLLOWUPS_FCM_URL": fcm.url,
            "FOLLOWUPS_FCM_CA_FILE": fcm.ca_file,
            "FOLLOWUPS_FCM_CREDENTIALS_FILE": fcm.credentials_file,
        }

    serve_until_interrupted(fcm, environment, verbose=args.verbose)


if __name__ == "__main__":
    main()
