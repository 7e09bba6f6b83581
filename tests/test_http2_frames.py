"""The HTTP/2 client's frames, in memory, against h2's server side as the reference peer
(it ends the connection on any frame it does not accept, as a strict server would) and
against frames built by hand with hyperframe and hpack for the shapes a server may send
that h2 never does: padding, priority, header blocks split into CONTINUATION frames,
informational answers, trailers, PING, a PUSH_PROMISE we disabled, a frame too large.

The fakes (tests/fakes/) exercise the same client over TLS with each service's rules;
these tests pin the framing itself, and the request headers' encoding."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PushPromiseFrame,
    SettingsFrame,
)

from followup_cli.push.h2client import (
    MAX_STREAM_ID,
    PREFACE,
    Answer,
    ConnectionLost,
    H2Connection,
    NotProcessed,
)
from tests.helpers import apns_token


class Wire(asyncio.Transport):
    """The client's side of an in-memory connection: what it writes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


class Peer:
    """h2's server state machine facing the client. Every byte the client wrote goes
    through `read`; a frame h2 does not accept raises ProtocolError there, failing the
    test."""

    def __init__(self, settings: dict[h2.settings.SettingCodes, int] | None = None) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                **(settings or {}),
            },
        )
        self.requests: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.events: list[h2.events.Event] = []

    def read(self, data: bytes) -> None:
        """A frame at a time: h2 applies a frame size it acknowledged from its next read."""
        if data.startswith(PREFACE):
            self._read(PREFACE)
            data = data[len(PREFACE) :]
        while data:
            size = 9 + int.from_bytes(data[:3], "big")
            self._read(data[:size])
            data = data[size:]

    def _read(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = dict(event.headers)
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)

    def out(self) -> bytes:
        return self.h2.data_to_send()


Scenario = Callable[[H2Connection, Wire, Peer], Awaitable[None]]


def run(scenario: Scenario, peer: Peer | None = None, label: str = "FCM") -> Peer:
    """Connect a client to the peer (both SETTINGS exchanged), then run the scenario."""
    peer = peer or Peer()

    async def main() -> None:
        wire = Wire()
        client = H2Connection("push.example", label)
        client.connection_made(wire)
        peer.h2.initiate_connection()
        peer.read(wire.take())
        client.data_received(peer.out())
        peer.read(wire.take())  # the client's SETTINGS acknowledgement
        await scenario(client, wire, peer)

    asyncio.run(main())
    return peer


def push(client: H2Connection, body: bytes = b"{}", **headers: str) -> asyncio.Task[Answer]:
    fields = {"content-type": "application/json", **headers}
    return asyncio.ensure_future(client.request("/send", fields, body, 5.0, lambda: True))


async def turn() -> None:
    """Let the requests started run up to their writes, and the writes go out."""
    for _ in range(3):
        await asyncio.sleep(0)


async def first_answered(client: H2Connection, wire: Wire, peer: Peer) -> None:
    """One request answered, so the connection takes as many streams as the peer allows."""
    task = push(client)
    await turn()
    peer.read(wire.take())
    peer.h2.send_headers(1, [(b":status", b"200")], end_stream=True)
    client.data_received(peer.out())
    assert (await task).status == 200


def raw(*frames: Frame) -> bytes:
    return b"".join(f.serialize() for f in frames)


def client_goaway(peer_events: list[h2.events.Event]) -> int | None:
    codes = [e.error_code for e in peer_events if isinstance(e, h2.events.ConnectionTerminated)]
    return None if not codes or codes[-1] is None else int(codes[-1])


def test_a_header_block_larger_than_a_frame_goes_out_in_continuation_frames() -> None:
    """An access token of 40,000 bytes: HEADERS and CONTINUATION frames, each within the
    peer's frame size, read back whole by h2."""
    token = "t" * 40_000

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        task = asyncio.ensure_future(
            client.request("/send", {}, b"{}", 5.0, lambda: True, authorization=lambda: token)
        )
        await turn()
        peer.read(wire.take())
        assert peer.requests[1][b"authorization"] == token.encode()
        assert bytes(peer.bodies[1]) == b"{}" and 1 in peer.ended
        peer.h2.send_headers(1, [(b":status", b"200")], end_stream=True)
        client.data_received(peer.out())
        assert (await task).status == 200

    peer = Peer({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 2**20})
    run(scenario, peer)


