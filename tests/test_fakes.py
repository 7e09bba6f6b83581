"""Self-tests of the fakes: the fake APNs driven by the real pyapns-client and raw HTTP/2
clients, the shared HTTP/2 core's transport events through the fake FCM, and the fake
webhook."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpcore
import httpx
import jwt
import pytest
from freezegun import freeze_time
from pyapns_client import (
    APNSClient,
    APNSConnectionException,
    InvalidProviderTokenException,
    IOSNotification,
    IOSPayload,
    IOSPayloadAlert,
    UnregisteredException,
)

from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import JWT_GRANT, SCOPE, TOKEN_AUDIENCE, FakeFCM
from tests.fakes.webhook import FakeWebhook
from tests.helpers import TOKEN_A, TOKEN_B, fcm_token

pytestmark = [
    # pyapns-client 2.0.6 passes verify=<path> and data=<bytes> to httpx 0.28.
    pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAPNs]:
    # These tests drive the fake with pyapns-client's own clients, each of which signs a
    # token of its own: APNs' one-renewal-per-20-minutes rule is tested on its own below.
    with FakeAPNs(token_rules=False) as apns:
        yield apns


@pytest.fixture
def fake(server: FakeAPNs) -> Iterator[FakeAPNs]:
    server.clear_rules()
    server.reset_records()
    server.latency = 0.0
    yield server
    server.clear_rules()
    server.reset_records()
    server.latency = 0.0


def make_client(apns: FakeAPNs, key_file: str | None = None) -> Any:
    """The real pyapns-client, pointed at the fake."""
    client_class = type(
        "FakeAPNSClient", (APNSClient,), {"BASE_URLS": {"prod": apns.url, "dev": apns.url}}
    )
    return client_class(
        mode="prod",
        root_cert_path=apns.ca_file,
        auth_key_path=key_file or apns.key_file,
        auth_key_id=apns.key_id,
        team_id=apns.team_id,
    )


def notification(apns: FakeAPNs, **kwargs: Any) -> Any:
    alert = IOSPayloadAlert(title="Follow-up", body="Please call us back")
    return IOSNotification(
        payload=IOSPayload(alert=alert, custom={"followup_id": 7}), topic=apns.topic, **kwargs
    )


def raw_client(apns: FakeAPNs, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        http2=True,
        verify=ssl.create_default_context(cafile=apns.ca_file),
        base_url=apns.url,
        **kwargs,
    )


def bearer(apns: FakeAPNs, *, key_file: str | None = None, **overrides: Any) -> str:
    claims = {"iss": apns.team_id, "iat": int(time.time())}
    headers = {"kid": apns.key_id}
    claims.update({k: v for k, v in overrides.items() if k in ("iss", "iat")})
    headers.update({k: v for k, v in overrides.items() if k == "kid"})
    with open(key_file or apns.key_file) as f:
        key = f.read()
    return "bearer " + jwt.encode(claims, key, algorithm="ES256", headers=headers)


# -- pyapns-client against the fake -------------------------------------------------------


def test_push_is_accepted_and_recorded(fake: FakeAPNs) -> None:
    client = make_client(fake)
    apns_id = str(uuid.uuid4())
    try:
        client.push(notification(fake, apns_id=apns_id, collapse_id="followup-7"), TOKEN_A)
    finally:
        client.close()

    [got] = fake.accepted()
    assert got.status == 200 and got.reason is None
    assert got.token == TOKEN_A and got.method == "POST" and got.path == f"/3/device/{TOKEN_A}"
    assert got.apns_id == apns_id
    assert got.headers["apns-id"] == apns_id
    assert got.headers["apns-topic"] == fake.topic
    assert got.headers["apns-collapse-id"] == "followup-7"
    assert not any(name.startswith(":") for name in got.headers)
    assert got.payload == {
        "aps": {"alert": {"title": "Follow-up", "body": "Please call us back"}},
        "followup_id": 7,
    }
    assert json.loads(got.body) == got.payload
    assert got.jwt_claims is not None and got.jwt_claims["iss"] == fake.team_id
    assert abs(got.jwt_claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(got.headers["authorization"].split()[1])["kid"] == "ABC123DEFG"
    assert fake.collapse_ids() == ["followup-7"]


def test_apns_id_is_echoed_to_the_client(fake: FakeAPNs) -> None:
    with raw_client(fake) as client:
        given = str(uuid.uuid4())
        headers = {"authorization": bearer(fake), "apns-topic": fake.topic}
        r1 = client.post(f"/3/device/{TOKEN_A}", json={"aps": {}}, headers=headers)
        r2 = client.post(
            f"/3/device/{TOKEN_A}", json={"aps": {}}, headers={**headers, "apns-id": given}
        )
    assert r1.status_code == r2.status_code == 200
    assert r1.http_version == "HTTP/2"
    assert uuid.UUID(r1.headers["apns-id"]).version == 4
    assert r2.headers["apns-id"] == given
    assert [r.apns_id for r in fake.requests] == [r1.headers["apns-id"], given]


def test_wrong_key_is_refused(fake: FakeAPNs) -> None:
    fake.respond(200)  # scripted answers come after the auth check
    client = make_client(fake, key_file=fake.wrong_key_file)
    try:
        with pytest.raises(InvalidProviderTokenException) as info:
            client.push(notification(fake), TOKEN_A)
    finally:
        client.close()
    assert info.value.status_code == 403
    [got] = fake.requests
    assert (got.status, got.reason) == (403, "InvalidProviderToken")
    assert got.jwt_claims is not None and got.jwt_claims["iss"] == fake.team_id
    assert fake.accepted() == []


def test_unregistered_for_one_token_only(fake: FakeAPNs) -> None:
    fake.respond(410, "Unregistered", token=TOKEN_B)
    client = make_client(fake)
    try:
        client.push(notification(fake), TOKEN_A)
        before = time.time() * 1000
        with pytest.raises(UnregisteredException) as info:
            client.push(notification(fake), TOKEN_B)
        client.push(notification(fake), TOKEN_A)
    finally:
        client.close()
    assert info.value.status_code == 410
    assert isinstance(info.value.timestamp, int) and info.value.timestamp >= before - 1000
    assert [(r.token, r.status) for r in fake.requests] == [
        (TOKEN_A, 200),
        (TOKEN_B, 410),
        (TOKEN_A, 200),
    ]


def test_scripted_answer_used_up_after_times(fake: FakeAPNs) -> None:
    fake.respond(503, "ServiceUnavailable", times=1)
    client = make_client(fake)
    try:
        client.push(notification(fake), TOKEN_A)  # pyapns-client retries internally
    finally:
        client.close()
    assert [(r.status, r.reason) for r in fake.requests] == [
        (503, "ServiceUnavailable"),
        (200, None),
    ]


def test_raw_body_reaches_the_client(fake: FakeAPNs) -> None:
    fake.respond(500, body=b"<html>upstream exploded</html>")
    client = make_client(fake)
    try:
        with pytest.raises(json.JSONDecodeError):
            client.push(notification(fake), TOKEN_A)
    finally:
        client.close()
    assert [r.status for r in fake.requests] == [500]


def test_reset_drops_the_connection(fake: FakeAPNs) -> None:
    fake.respond(200, action="reset")
    client = make_client(fake)
    try:
        with pytest.raises(APNSConnectionException):
            client.push(notification(fake), TOKEN_A)
    finally:
        client.close()
    # pyapns-client tries three times, each on a new connection.
    assert [(r.status, r.reason) for r in fake.requests] == [(0, "reset")] * 3


def test_sixteen_clients_in_parallel(fake: FakeAPNs) -> None:
    fake.latency = 0.25
    n = 16

    def one(i: int) -> None:
        client = make_client(fake)
        try:
            client.push(notification(fake), f"{i:064x}")
        finally:
            client.close()

    started = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.monotonic() - started
    assert len(fake.accepted()) == n
    assert elapsed < n * fake.latency / 2, elapsed  # sequential: 4 s; parallel: ~0.3 s


# -- HTTP/2 behaviour ---------------------------------------------------------------------


def test_many_streams_on_one_connection(fake: FakeAPNs) -> None:
    # httpx's sync Client is not safe to share across threads over HTTP/2 (its HPACK
    # encoder state gets corrupted), so multiplex with the async client.
    fake.latency = 0.2
    opened = fake.connections_opened
    headers = {"authorization": bearer(fake), "apns-topic": fake.topic}
    n = 60

    async def run() -> tuple[list[int], float]:
        async with httpx.AsyncClient(
            http2=True,
            verify=ssl.create_default_context(cafile=fake.ca_file),
            base_url=fake.url,
            timeout=5.0,
        ) as client:
            await client.post(f"/3/device/{TOKEN_A}", json={"aps": {}}, headers=headers)
            started = time.monotonic()
            responses = await asyncio.gather(
                *(
                    client.post(f"/3/device/{i:064x}", json={"aps": {"i": i}}, headers=headers)
                    for i in range(n)
                )
            )
            return [r.status_code for r in responses], time.monotonic() - started

    statuses, elapsed = asyncio.run(run())
    assert statuses == [200] * n
    assert fake.connections_opened == opened + 1
    assert elapsed < n * fake.latency / 3, elapsed  # sequential: 12 s; multiplexed: ~0.3 s
    assert len(fake.accepted()) == n + 1
    assert sorted(r.payload["aps"]["i"] for r in fake.accepted()[1:] if r.payload) == list(range(n))


def test_flow_control_both_ways(fake: FakeAPNs) -> None:
    headers = {"authorization": bearer(fake), "apns-topic": fake.topic}
    big = json.dumps({"aps": {}, "pad": "x" * 300_000}).encode()  # > 64 KiB windows
    raw = bytes(range(256)) * 1200  # 300 KiB answer
    with raw_client(fake, timeout=5.0) as client:
        r = client.post(f"/3/device/{TOKEN_A}", content=big, headers=headers)
        assert (r.status_code, r.json()["reason"]) == (413, "PayloadTooLarge")
        fake.respond(500, body=raw, times=1)
        r = client.post(f"/3/device/{TOKEN_A}", json={"aps": {}}, headers=headers)
        assert r.status_code == 500 and r.content == raw
        for _ in range(3):  # the connection is still good
            r = client.post(f"/3/device/{TOKEN_A}", json={"aps": {}}, headers=headers)
            assert r.status_code == 200
    assert fake.requests[0].body == big


def _check(
    fake: FakeAPNs,
    expected: tuple[int, str],
    *,
    method: str = "POST",
    path: str = f"/3/device/{TOKEN_A}",
    headers: Callable[[FakeAPNs], dict[str, str]] | None = None,
    body: bytes = b'{"aps":{}}',
) -> None:
    with raw_client(fake) as client:
        sent = (
            headers(fake) if headers else {"authorization": bearer(fake), "apns-topic": fake.topic}
        )
        r = client.request(method, path, content=body, headers=sent)
    assert (r.status_code, r.json()["reason"]) == expected
    assert fake.requests[-1].status == expected[0]
    assert fake.requests[-1].reason == expected[1]


def test_refusals_in_apns_order(fake: FakeAPNs) -> None:
    topic = {"apns-topic": "com.example.parent"}
    old = int(time.time()) - 3700
    _check(fake, (404, "BadPath"), path="/3/devices/x")
    _check(fake, (405, "MethodNotAllowed"), method="PUT")
    _check(fake, (403, "MissingProviderToken"), headers=lambda f: dict(topic))
    _check(fake, (403, "InvalidProviderToken"), headers=lambda f: {"authorization": "bearer x"})
    _check(
        fake,
        (403, "InvalidProviderToken"),
        headers=lambda f: {"authorization": bearer(f, kid="OTHERKEY00"), **topic},
    )
    _check(
        fake,
        (403, "InvalidProviderToken"),
        headers=lambda f: {"authorization": bearer(f, iss="OTHERTEAM0"), **topic},
    )
    _check(
        fake,
        (403, "ExpiredProviderToken"),
        headers=lambda f: {"authorization": bearer(f, iat=old), **topic},
    )
    _check(fake, (400, "MissingTopic"), headers=lambda f: {"authorization": bearer(f)})
    _check(
        fake,
        (400, "TopicDisallowed"),
        headers=lambda f: {"authorization": bearer(f), "apns-topic": "com.example.other"},
    )
    _check(fake, (413, "PayloadTooLarge"), body=b'{"a":"' + b"x" * 4100 + b'"}')
    _check(fake, (400, "PayloadEmpty"), body=b"")
    _check(fake, (400, "PayloadEmpty"), body=b"[1, 2]")
    _check(fake, (400, "BadDeviceToken"), path="/3/device/not-a-token")
    _check(fake, (400, "MissingDeviceToken"), path="/3/device/")
    _check(
        fake,
        (400, "BadCollapseId"),
        headers=lambda f: {
            "authorization": bearer(f),
            **topic,
            "apns-collapse-id": "c" * 65,
        },
    )
    # A scripted answer is APNs' verdict on a well-formed request: a malformed one is
    # still refused for what is wrong with it, as APNs checks the request first.
    fake.respond(410, "Unregistered", token="not-a-token", timestamp=False)
    with raw_client(fake) as client:
        r = client.post(
            "/3/device/not-a-token",
            json={"aps": {}},
            headers={"authorization": bearer(fake), **topic},
        )
    assert (r.status_code, r.json()) == (400, {"reason": "BadDeviceToken"})
    assert fake.accepted() == []


def test_stall_times_out_and_stop_still_works() -> None:
    apns = FakeAPNs().start()
    try:
        apns.respond(200, action="stall")
        headers = {"authorization": bearer(apns), "apns-topic": apns.topic}
        client = raw_client(apns, timeout=0.3)
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"/3/device/{TOKEN_A}", json={"aps": {}}, headers=headers)
        [got] = apns.wait_for(1)
        assert (got.status, got.reason) == (0, "stall")
        # A second stalled stream, still open while we stop.
        pending = threading.Thread(
            target=lambda: pytest.raises(
                httpx.HTTPError,
                raw_client(apns, timeout=5.0).post,
                f"/3/device/{TOKEN_A}",
                json={"aps": {}},
                headers=headers,
            )
        )
        pending.start()
        apns.wait_for(2)
    finally:
        started = time.monotonic()
        apns.stop()
        stop_took = time.monotonic() - started
    pending.join(timeout=5)
    assert not pending.is_alive()
    assert stop_took < 2.0
    with pytest.raises(httpx.ConnectError):
        client.post(f"/3/device/{TOKEN_A}", json={"aps": {}}, headers=headers)
    client.close()


def test_survives_misbehaving_clients(fake: FakeAPNs) -> None:
    with socket.create_connection(("127.0.0.1", fake.port)) as s:  # not TLS at all
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    ctx = ssl.create_default_context(cafile=fake.ca_file)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", fake.port)) as s,
        ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"this is not an HTTP/2 preface\r\n\r\n")
    with socket.create_connection(("127.0.0.1", fake.port)):
        pass  # connects and leaves mid-handshake
    fake.latency = 0.5
    client = raw_client(fake, timeout=0.1)
    with pytest.raises(httpx.ReadTimeout):  # client gives up and disconnects mid-request
        client.post(
            f"/3/device/{TOKEN_A}",
            json={"aps": {}},
            headers={"authorization": bearer(fake), "apns-topic": fake.topic},
        )
    client.close()
    fake.latency = 0.0
    pyapns = make_client(fake)
    try:
        pyapns.push(notification(fake), TOKEN_B)
    finally:
        pyapns.close()
    assert [r.token for r in fake.accepted()] == [TOKEN_B]


def test_a_frame_on_a_stream_never_opened_ends_the_connection_and_is_counted(
    fake: FakeAPNs,
) -> None:
    """DATA for a stream whose HEADERS never came (what a client that lost a queued
    HEADERS frame sends): a connection error, as h2 and RFC 9113 section 5.1 have it.
    The server answers with a GOAWAY (PROTOCOL_ERROR), closes, and counts it."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    from hyperframe.frame import DataFrame

    fake.reset_records()
    ctx = ssl.create_default_context(cafile=fake.ca_file)
    ctx.set_alpn_protocols(["h2"])
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    stray = DataFrame(1, b"{}", flags=["END_STREAM"])
    events: list[Any] = []
    with (
        socket.create_connection(("127.0.0.1", fake.port)) as s,
        ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls,
    ):
        tls.settimeout(5)
        tls.sendall(client.data_to_send() + stray.serialize())
        while data := tls.recv(65536):
            events += client.receive_data(data)
    [goaway] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert fake.protocol_errors == 1 and fake.requests == []


