"""The transport paths every push goes through, the same for APNs and FCM: the real
pusher and its HTTP/2 client against the fake servers (tests/fakes/), each test once per
service. GOAWAY, refused and reset streams, a stall, a timeout, slow SETTINGS, the
credential renewed once and refused twice, and an unexpected exception in the middle of
a push."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from followup_cli import migrate
from followup_cli.db import Database
from followup_cli.push.apns.pusher import APNsStrategy
from followup_cli.push.factory import make_pusher
from followup_cli.push.fcm.pusher import FCMStrategy
from followup_cli.push.protocol import PushOutcome, PushRequest
from followup_cli.push.service import ServicePusher
from followup_cli.settings import Settings
from tests.fakes.apns import FakeAPNs, Received
from tests.fakes.fcm import FakeFCM, FcmReceived
from tests.helpers import apns_token, app_row, attempts, deliver, fcm_token, row

Record = Received | FcmReceived


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """The transport is the same whatever the database: SQLite only, migrated."""
    url = f"sqlite:///{tmp_path / 'followups.db'}"
    db = Database(url)
    migrate.upgrade(db)
    db.close()
    return url


@dataclass
class Side:
    """One push service under test: its fake, its settings, and the few words in which
    the two fakes are scripted and read differently."""

    name: str
    fake: FakeAPNs | FakeFCM
    settings: Settings
    # What the service answers when it refuses the credential, and that answer's status.
    credential_refusal: str
    credential_status: int

    def token(self, n: int) -> str:
        return apns_token(n) if self.name == "apns" else fcm_token(n)

    def request(self, n: int) -> PushRequest:
        return PushRequest(
            str(uuid.uuid4()), str(uuid.uuid4()), self.token(n), "T", "B", False, self.name
        )

    def act(self, action: str, *, token: str | None = None, times: int | None = None) -> None:
        """A transport event instead of an answer: "refuse", "reset" or "stall"."""
        if isinstance(self.fake, FakeAPNs):
            self.fake.respond(200, action=action, token=token, times=times)
        else:
            self.fake.respond(action=action, token=token, times=times)

    def refuse_credential(self, times: int | None = None) -> None:
        """APNs calls the provider token expired; FCM refuses the access token (401)."""
        if isinstance(self.fake, FakeAPNs):
            self.fake.respond(403, self.credential_refusal, times=times)
        else:
            self.fake.respond(self.credential_refusal, times=times)

    def records(self) -> list[Record]:
        return list(self.fake.requests)

    def accepted(self) -> list[Record]:
        return list(self.fake.accepted())

    @staticmethod
    def word(record: Record) -> str | None:
        """The fake's word for a request: its refusal, or why it was never answered."""
        return record.reason if isinstance(record, Received) else record.code

    @staticmethod
    def follow_up(record: Record) -> str | None:
        if isinstance(record, Received):
            return record.headers.get("apns-collapse-id")
        return record.message["android"]["collapse_key"] if record.message else None

    def pushes(self) -> Counter[str | None]:
        """How many times the service accepted each follow-up."""
        return Counter(self.follow_up(r) for r in self.accepted())