def test_a_body_larger_than_the_windows_waits_for_them_and_honours_a_changed_window() -> None:
    """A 200,000-byte body: sent as far as the connection's and stream's windows allow,
    the rest as the peer's WINDOW_UPDATEs and a new INITIAL_WINDOW_SIZE open them, in
    frames no larger than the peer's MAX_FRAME_SIZE. h2 raises on any byte beyond a
    window."""
    body = bytes(range(256)) * 781 + b"end"

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        task = push(client, body)
        await turn()
        first = wire.take()
        peer.read(first)
        assert len(peer.bodies[1]) == 65_535  # both windows at their default
        peer.h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1_000_000,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 20_000,
            }
        )
        peer.h2.increment_flow_control_window(1_000_000)  # the connection's window
        client.data_received(peer.out())  # SETTINGS, WINDOW_UPDATE: the rest goes out
        rest = wire.take()
        peer.read(rest)
        assert bytes(peer.bodies[1]) == body and 1 in peer.ended
        sizes = [
            e.flow_controlled_length for e in peer.events if isinstance(e, h2.events.DataReceived)
        ]
        assert max(sizes) == 20_000
        peer.h2.send_headers(1, [(b":status", b"200")], end_stream=True)
        client.data_received(peer.out())
        assert (await task).status == 200

    run(scenario)


def test_answers_padded_prioritised_continued_informational_and_with_trailers_are_read() -> None:
    """Answers in the shapes a server may choose: padded DATA, a HEADERS frame padded and
    with a priority, a header block continued, a 100 before the real status, trailers
    after the body. The answers' header blocks use hpack's dynamic table, and one of them
    is for a stream the client has given up on: it is decoded all the same, or the next
    answer's headers would be read wrong."""
    encoder = Encoder()

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        await first_answered(client, wire, peer)
        tasks = [push(client) for _ in range(4)]  # streams 3, 5, 7 and 9
        await turn()
        peer.read(wire.take())
        # Encoded in the order they are sent, as a server's encoder must.
        block = encoder.encode([(b":status", b"200"), (b"apns-id", b"id-three")])
        padded = HeadersFrame(3, block, flags=["END_HEADERS", "PADDED", "PRIORITY"])
        padded.pad_length, padded.depends_on, padded.stream_weight = 9, 0, 15
        body = DataFrame(3, b'{"name":"n"}', flags=["END_STREAM", "PADDED"])
        body.pad_length = 30
        informational = encoder.encode([(b":status", b"100")])
        status = encoder.encode([(b":status", b"410")])
        trailers = encoder.encode([(b"grpc-status", b"0")])
        # Stream 9's caller is gone; its answer adds a header to the table all the same,
        # and stream 7's answer refers to it by index.
        tasks[3].cancel()
        await turn()  # its request has ended: the client holds no stream 9 any more
        assert tasks[3].cancelled()
        nine = encoder.encode([(b":status", b"200"), (b"x-shared", b"from nine")])
        long_value = b"v" * 30_000
        continued = encoder.encode(
            [(b":status", b"400"), (b"x-shared", b"from nine"), (b"x-long", long_value)]
        )
        assert len(continued) < 30_010  # x-shared went as an index into the table
        client.data_received(
            raw(
                padded,
                body,
                HeadersFrame(5, informational, flags=["END_HEADERS"]),
                HeadersFrame(5, status, flags=["END_HEADERS"]),
                DataFrame(5, b"gone"),
                HeadersFrame(5, trailers, flags=["END_HEADERS", "END_STREAM"]),
                HeadersFrame(9, nine, flags=["END_HEADERS", "END_STREAM"]),
                HeadersFrame(7, continued[:10_000], flags=["END_STREAM"]),
                ContinuationFrame(7, continued[10_000:20_000]),
                ContinuationFrame(7, continued[20_000:], flags=["END_HEADERS"]),
            )
        )
        three, five, seven = [await t for t in tasks[:3]]
        assert (three.status, three.headers["apns-id"], bytes(three.body)) == (
            200,
            "id-three",
            b'{"name":"n"}',
        )
        assert (five.status, bytes(five.body)) == (410, b"gone")
        assert (seven.status, seven.headers["x-long"]) == (400, long_value.decode())
        assert seven.headers["x-shared"] == "from nine"
        assert not client.closed

    run(scenario)


