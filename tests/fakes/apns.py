"""A fake Apple Push Notification service: real HTTP/2 over TLS on 127.0.0.1.

    with FakeAPNs() as apns:
        client = SomeAPNSClient(url=apns.url, ca_file=apns.ca_file, key_file=apns.key_file,
                                key_id=apns.key_id, team_id=apns.team_id)
        ...
        assert [r.token for r in apns.accepted()] == [TOKEN]

On start it creates, in a temporary directory removed on stop, a CA (``ca_file``: what a
client passes as its trust root) and a server certificate for 127.0.0.1/localhost
(pki.py), the ES256 provider-token key (``key_file``, PKCS#8 PEM like Apple's .p8) and a
second key the server does not accept (``wrong_key_file``).

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

- ``settings_delay`` (20 ms): the server's SETTINGS frame reaches the client that long
  after the connection is up.
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

Records, latency, GOAWAY, dropped connections and the scripted actions are the shared
HTTP/2 core's (http2.py): each request that reached the handler is in
:attr:`FakeAPNs.requests` just before its answer is written; requests never answered
have ``status=0`` and ``reason`` "refused", "reset", "stall", "goaway" or "cancelled".

The JWT ``iat`` check and 410 timestamps use ``time.time()`` as patched, i.e. the same
clock as the client under test; the server itself runs on real time.

Standalone: ``python -m tests.fakes.apns --port 8443 --latency 0.02`` prints
``FOLLOWUPS_APNS_*=...`` lines and serves until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.http2 import (
    Answer,
    Exchange,
    H2Fake,
    Stream,
    serve_until_interrupted,
    standalone_parser,
)
from tests.fakes.pki import Pki, write_private_key
from tests.fakes.rules import Action, Rule, Rules

__all__ = ["FakeAPNs", "Received"]

MAX_PAYLOAD_BYTES: Final = 4096
MAX_VOIP_PAYLOAD_BYTES: Final = 5120
TOKEN_MAX_AGE_SECONDS: Final = 3600
TOKEN_RENEWAL_MIN_SECONDS: Final = 20 * 60
MAX_STREAMS: Final = 1000  # what APNs advertises once a connection has a push accepted
_DEVICE_PATH: Final = "/3/device/"
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
_AUTH_STATUS: Final[dict[str, int]] = {"TooManyProviderTokenUpdates": 429}
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


@dataclass(frozen=True)
class Received(Exchange):
    """One request as the fake saw it, and what it answered (``status``: 0 never
    answered, see ``reason``)."""

    token: str
    path: str
    method: str
    headers: dict[str, str]  # lower-case names, no pseudo-headers
    body: bytes
    payload: dict[str, Any] | None  # the body parsed, when it is a JSON object
    reason: str | None
    apns_id: str
    jwt_claims: dict[str, Any] | None  # claims as sent (unverified when the key is wrong)


@dataclass
class _Scripted:
    """A scripted answer: APNs's status with its reason, or a raw body."""

    status: int
    reason: str | None
    body: bytes | None
    timestamp: bool


@dataclass
class _Verdict(Answer):
    """An answer, and what was learnt about the request on the way to it."""

    token: str = ""
    apns_id: str = ""
    payload: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None


def _error_body(reason: str, *, with_timestamp: bool = False) -> bytes:
    doc: dict[str, Any] = {"reason": reason}
    if with_timestamp:
        doc["timestamp"] = int(time.time() * 1000)
    return json.dumps(doc, separators=(",", ":")).encode()


def _device_token(path: str) -> str:
    path = path.split("?", 1)[0]
    return path.removeprefix(_DEVICE_PATH) if path.startswith(_DEVICE_PATH) else ""


