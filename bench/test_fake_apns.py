"""bench/fake_apns.mjs keeps Apple's rules: checked with a raw HTTP/2 client (h2 over TLS)
that can break them on purpose.

    .venv/bin/python -m pytest bench/test_fake_apns.py

Needs Node.js 18+. Not under tests/: it checks the benchmark's server, not the product.
"""

from __future__ import annotations

import collections
import json
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame
import jwt
import pytest

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY_ID = "CHECKKEY01"
TEAM_ID = "CHECKTEAM1"
TOPIC = "com.example.parent"
DEVICE = "ab" * 32
MAX = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.fakes.pki import make_pki, write_private_key

    directory = tmp_path_factory.mktemp("pki")
    ca, cert, server_key = make_pki(str(directory))
    auth_key = str(directory / "AuthKey.p8")
    write_private_key(auth_key, ec.generate_private_key(ec.SECP256R1()))
    return {"ca": ca, "cert": cert, "server_key": server_key, "auth_key": auth_key}


class Fake:
    def __init__(self, pki: dict[str, str], *extra: str) -> None:
        self.pki = pki
        self.proc = subprocess.Popen(
            [
                "node",
                str(BENCH / "fake_apns.mjs"),
                "--latency-ms",
                "30",
                "--cert",
                pki["cert"],
                "--key",
                pki["server_key"],
                "--auth-key",
                pki["auth_key"],
                "--key-id",
                KEY_ID,
                "--team-id",
                TEAM_ID,
                "--topic",
                TOPIC,
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.startswith("ready "), first
        self.port = int(first.split()[1])

    def token(self, iat: float | None = None) -> str:
        return jwt.encode(
            {"iss": TEAM_ID, "iat": int(time.time() if iat is None else iat)},
            Path(self.pki["auth_key"]).read_text(),
            algorithm="ES256",
            headers={"kid": KEY_ID},
        )

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGUSR2)
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=10)


@pytest.fixture
def start(pki: dict[str, str]) -> Iterator[Callable[..., Fake]]:
    fakes: list[Fake] = []

    def _start(*extra: str) -> Fake:
        fakes.append(Fake(pki, *extra))
        return fakes[-1]

    yield _start
    for fake in fakes:
        fake.stop()


class Client:
    """One HTTP/2 connection; records every event in arrival order."""

    def __init__(self, fake: Fake) -> None:
        context = ssl.create_default_context(cafile=fake.pki["ca"])
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", fake.port))
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        # h2 closes its state machine on GOAWAY and then rejects the answers the server
        # still owes for streams up to last-stream-id; a checker must read them.
        on_goaway = self.h2._receive_goaway_frame

        def keep_reading(frame: Any) -> Any:
            state = self.h2.state_machine.state
            result = on_goaway(frame)
            self.h2.state_machine.state = state
            return result

        self.h2._frame_dispatch_table[hyperframe.frame.GoAwayFrame] = keep_reading
        self.events: list[h2.events.Event] = []
        self.eof = False
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def push(
        self,
        jwt_token: str,
        device: str = DEVICE,
        *,
        ignore_limit: bool = False,
        collapse_id: str | None = None,
    ) -> int:
        """Sends one notification; with ignore_limit, even beyond the server's limit."""
        stream_id = self.h2.get_next_available_stream_id()
        settings = self.h2.remote_settings._settings
        saved = settings.get(MAX)
        if ignore_limit:  # h2 would refuse to open the stream itself
            settings[MAX] = collections.deque([2**31])
        try:
            self.h2.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", "127.0.0.1"),
                    (":path", f"/3/device/{device}"),
                    ("authorization", f"bearer {jwt_token}"),
                    ("apns-topic", TOPIC),
                    ("apns-push-type", "alert"),
                    *([("apns-collapse-id", collapse_id)] if collapse_id else []),
                ],
            )
            self.h2.send_data(stream_id, b'{"aps":{"alert":"hi"}}', end_stream=True)
        finally:
            if saved is None:
                settings.pop(MAX, None)
            else:
                settings[MAX] = saved
        return stream_id

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and not self.eof:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {self.events}"
            if not self.sock.pending():
                select.select([self.sock], [], [], left)
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                break
            self.events.extend(self.h2.receive_data(data))
            self.flush()

    def answered(self, *stream_ids: int) -> bool:
        ended = {e.stream_id for e in self.events if isinstance(e, h2.events.StreamEnded)}
        reset = {e.stream_id for e in self.events if isinstance(e, h2.events.StreamReset)}
        return all(s in ended or s in reset for s in stream_ids)

    def status(self, stream_id: int) -> int | None:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id:
                return int(dict(e.headers)[b":status"])
        return None

    def body(self, stream_id: int) -> dict[str, Any]:
        data = b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )
        return json.loads(data)

    def resets(self) -> dict[int, int]:
        return {
            e.stream_id: e.error_code for e in self.events if isinstance(e, h2.events.StreamReset)
        }

    def limits(self) -> list[int]:
        """Every SETTINGS_MAX_CONCURRENT_STREAMS the server advertised, in order."""
        return [
            e.changed_settings[MAX].new_value
            for e in self.events
            if isinstance(e, h2.events.RemoteSettingsChanged) and MAX in e.changed_settings
        ]

    def index(self, predicate: Callable[[h2.events.Event], bool]) -> int:
        return next(i for i, e in enumerate(self.events) if predicate(e))

    def limit_before_answer(self, stream_id: int) -> int:
        """The stream limit in force when the answer of stream_id arrived."""
        at = self.index(
            lambda e: isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id
        )
        changes = [
            e.changed_settings[MAX].new_value
            for e in self.events[:at]
            if isinstance(e, h2.events.RemoteSettingsChanged) and MAX in e.changed_settings
        ]
        return changes[-1]

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)

    def close(self) -> None:
        self.sock.close()