def test_pings_and_settings_are_acknowledged_and_answers_acknowledged_for_flow_control() -> None:
    """A PING comes back with its payload; an answer body larger than the default
    window arrives whole because the client gives the window back as it reads."""

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        await first_answered(client, wire, peer)
        peer.h2.ping(b"8 bytes!")
        client.data_received(peer.out())
        peer.read(wire.take())
        acks = [e for e in peer.events if isinstance(e, h2.events.PingAckReceived)]
        assert [a.ping_data for a in acks] == [b"8 bytes!"]
        task = push(client)
        await turn()
        peer.read(wire.take())
        big = b"x" * 300_000
        peer.h2.send_headers(3, [(b":status", b"500")])
        sent = 0
        while sent < len(big):  # h2 sends only what the client's windows allow
            window = min(peer.h2.local_flow_control_window(3), peer.h2.max_outbound_frame_size)
            assert window > 0, "the client stopped giving back its window"
            piece = big[sent : sent + window]
            sent += len(piece)
            peer.h2.send_data(3, piece, end_stream=sent == len(big))
            client.data_received(peer.out())
            peer.read(wire.take())
        answer = await task
        assert (answer.status, len(answer.body)) == (500, len(big))
        assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in peer.events)

    run(scenario)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(
            lambda: raw(
                PushPromiseFrame(3, promised_stream_id=2, data=b"\x88", flags=["END_HEADERS"])
            ),
            1,
            id="push-promise",
        ),
        pytest.param(lambda: raw(DataFrame(3, b"x" * 20_000)), 6, id="frame-too-large"),
        pytest.param(
            lambda: raw(ContinuationFrame(3, b"\x88", flags=["END_HEADERS"])),
            1,
            id="continuation-alone",
        ),
        pytest.param(
            lambda: raw(HeadersFrame(3, b"\x88"), PingFrame(0, b"12345678")),
            1,
            id="header-block-interrupted",
        ),
        pytest.param(
            lambda: raw(HeadersFrame(3, b"\xff\xff\xff\xff", flags=["END_HEADERS"])),
            9,
            id="undecodable-headers",
        ),
        pytest.param(
            lambda: raw(SettingsFrame(0, settings={5: 100})), 1, id="bad-frame-size-setting"
        ),
        pytest.param(lambda: raw(DataFrame(9, b"x")), 1, id="data-on-a-stream-never-opened"),
        pytest.param(
            lambda: raw(HeadersFrame(2, b"\x88", flags=["END_HEADERS"])),
            1,
            id="headers-on-a-server-stream",
        ),
        pytest.param(
            lambda: raw(HeadersFrame(3, b"\x88"), *[ContinuationFrame(3, b"\x00" * 16_384)] * 17),
            11,
            id="continuation-flood",
        ),
    ],
)
def test_a_server_breaking_the_protocol_ends_the_connection(
    frames: Callable[[], bytes], code: int
) -> None:
    """The client answers with a GOAWAY carrying the error, lets the transport go, and
    the stream in flight fails as a lost connection (sent again by the caller)."""

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        await first_answered(client, wire, peer)
        task = push(client)
        await turn()
        peer.read(wire.take())
        client.data_received(frames())
        with pytest.raises(ConnectionLost):
            await task
        assert client.closed and wire.closed
        peer.read(wire.take())
        assert client_goaway(peer.events) == code

    run(scenario)


def test_a_goaway_in_pieces_answers_the_streams_below_it_and_refuses_the_rest() -> None:
    """A GOAWAY split across reads, with its debug data: streams at or below its last
    stream id are still answered; those above are not processed and may go again."""

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        await first_answered(client, wire, peer)
        tasks = [push(client) for _ in range(3)]  # streams 3, 5 and 7
        await turn()
        peer.read(wire.take())
        goaway = raw(
            GoAwayFrame(0, last_stream_id=5, error_code=0, additional_data=b'{"reason":"Shutdown"}')
        )
        client.data_received(goaway[:7])
        client.data_received(goaway[7:])
        assert not client.accepting
        with pytest.raises(NotProcessed):
            await tasks[2]
        for stream_id in (3, 5):
            peer.h2.send_headers(stream_id, [(b":status", b"200")], end_stream=True)
        client.data_received(peer.out())
        assert [(await t).status for t in tasks[:2]] == [200, 200]
        await turn()
        assert client.closed  # drained: closed with its own GOAWAY
        with pytest.raises(NotProcessed):
            await push(client)

    run(scenario)


def test_a_connection_out_of_stream_ids_retires_and_sends_the_request_elsewhere() -> None:
    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        await first_answered(client, wire, peer)
        client._next_stream_id = MAX_STREAM_ID + 2
        with pytest.raises(NotProcessed):
            await push(client)
        assert not client.accepting and client.closed

    run(scenario)


def test_a_request_unanswered_past_its_timeout_is_reset_and_the_others_go_on() -> None:
    """One timer per connection watches every request's deadline: the one the server
    never answers fails with PushTimeout soon after its own timeout and its stream is
    reset (CANCEL); one answered in time is not touched, and the connection goes on."""
    import time

    from followup_cli.push.h2client import TIMEOUT_GRANULARITY, PushTimeout

    async def scenario(client: H2Connection, wire: Wire, peer: Peer) -> None:
        await first_answered(client, wire, peer)
        started = time.monotonic()
        slow = asyncio.ensure_future(client.request("/send", {}, b"{}", 0.3, lambda: True))
        quick = asyncio.ensure_future(client.request("/send", {}, b"{}", 0.3, lambda: True))
        await turn()
        peer.read(wire.take())
        peer.h2.send_headers(5, [(b":status", b"200")], end_stream=True)
        client.data_received(peer.out())
        assert (await quick).status == 200
        with pytest.raises(PushTimeout):
            await slow
        waited = time.monotonic() - started
        assert 0.3 <= waited < 0.3 + TIMEOUT_GRANULARITY + 0.2, waited
        peer.read(wire.take())
        resets = [e for e in peer.events if isinstance(e, h2.events.StreamReset)]
        assert [(r.stream_id, r.error_code) for r in resets] == [(3, 8)]
        later = push(client)
        await turn()
        peer.read(wire.take())
        peer.h2.send_headers(7, [(b":status", b"200")], end_stream=True)
        client.data_received(peer.out())
        assert (await later).status == 200 and not client.closed

    run(scenario)