def test_works_under_freezegun(fake: FakeAPNs) -> None:
    fake.latency = 0.05
    client = make_client(fake)
    try:
        with freeze_time("2031-05-06 07:08:09"):
            client.push(notification(fake), TOKEN_A)
            fake.wait_for(1, timeout=2.0)
    finally:
        client.close()
    [got] = fake.accepted()
    assert got.jwt_claims is not None
    frozen = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC).timestamp()
    assert got.jwt_claims["iat"] == pytest.approx(frozen, abs=1)


# -- the webhook --------------------------------------------------------------------------


def test_webhook_records_posts_and_gets() -> None:
    with FakeWebhook() as hook, httpx.Client(timeout=5.0) as client:
        assert hook.url == f"http://127.0.0.1:{hook.port}/hook/SECRET123"
        r = client.post(hook.url, json={"text": "3 follow-ups failed"})
        assert r.status_code == 200
        assert client.get(hook.base_url + "/ping/abc").status_code == 200
        assert client.post(hook.base_url + "/hook/WRONG", json={"text": "x"}).status_code == 404
        hook.status = 500
        assert client.post(hook.url, content=b"not json").status_code == 500
        assert client.get(hook.base_url + "/ping/abc?fail=1").status_code == 500
        assert hook.wait_for(2) == [{"text": "3 follow-ups failed"}, None]
        assert hook.wait_for_gets(2) == ["/ping/abc", "/ping/abc?fail=1"]
        assert hook.texts() == ["3 follow-ups failed"]
        assert [r.status for r in hook.requests] == [200, 200, 404, 500, 500]
        with pytest.raises(TimeoutError):
            hook.wait_for(3, timeout=0.05)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0