def wait_for_settings(client: Client) -> None:
    client.pump(lambda: bool(client.limits()))


def test_new_connection_allows_one_stream_until_a_push_is_accepted(start: Any) -> None:
    """SETTINGS 1 on connect; 1000 arrives before the first 200's HEADERS."""
    fake = start()
    client = Client(fake)
    wait_for_settings(client)
    assert client.limits() == [1]
    token = fake.token()
    first = client.push(token)
    client.flush()
    client.pump(lambda: client.answered(first))
    assert client.status(first) == 200
    assert client.limit_before_answer(first) == 1000
    # Now many at once are fine.
    ids = [client.push(token) for _ in range(50)]
    client.flush()
    client.pump(lambda: client.answered(*ids))
    assert [client.status(s) for s in ids] == [200] * 50
    stats = fake.stats()
    assert stats["accepted"] == 51
    assert stats["refused"] == 0
    assert stats["max_in_flight_one_connection"] == 50
    assert stats["limit_raised"] == 1
    client.close()


def test_streams_beyond_an_unacknowledged_limit_are_refused(start: Any) -> None:
    """A client that sends before reading the server's SETTINGS: REFUSED_STREAM, counted."""
    fake = start()
    client = Client(fake)
    token = fake.token()
    ids = [client.push(token) for _ in range(4)]
    client.flush()
    client.pump(lambda: client.answered(*ids))
    assert client.status(ids[0]) == 200
    assert client.resets() == dict.fromkeys(ids[1:], h2.errors.ErrorCodes.REFUSED_STREAM)
    # The refused ones were not processed: sent again, they are accepted.
    again = [client.push(token) for _ in range(3)]
    client.flush()
    client.pump(lambda: client.answered(*again))
    assert [client.status(s) for s in again] == [200] * 3
    stats = fake.stats()
    assert stats["refused"] == 3
    assert stats["refused_beyond_acknowledged_limit"] == 0
    assert stats["rst_sent"]["REFUSED_STREAM"] == 3
    assert stats["requests"] == 4
    assert stats["accepted"] == 4
    assert stats["session_errors"] == {}
    client.close()


def test_streams_beyond_an_acknowledged_limit_are_refused_and_counted(start: Any) -> None:
    """A client that acknowledged the limit of 1 and still opens three streams: two are
    refused, and counted as broken knowingly; the connection goes on."""
    fake = start()
    client = Client(fake)
    wait_for_settings(client)  # h2 acknowledged it in the same flush
    client.pump(lambda: fake.stats()["requests"] == 0)
    token = fake.token()
    ids = [client.push(token, ignore_limit=True) for _ in range(3)]
    client.flush()
    client.pump(lambda: client.answered(*ids))
    assert client.status(ids[0]) == 200
    assert client.resets() == dict.fromkeys(ids[1:], h2.errors.ErrorCodes.REFUSED_STREAM)
    assert client.goaway() is None
    stats = fake.stats()
    assert stats["refused"] == 2
    assert stats["refused_beyond_acknowledged_limit"] == 2
    assert stats["goaway_sent"] == {}
    client.close()


def test_a_rejected_push_drops_the_limit_to_one_until_the_next_accepted(start: Any) -> None:
    """400 comes after SETTINGS 1; the next 200 after SETTINGS 1000."""
    fake = start()
    client = Client(fake)
    token = fake.token()
    first = client.push(token)
    client.flush()
    client.pump(lambda: client.answered(first))
    bad = client.push(token, device="not-a-token")
    client.flush()
    client.pump(lambda: client.answered(bad))
    assert client.status(bad) == 400
    assert client.body(bad) == {"reason": "BadDeviceToken"}
    assert client.limit_before_answer(bad) == 1
    good = client.push(token)
    client.flush()
    client.pump(lambda: client.answered(good))
    assert client.status(good) == 200
    assert client.limit_before_answer(good) == 1000
    assert client.limits() == [1, 1000, 1, 1000]
    stats = fake.stats()
    assert (stats["limit_lowered"], stats["limit_raised"]) == (1, 2)
    client.close()