@pytest.fixture(params=["apns", "fcm"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "apns":
        fake: FakeAPNs | FakeFCM = request.getfixturevalue("apns")
        settings = request.getfixturevalue("apns_settings")
        refusal, status = "ExpiredProviderToken", 403
    else:
        fake = request.getfixturevalue("fcm")
        settings = request.getfixturevalue("fcm_settings")
        refusal, status = "UNAUTHENTICATED", 401
    # The fixtures leave these alone: put them back after a test that changes them.
    kept = (fake.settings_delay, fake.max_streams)
    yield Side(request.param, fake, settings, refusal, status)
    fake.settings_delay, fake.max_streams = kept


@contextmanager
def pusher_for(settings: Settings) -> Iterator[ServicePusher]:
    pusher = make_pusher(settings)
    assert isinstance(pusher, ServicePusher)
    try:
        yield pusher
    finally:
        pusher.close()


def push_all(pusher: ServicePusher, requests: list[PushRequest]) -> list[PushOutcome]:
    """The requests pushed concurrently, as send-due keeps them in flight."""

    async def all_of_them() -> list[PushOutcome]:
        return list(await asyncio.gather(*(pusher.push(r) for r in requests)))

    return pusher.run(all_of_them())


def tried(outcome: PushOutcome) -> list[tuple[str, str | None]]:
    return [(a.outcome, a.reason) for a in outcome.attempts]


def failing_once(original: Callable[..., str]) -> Callable[..., str]:
    """`original`, except that its first call raises what no one expects."""
    calls = 0

    def flaky(*args: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("something nobody planned for")
        return original(*args)

    return flaky


def test_goaway_answers_up_to_the_last_stream_and_resends_the_rest(side: Side) -> None:
    """GOAWAY after 10 requests on each connection, 60 pushes in flight: the 10 streams at
    or below the last-stream-id are answered on the first connection, those above it go
    again on a new one, none is an attempt, and nothing is pushed twice."""
    side.fake.latency = 0.005
    side.fake.goaway_after = 10
    requests = [side.request(i) for i in range(60)]
    with pusher_for(side.settings) as pusher:
        outcomes = push_all(pusher, requests)
    assert [tried(o) for o in outcomes] == [[("sent", None)]] * 60
    assert side.pushes() == Counter({r.follow_up_id: 1 for r in requests})
    first = min(r.connection for r in side.records())
    assert len([r for r in side.accepted() if r.connection == first]) == 10
    # Never processed, so sent again: each such request is one more record, no more.
    unprocessed = [r for r in side.records() if side.word(r) == "goaway"]
    assert unprocessed and len(side.records()) == 60 + len(unprocessed)
    assert side.fake.goaways_sent >= 2 and side.fake.connections_opened >= 2
    assert side.fake.protocol_errors == 0


def test_refused_stream_is_resent_and_is_not_an_attempt(side: Side) -> None:
    """REFUSED_STREAM three times: not processed, so sent again without using an attempt,
    and the breaker (tripping at the first failed attempt) counts nothing."""
    side.act("refuse", times=3)
    with pusher_for(replace(side.settings, outage_threshold=1)) as pusher:
        [outcome] = push_all(pusher, [side.request(1)])
        assert pusher.stopped(side.name) is None
    assert tried(outcome) == [("sent", None)]
    assert [side.word(r) for r in side.records()] == ["refused"] * 3 + [None]


def test_stream_reset_by_the_server_is_a_transient_attempt(side: Side) -> None:
    """The server drops the connection instead of answering: a transient attempt
    (ConnectionError), then the retry goes out on a new connection, pushed once."""
    side.act("reset", times=1)
    request = side.request(1)
    with pusher_for(side.settings) as pusher:
        [outcome] = push_all(pusher, [request])
    assert tried(outcome) == [("transient", "ConnectionError"), ("sent", None)]
    reset, sent = side.records()
    assert side.word(reset) == "reset" and reset.connection in side.fake.connections_cut
    assert sent.status == 200 and sent.connection != reset.connection
    assert side.pushes() == Counter({request.follow_up_id: 1})


def test_a_connection_lost_with_many_streams_in_flight_is_one_failure_for_the_breaker(
    side: Side,
) -> None:
    """The server drops a connection with 40 pushes in flight: one event, so one failure
    toward the outage threshold (5), not 40. Each push lost with it is tried again on a
    new connection and sent, and the pusher carries on.

    An answer the server wrote just before the cut can die with the connection (the
    client's kernel drops what it had not yet read when the reset arrives): that push
    was accepted, and its retry is accepted again. No client can tell it from a push
    that never arrived, so the only repeats allowed are of pushes first accepted on the
    connection that was cut; on every other connection each follow-up goes once."""
    side.fake.latency = 0.05
    requests = [side.request(i) for i in range(41)]  # the first goes alone, then 40
    side.act("reset", token=requests[5].device_token, times=1)
    with pusher_for(side.settings) as pusher:
        outcomes = push_all(pusher, requests)
        assert pusher.stopped(side.name) is None
    retried = [("transient", "ConnectionError"), ("sent", None)]
    lost_ids = {
        r.follow_up_id for r, o in zip(requests, outcomes, strict=True) if tried(o) == retried
    }
    assert len(lost_ids) >= 10
    assert all(o.kind == "sent" for o in outcomes)
    assert len(side.fake.connections_cut) == 1
    cut = set(side.fake.connections_cut)
    on_cut = Counter(side.follow_up(r) for r in side.accepted() if r.connection in cut)
    elsewhere = Counter(side.follow_up(r) for r in side.accepted() if r.connection not in cut)
    assert set(on_cut) | set(elsewhere) == {r.follow_up_id for r in requests}
    assert max(on_cut.values(), default=1) == 1
    assert max(elsewhere.values()) == 1
    # A push answered on the cut connection goes again only if the client lost that answer.
    assert {f for f in on_cut if f in elsewhere} <= lost_ids


def test_a_stall_times_out_and_retires_the_connection(side: Side) -> None:
    """No answer at all: the attempt times out, its connection takes no new stream, the
    retry and the next push go to a new connection."""
    stalled = side.request(1)
    side.act("stall", token=stalled.device_token, times=1)
    with pusher_for(replace(side.settings, push_timeout_seconds=0.5)) as pusher:
        [first] = push_all(pusher, [stalled])
        [second] = push_all(pusher, [side.request(2)])
    assert tried(first) == [("transient", "Timeout"), ("sent", None)]
    assert tried(second) == [("sent", None)]
    stall, retried, next_push = side.records()
    assert side.word(stall) == "stall"
    assert retried.connection == next_push.connection != stall.connection
    assert side.fake.connections_opened == 2
    assert side.pushes() == Counter({stalled.follow_up_id: 1, side.follow_up(next_push): 1})


def test_answers_later_than_the_timeout_use_every_attempt_and_push_nothing(
    side: Side,
) -> None:
    """Every answer would come after the timeout: three transient attempts (Timeout),
    each on a connection of its own, each stream cancelled, so nothing is delivered
    behind the pusher's back."""
    side.fake.latency = 1.0
    with pusher_for(replace(side.settings, push_timeout_seconds=0.2)) as pusher:
        [outcome] = push_all(pusher, [side.request(1)])
        assert pusher.stopped(side.name) is None  # 3 failures, the threshold is 5
    assert (outcome.kind, tried(outcome)) == ("transient", [("transient", "Timeout")] * 3)
    records = side.fake.wait_for(3, timeout=5)
    assert [side.word(r) for r in records] == ["cancelled"] * 3
    assert len({r.connection for r in records}) == 3
    assert side.accepted() == []


def test_slow_settings_are_waited_for_before_a_second_stream(side: Side) -> None:
    """The server's SETTINGS (a limit of 2 streams) arrive 0.3 s after the connection:
    one stream until then, so no stream is refused and one connection serves them all."""
    side.fake.settings_delay = 0.3
    side.fake.max_streams = 2
    requests = [side.request(i) for i in range(20)]
    with pusher_for(side.settings) as pusher:
        outcomes = push_all(pusher, requests)
    assert [tried(o) for o in outcomes] == [[("sent", None)]] * 20
    assert [r for r in side.records() if side.word(r) == "refused"] == []
    assert side.fake.connections_opened == 1
    assert side.pushes() == Counter({r.follow_up_id: 1 for r in requests})


def test_a_refused_credential_is_renewed_once_and_the_push_goes_out(side: Side) -> None:
    """APNs' ExpiredProviderToken signs the token again, FCM's 401 fetches a new access
    token; the request goes again within the same attempt."""
    side.refuse_credential(times=1)
    request = side.request(1)
    with pusher_for(side.settings) as pusher:
        [outcome] = push_all(pusher, [request])
    assert tried(outcome) == [("sent", None)]
    assert [r.status for r in side.records()] == [side.credential_status, 200]
    if isinstance(side.fake, FakeFCM):
        assert side.fake.tokens_issued == 2
        assert len({r.bearer for r in side.fake.requests}) == 2
    assert side.pushes() == Counter({request.follow_up_id: 1})


def test_a_credential_refused_again_after_renewal_is_a_configuration_stop(
    side: Side,
) -> None:
    """Refused again, freshly renewed: one attempt, a configuration stop, and no further
    request for any notification."""
    side.refuse_credential()
    with pusher_for(side.settings) as pusher:
        [outcome] = push_all(pusher, [side.request(1)])
        [later] = push_all(pusher, [side.request(2)])
        stop = pusher.stopped(side.name)
    assert tried(outcome) == [("config", side.credential_refusal)]
    assert outcome.status_code == side.credential_status
    assert stop is not None and (stop.kind, stop.reason) == (
        "config_error",
        side.credential_refusal,
    )
    assert (later.kind, later.attempts) == ("unsent", [])
    assert len(side.records()) == 2


def test_an_unexpected_exception_mid_push_is_a_transient_attempt(
    side: Side, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something nobody planned for raises as the stream starts: for both services a
    transient attempt named by the exception's class, the retry delivers, the run goes
    on."""
    strategy = APNsStrategy if side.name == "apns" else FCMStrategy
    monkeypatch.setattr(strategy, "authorization", failing_once(strategy.authorization))
    fid = app_row(db, device_token=side.token(1))
    report = deliver(db, side.settings)
    assert (report.sent, report.failed, report.stop) == (1, 0, None)
    assert attempts(db, fid) == [(1, "transient", "RuntimeError"), (2, "sent", None)]
    assert row(db, fid).status == "sent"
    assert side.pushes() == Counter({fid: 1})
    assert len(side.records()) == 1  # the failed attempt never reached the service


def test_each_service_gets_its_headers_in_the_order_it_always_had(side: Side) -> None:
    """The authorization header last for APNs, first for FCM, as it always went out."""
    with pusher_for(side.settings) as pusher:
        push_all(pusher, [side.request(1)])
    [record] = side.records()
    expected = (
        [
            "content-type",
            "apns-push-type",
            "apns-priority",
            "apns-collapse-id",
            "apns-topic",
            "authorization",
        ]
        if side.name == "apns"
        else ["authorization", "content-type"]
    )
    assert list(record.headers) == expected


def test_unique_and_secret_headers_stay_out_of_the_compression_table(side: Side) -> None:
    """HPACK: the authorization header, and the headers whose value is new with every
    request (APNs' path with the device token, its collapse id), come as "never
    indexed" literals; the headers that repeat may be indexed."""
    side.fake.reset_records()
    with pusher_for(side.settings) as pusher:
        push_all(pusher, [side.request(n) for n in range(3)])
    fake = side.fake
    if side.name == "apns":
        assert {"authorization", ":path", "apns-collapse-id"} <= fake.never_indexed
        assert {"apns-topic", "apns-push-type", ":method", ":authority"} <= fake.indexable
        assert not fake.never_indexed & {"apns-topic", "apns-push-type", ":method"}
    else:
        assert fake.never_indexed == {"authorization"}
        assert {":path", "content-type", ":authority"} <= fake.indexable