def test_the_header_encoder_round_trips_through_hpack_and_follows_table_size_updates() -> None:
    """The request headers as hpack's own decoder reads them, kinds kept, block after
    block; a table size the server set is announced first, as HPACK requires."""
    from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple

    from followup_cli.push.h2client import HeaderEncoder

    encoder, decoder = HeaderEncoder(), Decoder()
    for n in range(3):
        headers = [
            HeaderTuple(b":method", b"POST"),
            HeaderTuple(b":authority", b"api.push.apple.com"),
            NeverIndexedHeaderTuple(b":path", f"/3/device/{apns_token(n)}".encode()),
            HeaderTuple(b"content-type", b"application/json"),
            HeaderTuple(b"apns-topic", b"com.example.parent"),
            NeverIndexedHeaderTuple(b"authorization", b"bearer " + b"j" * 300),
        ]
        if n == 2:
            encoder.table_size_changed(100)
        block = encoder.encode(
            (h[0], h[1], isinstance(h, NeverIndexedHeaderTuple)) for h in headers
        )
        if n == 2:
            assert block[0] & 0xE0 == 0x20  # a dynamic table size update comes first
        decoded = decoder.decode(block, raw=True)
        assert [(type(h), h[0], h[1]) for h in decoded] == [(type(h), h[0], h[1]) for h in headers]
    assert decoder.header_table_size == 100
    assert not encoder.pending()  # announced once


def test_a_goaway_loses_none_of_what_the_client_had_queued() -> None:
    """A GOAWAY arrives after a WINDOW_UPDATE, while one request's body waits for the
    connection's window and a later request's HEADERS are queued but not yet written.
    h2 throws its unwritten bytes away as a GOAWAY arrives, and the window then sends the
    later request's DATA without its HEADERS. The client keeps what it queued, so the
    server (a real h2 server state machine which, like the fakes, ends the connection on
    a frame for a stream never opened) reads a valid connection: the first request's
    whole body arrives and its answer is read; the later one is sent again elsewhere."""
    from tests.fakes.http2 import _DrainingStateMachine, _UnenforcedSettings

    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.state_machine = _DrainingStateMachine()
    server.local_settings = _UnenforcedSettings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**20,  # the connection's limits
        },
    )
    received: dict[int, bytearray] = {}
    ended: set[int] = set()

    def server_reads(data: bytes) -> None:
        for event in server.receive_data(data):  # a ProtocolError fails the test here
            if isinstance(event, h2.events.RequestReceived):
                received[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                received[event.stream_id] += event.data
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)

    def answer(stream_id: int) -> None:
        server.send_headers(stream_id, [(":status", "200")], end_stream=True)

    async def scenario() -> None:
        wire = Wire()
        client = H2Connection("push.example", "FCM")
        client.connection_made(wire)
        server.initiate_connection()
        server_reads(wire.take())
        client.data_received(server.data_to_send())

        def push(body: bytes) -> asyncio.Task[Any]:
            headers = {"content-type": "application/json"}
            return asyncio.ensure_future(client.request("/send", headers, body, 5.0, lambda: True))

        first = push(b"{}")  # one stream until an answer has been read
        await asyncio.sleep(0.01)
        server_reads(wire.take())
        answer(1)
        client.data_received(server.data_to_send())
        assert (await first).status == 200

        kept = push(b"k" * 70_000)
        await asyncio.sleep(0.01)
        server_reads(wire.take())  # the connection's window of 65,535 bytes, used up
        assert len(received[3]) == 65_535 - 2 and 3 not in ended  # the first body took 2
        later = push(b"l" * 100)
        await asyncio.sleep(0)  # its HEADERS are queued; they are written a turn later
        assert not wire.written
        server.close_connection(last_stream_id=3)
        client.data_received(server.data_to_send())  # the window, then the GOAWAY
        with pytest.raises(NotProcessed):
            await later
        await asyncio.sleep(0.01)
        server_reads(wire.take())
        assert bytes(received[3]) == b"k" * 70_000 and 3 in ended
        answer(3)
        client.data_received(server.data_to_send())
        assert (await kept).status == 200

    asyncio.run(scenario())