class FakeAPNs(H2Fake[_Verdict, Received]):
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
        max_streams: int = MAX_STREAMS,
    ) -> None:
        super().__init__(
            latency=latency,
            port=port,
            max_streams=max_streams,
            goaway_after=goaway_after,
            settings_delay=settings_delay,
        )
        self.topic = topic
        self.key_id = key_id
        self.team_id = team_id
        self.stream_gating = stream_gating
        self.token_rules = token_rules
        # Provider-token renewals per (kid, iss): tokens seen, and when the last was new.
        self.token_renewals = 0
        self._tokens_seen: dict[tuple[str, str], set[str]] = {}
        self._last_renewal: dict[tuple[str, str], float] = {}
        self._token_lock = threading.Lock()
        self._key_file = ""
        self._wrong_key_file = ""
        self._public_key: ec.EllipticCurvePublicKey | None = None
        self._rules: Rules[_Scripted] = Rules()

    def _prepare(self, directory: str, pki: Pki) -> None:
        token_key = ec.generate_private_key(ec.SECP256R1())
        self._public_key = token_key.public_key()
        self._key_file = os.path.join(directory, f"AuthKey_{self.key_id}.p8")
        write_private_key(self._key_file, token_key)
        self._wrong_key_file = os.path.join(directory, "AuthKey_WRONG.p8")
        write_private_key(self._wrong_key_file, ec.generate_private_key(ec.SECP256R1()))

    # -- what tests and clients read

    @property
    def key_file(self) -> str:
        self._running()
        return self._key_file

    @property
    def wrong_key_file(self) -> str:
        self._running()
        return self._wrong_key_file

    def refused(self) -> list[Received]:
        """Requests refused with REFUSED_STREAM (above the advertised stream limit)."""
        with self._lock:
            return [r for r in self.requests if r.reason == "refused"]

    def collapse_ids(self) -> list[str]:
        """``apns-collapse-id`` of the accepted requests that had one, in arrival order."""
        return [
            r.headers["apns-collapse-id"]
            for r in self.accepted()
            if "apns-collapse-id" in r.headers
        ]

    def reset_tokens(self) -> None:
        """Forget every provider token seen: the next one is a first, not a renewal."""
        with self._token_lock:
            self._tokens_seen.clear()
            self._last_renewal.clear()
            self.token_renewals = 0

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
    ) -> Rule[_Scripted]:
        """Answer matching requests (``token`` None: all) with ``status``/``reason`` (or the
        raw ``body``) ``times`` times (None: forever), after the auth and topic checks.
        ``reason`` None: APNs's usual reason for ``status``. 410 answers carry a
        ``timestamp`` unless ``timestamp=False``. ``action="reset"`` drops the connection
        instead of answering; ``action="stall"`` never answers; ``action="refuse"`` resets the
        stream with REFUSED_STREAM (not processed). Returns the rule, for ``drop_rule``."""
        scripted = _Scripted(status, reason, body, timestamp)
        return self._rules.add(
            None if action else scripted, action=action, token=token, times=times
        )

    # -- the connection rules

    def _stream_limit(self, last_status: int | None) -> int:
        """1 until a push is accepted and after each rejected one (with stream gating)."""
        if not self.stream_gating or last_status == 200:
            return self.max_streams
        return 1

    def _goaway_data(self, reason: str) -> bytes:
        return json.dumps({"reason": reason}).encode()

    # -- the request rules

    def _to_record(
        self, stream: Stream, answer: _Verdict | None, status: int, reason: str | None
    ) -> Received:
        return Received(
            token=answer.token if answer else _device_token(stream.path),
            path=stream.path,
            method=stream.method,
            headers=dict(stream.headers),
            body=bytes(stream.body),
            payload=answer.payload if answer else None,
            status=status,
            reason=reason,
            apns_id=answer.apns_id if answer else stream.headers.get("apns-id", ""),
            jwt_claims=answer.claims if answer else None,
        )

    def _decide(self, stream: Stream) -> _Verdict:
        headers = stream.headers
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        payload: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(bytes(stream.body))
            if isinstance(parsed, dict):
                payload = parsed
        token = _device_token(stream.path)
        claims: dict[str, Any] | None = None

        def verdict(
            status: int, reason: str | None, body: bytes = b"", action: Action | None = None
        ) -> _Verdict:
            answer_headers = [("apns-id", apns_id)]
            if body:
                answer_headers.append(("content-type", "application/json"))
            return _Verdict(
                status=status,
                reason=reason,
                headers=answer_headers,
                body=body,
                action=action,
                token=token,
                apns_id=apns_id,
                payload=payload,
                claims=claims,
            )

        def refuse(status: int, reason: str) -> _Verdict:
            return verdict(status, reason, _error_body(reason))

        if not stream.path.split("?", 1)[0].startswith(_DEVICE_PATH) or "/" in token:
            return refuse(404, "BadPath")
        if stream.method != "POST":
            return refuse(405, "MethodNotAllowed")

        authorization = headers.get("authorization")
        if authorization is None:
            return refuse(403, "MissingProviderToken")
        claims, auth_problem = self._check_provider_token(authorization)
        if auth_problem is not None:
            return refuse(_AUTH_STATUS.get(auth_problem, 403), auth_problem)

        topic = headers.get("apns-topic")
        if topic is None:
            return refuse(400, "MissingTopic")
        if topic != self.topic:
            return refuse(400, "TopicDisallowed")

        action = self._rules.action_for(token)
        if action is not None:
            return verdict(0, None, action=action)

        problem = self._check_headers(headers)
        if problem is not None:
            return refuse(400, problem)

        voip = headers.get("apns-push-type") == "voip"
        limit = MAX_VOIP_PAYLOAD_BYTES if voip else MAX_PAYLOAD_BYTES
        if stream.body_len > limit:
            return refuse(413, "PayloadTooLarge")
        if payload is None:
            return refuse(400, "PayloadEmpty")

        if not token:
            return refuse(400, "MissingDeviceToken")
        if not _TOKEN_RE.fullmatch(token):
            return refuse(400, "BadDeviceToken")
        scripted = self._rules.answer_for(token)
        if scripted is None:
            return verdict(200, None)
        if scripted.body is not None:
            return verdict(scripted.status, scripted.reason, scripted.body)
        if scripted.status == 200 and scripted.reason is None:
            return verdict(200, None)
        reason = scripted.reason or _DEFAULT_REASONS.get(scripted.status, "InternalServerError")
        with_timestamp = scripted.status == 410 and scripted.timestamp
        return verdict(scripted.status, reason, _error_body(reason, with_timestamp=with_timestamp))

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
        with self._token_lock:
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


