"""A fake chat webhook / heartbeat endpoint: HTTP/1.1 on 127.0.0.1 in a daemon thread.

    with FakeWebhook() as hook:
        httpx.post(hook.url, json={"text": "hello"})
        assert hook.texts() == ["hello"]

POSTs to ``url`` are answered with ``status`` (default 200; set 500 to simulate a failing
webhook) and their JSON bodies recorded in ``posts`` (None for a body that is not JSON).
PUTs to ``url`` are answered the same way (a Pushgateway replacing a group); only
``requests`` records them. POSTs and PUTs to any other path get 404 (a wrong webhook
secret, a wrong Pushgateway group). ``delay`` seconds (default 0) pass before each POST
is recorded and answered: a slow chat service. GETs to any path are answered
with ``get_status`` (default: ``status``) and their paths recorded in ``gets``, for
heartbeat-style pings. Every request, whatever its fate, is also in ``requests``.
Records are written before the answer, so once a client has its response it is recorded.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

from tests.fakes.clock import wait_until
from tests.fakes.threads import HttpServerThread

__all__ = ["FakeWebhook", "WebhookRequest"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class WebhookRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10.0  # idle keep-alive connections give up after this

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.hook._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hook._track(self.connection, add=False)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_POST(self) -> None:
        self._receive("POST")

    def do_PUT(self) -> None:
        self._receive("PUT")

    def _receive(self, method: str) -> None:
        hook = self.server.hook
        body = self._read_body()
        if hook.delay:
            threading.Event().wait(hook.delay)  # real time, whatever freezegun does
        path = self.path
        if path.split("?", 1)[0] != hook.path:
            hook._record(WebhookRequest(method, path, self._headers(), body, 404), None, False)
            self._answer(404, b"no such webhook")
            return
        status = hook.status
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        request = WebhookRequest(method, path, self._headers(), body, status)
        hook._record(request, parsed, method == "POST")
        self._answer(status, b"ok" if status < 400 else b"error")

    def do_GET(self) -> None:
        hook = self.server.hook
        status = hook.get_status if hook.get_status is not None else hook.status
        hook._record(WebhookRequest("GET", self.path, self._headers(), b"", status), None, False)
        self._answer(status, b"ok" if status < 400 else b"error")

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hook: FakeWebhook, port: int) -> None:
        self.hook = hook
        super().__init__(("127.0.0.1", port), _Handler)


class FakeWebhook:
    """Records POSTed JSON and GET paths; see the module docstring."""

    def __init__(self, *, path: str = "/hook/SECRET123", port: int = 0) -> None:
        self.path = path
        self.status = 200
        self.delay = 0.0
        self.get_status: int | None = None
        self.posts: list[Any] = []
        self.gets: list[str] = []
        self.requests: list[WebhookRequest] = []
        self._requested_port = port
        self._server: HttpServerThread | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: set[socket.socket] = set()

    def start(self) -> FakeWebhook:
        if self._server is not None:
            raise RuntimeError("FakeWebhook is already running")
        self._server = HttpServerThread(_Server(self, self._requested_port), "fake-webhook")
        self._server.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        server.stop()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wake handlers idling on keep-alive
            except OSError:
                pass
        self._server = None

    def __enter__(self) -> FakeWebhook:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeWebhook is not running; use start() or a with block")
        return self._server.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def texts(self) -> list[Any]:
        """The ``"text"`` field of each POSTed JSON object that has one."""
        with self._lock:
            return [p["text"] for p in self.posts if isinstance(p, dict) and "text" in p]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Any]:
        """Block until at least ``n`` POSTs to ``url`` were recorded; return ``posts``.
        Raises TimeoutError otherwise."""
        return self._wait(lambda: len(self.posts) >= n, f"{n} POST(s)", timeout, self.posts)

    def wait_for_gets(self, n: int, timeout: float = 5.0) -> list[str]:
        """Block until at least ``n`` GETs were recorded; return ``gets``."""
        return self._wait(lambda: len(self.gets) >= n, f"{n} GET(s)", timeout, self.gets)

    def reset_records(self) -> None:
        with self._lock:
            self.posts.clear()
            self.gets.clear()
            self.requests.clear()

    def _wait(
        self, ready: Callable[[], bool], what: str, timeout: float, out: list[_T]
    ) -> list[_T]:
        with self._changed:
            if not wait_until(self._changed, ready, timeout):
                raise TimeoutError(
                    f"fake webhook: wanted {what} within {timeout}s; have "
                    f"{len(self.posts)} POST(s), {len(self.gets)} GET(s)"
                )
            return list(out)

    def _record(self, request: WebhookRequest, parsed: Any, is_post: bool) -> None:
        with self._changed:
            self.requests.append(request)
            if is_post:
                self.posts.append(parsed)
            elif request.method in ("GET", "HEAD"):
                self.gets.append(request.path)
            self._changed.notify_all()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