# -- APNs' connection and token rules -----------------------------------------------------


def test_token_renewals_are_limited_per_key_across_clients() -> None:
    """Two clients signing their own tokens, as two processes would: the second token is
    a renewal within 20 minutes and is refused; the first stays good; an old one expires."""
    with FakeAPNs() as apns, raw_client(apns) as client:
        path = f"/3/device/{TOKEN_A}"
        headers = {"apns-topic": apns.topic}
        first = bearer(apns)
        second = bearer(apns, iat=int(time.time()) - 1)
        stale = bearer(apns, iat=int(time.time()) - 3601)
        answers = [
            client.post(path, json={"aps": {}}, headers={**headers, "authorization": token})
            for token in (first, second, first, stale)
        ]
        assert [(a.status_code, a.content and a.json()["reason"]) for a in answers] == [
            (200, b""),
            (429, "TooManyProviderTokenUpdates"),
            (200, b""),
            (403, "ExpiredProviderToken"),
        ]
        assert apns.token_renewals == 1


def test_stream_limit_starts_at_one_and_follows_answers() -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS is 1 on a new connection, 1000 after an accepted
    push, 1 again after a rejected one (read from the client's h2 state)."""
    with FakeAPNs() as apns, raw_client(apns) as client:
        path = f"/3/device/{TOKEN_A}"
        auth = {"apns-topic": apns.topic, "authorization": bearer(apns)}

        def limit() -> int:
            # httpx keeps the one HTTP/2 connection in its transport's pool.
            transport = client._transport
            assert isinstance(transport, httpx.HTTPTransport)
            [connection] = transport._pool.connections
            assert isinstance(connection, httpcore.HTTPConnection)
            http2 = connection._connection
            assert isinstance(http2, httpcore.HTTP2Connection)
            return int(http2._h2_state.remote_settings.max_concurrent_streams)

        client.post(path, json={"aps": {}}, headers=auth)
        assert limit() == 1000
        bad = client.post("/3/device/not-a-token", json={"aps": {}}, headers=auth)
        assert bad.status_code == 400
        assert limit() == 1
        client.post(path, json={"aps": {}}, headers=auth)
        assert limit() == 1000


# -- the shared HTTP/2 core, through the fake FCM -----------------------------------------


def fcm_client(fcm: FakeFCM, **kwargs: Any) -> httpx.Client:
    """A raw HTTP/2 client with an access token from the fake's token endpoint."""
    with open(fcm.credentials_file) as f:
        account = json.load(f)
    now = int(time.time())
    claims = {
        "iss": account["client_email"],
        "scope": SCOPE,
        "aud": TOKEN_AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    assertion = jwt.encode(claims, account["private_key"], algorithm="RS256")
    verify = ssl.create_default_context(cafile=fcm.ca_file)
    granted = httpx.post(
        fcm.token_uri, data={"grant_type": JWT_GRANT, "assertion": assertion}, verify=verify
    )
    assert granted.status_code == 200, granted.text
    return httpx.Client(
        http2=True,
        verify=verify,
        base_url=fcm.url,
        headers={"authorization": "Bearer " + granted.json()["access_token"]},
        **kwargs,
    )


def send(client: httpx.Client, fcm: FakeFCM, n: int) -> httpx.Response:
    message = {"token": fcm_token(n), "notification": {"title": "Follow-up", "body": "Hi"}}
    return client.post(f"/v1/projects/{fcm.project_id}/messages:send", json={"message": message})


def test_fcm_goaway_answers_the_request_it_covers_then_closes(fcm: FakeFCM) -> None:
    """GOAWAY after two requests: the second is still answered on its connection, which
    then closes; the next request goes on a new connection."""
    fcm.goaway_after = 2
    with fcm_client(fcm) as client:
        assert send(client, fcm, 0).status_code == 200
        # httpcore gives a connection up at its GOAWAY, the streams it covers too; the
        # fake's records say what it answered (tests/test_fcm_delivery.py: the pusher).
        with contextlib.suppress(httpx.RemoteProtocolError):
            send(client, fcm, 1)
        assert send(client, fcm, 2).status_code == 200
    assert fcm.goaways_sent == 1
    first = fcm.requests[0].connection
    assert [(r.connection - first, r.status) for r in fcm.requests] == [
        (0, 200),
        (0, 200),
        (1, 200),
    ]


def test_fcm_reset_is_recorded_as_a_cut_and_a_dropped_rule_stops(fcm: FakeFCM) -> None:
    """A scripted reset cuts the connection after the latency, recorded with both times;
    once the rule is taken back, the next request is answered on a new connection."""
    fcm.latency = 0.2
    rule = fcm.respond(action="reset")
    with fcm_client(fcm, timeout=5.0) as client:
        with pytest.raises(httpx.TransportError):
            send(client, fcm, 1)
        fcm.drop_rule(rule)
        assert send(client, fcm, 1).status_code == 200
    cut, accepted = fcm.requests
    assert (cut.status, cut.code, accepted.status) == (0, "reset", 200)
    assert cut.answered - cut.arrived >= 0.2
    assert set(fcm.connections_cut) == {cut.connection} != {accepted.connection}
    assert fcm.connections_cut[cut.connection] >= cut.answered


def test_slow_settings_hold_every_byte_of_a_new_connection() -> None:
    """settings_delay: the server's first bytes, its SETTINGS frame first, reach the
    client that long after the connection is up."""
    with FakeFCM(settings_delay=0.3) as slow, fcm_client(slow) as client:
        started = time.monotonic()
        assert send(client, slow, 1).status_code == 200
        assert time.monotonic() - started >= 0.3


def test_rules_are_checked_when_scripted(fcm: FakeFCM, fake: FakeAPNs) -> None:
    """An unknown action, error or count is refused at once, not at the first request."""
    with pytest.raises(ValueError, match="action"):
        fake.respond(200, action="drop")
    with pytest.raises(ValueError, match="times"):
        fake.respond(500, times=0)
    with pytest.raises(ValueError, match="unknown FCM error"):
        fcm.respond("GONE")
    with pytest.raises(ValueError, match="answer or an action"):
        fcm.respond()