def test_no_gating_starts_at_the_full_limit(start: Any) -> None:
    fake = start("--no-gating")
    client = Client(fake)
    token = fake.token()
    ids = [client.push(token) for _ in range(20)]
    client.flush()
    client.pump(lambda: client.answered(*ids))
    assert [client.status(s) for s in ids] == [200] * 20
    assert client.limits() == [1000]
    assert fake.stats()["refused"] == 0
    client.close()


def test_provider_token_updates_are_counted_across_connections(start: Any) -> None:
    """A second new token for the same key within 20 minutes is 429, on any connection;
    the accepted one keeps working; an hour-old one is expired."""
    fake = start()
    first_token, second_token = fake.token(), fake.token()
    assert first_token != second_token  # ES256 signatures are randomised
    one, two = Client(fake), Client(fake)
    a = one.push(first_token)
    one.flush()
    one.pump(lambda: one.answered(a))
    assert one.status(a) == 200
    b = two.push(second_token)
    two.flush()
    two.pump(lambda: two.answered(b))
    assert two.status(b) == 429
    assert two.body(b) == {"reason": "TooManyProviderTokenUpdates"}
    c = two.push(first_token)
    two.flush()
    two.pump(lambda: two.answered(c))
    assert two.status(c) == 200
    old = fake.token(iat=time.time() - 3700)
    d = two.push(old)
    two.flush()
    two.pump(lambda: two.answered(d))
    assert two.status(d) == 403
    assert two.body(d) == {"reason": "ExpiredProviderToken"}
    stats = fake.stats()
    assert stats["token_updates"] == 1
    assert stats["token_updates_refused"] == 1
    assert stats["rejected"] == {"TooManyProviderTokenUpdates": 1, "ExpiredProviderToken": 1}
    assert stats["connections"] == 2
    one.close()
    two.close()


def test_goaway_after_answers_up_to_its_last_stream_and_closes(start: Any) -> None:
    """--goaway-after 3: GOAWAY NO_ERROR naming the 3rd stream, {"reason":"Shutdown"};
    streams 1-3 answered, the ones above never, then the connection is closed."""
    fake = start("--goaway-after", "3")
    client = Client(fake)
    token = fake.token()
    first = client.push(token)
    client.flush()
    client.pump(lambda: client.answered(first))
    rest = [client.push(token) for _ in range(4)]
    client.flush()
    client.pump(lambda: client.eof)
    goaway = client.goaway()
    assert goaway is not None
    assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert goaway.last_stream_id == rest[1]
    assert json.loads(goaway.additional_data or b"null") == {"reason": "Shutdown"}
    assert [client.status(s) for s in (first, *rest)] == [200, 200, 200, None, None]
    client.close()
    deadline = time.monotonic() + 10
    stats = fake.stats()
    while stats.get("connections_closed_after_goaway", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server sees the close asynchronously
        stats = fake.stats()
    assert stats["accepted"] == 3
    assert stats["not_processed_after_goaway"] == 2
    assert stats["connections_closed_after_goaway"] == 1
    assert stats["goaway_debug"] == {'{"reason":"Shutdown"}': 1}
    assert stats["goaway_sent"] == {"NO_ERROR": 1}
    assert stats["stream_errors"] == {}


def test_reject_every_answers_unregistered_with_a_timestamp(start: Any) -> None:
    fake = start("--reject-every", "2")
    client = Client(fake)
    token = fake.token()
    answers = []
    for _ in range(4):
        stream_id = client.push(token)
        client.flush()
        client.pump(lambda s=stream_id: client.answered(s))  # type: ignore[misc]
        answers.append(client.status(stream_id))
    assert answers == [200, 410, 200, 410]
    body = client.body(3)
    assert body["reason"] == "Unregistered"
    assert abs(body["timestamp"] / 1000 - time.time()) < 60
    assert client.limits() == [1, 1000, 1, 1000, 1]
    client.close()


def test_a_notification_accepted_twice_is_counted(start: Any) -> None:
    """The same apns-collapse-id accepted twice: the client pushed one follow-up twice."""
    fake = start()
    client = Client(fake)
    token = fake.token()
    for collapse_id in ("one", "two", "one"):
        stream_id = client.push(token, collapse_id=collapse_id)
        client.flush()
        client.pump(lambda s=stream_id: client.answered(s))  # type: ignore[misc]
    assert fake.stats()["repeated_collapse_ids"] == 1
    client.close()


def test_the_goaway_answering_a_clients_own_goaway_is_counted_apart(start: Any) -> None:
    fake = start()
    client = Client(fake)
    first = client.push(fake.token())
    client.flush()
    client.pump(lambda: client.answered(first))
    client.h2.close_connection()
    client.flush()
    client.pump(lambda: client.goaway() is not None)
    client.close()
    stats = fake.stats()
    assert stats["goaway_sent"] == {}
    assert stats["goaway_sent_after_client_left"] == {"NO_ERROR": 1}