def main(argv: list[str] | None = None) -> None:
    parser = standalone_parser("Run the fake APNs until Ctrl-C.")
    parser.add_argument("--topic", default="com.example.parent")
    parser.add_argument("--key-id", default="ABC123DEFG")
    parser.add_argument("--team-id", default="TEAM123456")
    parser.add_argument("--goaway-after", type=int, default=None, help="requests per connection")
    parser.add_argument("--no-gating", action="store_true", help="no APNs stream limits")
    args = parser.parse_args(argv)
    apns = FakeAPNs(
        latency=args.latency,
        topic=args.topic,
        key_id=args.key_id,
        team_id=args.team_id,
        port=args.port,
        stream_gating=not args.no_gating,
        goaway_after=args.goaway_after,
    )

    def environment() -> dict[str, str]:
        return {
            "FOLLOWUPS_APNS_URL": apns.url,
            "FOLLOWUPS_APNS_CA_FILE": apns.ca_file,
            "FOLLOWUPS_APNS_KEY_FILE": apns.key_file,
            "FOLLOWUPS_APNS_KEY_ID": apns.key_id,
            "FOLLOWUPS_APNS_TEAM_ID": apns.team_id,
            "FOLLOWUPS_APNS_TOPIC": apns.topic,
        }

    serve_until_interrupted(apns, environment, verbose=args.verbose)


if __name__ == "__main__":
    main()
