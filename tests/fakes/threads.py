"""The fakes' servers in daemon threads: an asyncio TLS server whose event loop runs on
real time, so it keeps working while freezegun freezes the client's clock (HTTP/2), and
an http.server server (HTTP/1.1 endpoints).

    server = ServerThread("fake X", lambda: MyProtocol(...), tls_context, on_stop=abort_all)
    port = server.start()
    server.call(lambda: ...)  # run on the server's loop and wait for it
    server.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socketserver
import ssl
import threading
from collections.abc import Callable

from tests.fakes.clock import REAL_CLOCK

__all__ = ["HttpServerThread", "RealClockLoop", "ServerThread"]

log = logging.getLogger(__name__)


class RealClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose timers run on real time even while freezegun is active."""

    def time(self) -> float:
        return REAL_CLOCK["monotonic"]()


class ServerThread:
    """One asyncio TLS server on 127.0.0.1 in a daemon thread."""

    def __init__(
        self,
        name: str,
        protocol_factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        *,
        port: int = 0,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self._factory = protocol_factory
        self._context = context
        self._port = port
        self._on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None

    def start(self) -> int:
        """Start serving; returns the port."""
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=self._name, daemon=True
        )
        self._thread.start()
        return ready.result(timeout=10)

    def stop(self) -> None:
        """Close the listener and every connection (on_stop), then join the thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=3.0)
        if thread.is_alive():
            log.warning("%s: server thread did not stop in time", self._name)
        self._thread = self._loop = self._stop_event = None

    def call(self, action: Callable[[], object]) -> None:
        """Run `action` on the server's event loop and wait (up to 2 s) for it."""
        loop = self._loop
        if loop is None:
            return
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(timeout=2.0)

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        loop = RealClockLoop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        # Mostly TLS handshakes from clients that went away; never fatal for the server.
        loop.set_exception_handler(
            lambda _loop, ctx: log.debug(
                "%s: %s (%r)", self._name, ctx.get("message"), ctx.get("exception")
            )
        )
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("%s: server loop failed", self._name)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await loop.create_server(
            self._factory,
            host="127.0.0.1",
            port=self._port,
            ssl=self._context,
            reuse_address=True,
            backlog=512,
            ssl_handshake_timeout=10.0,
        )
        ready.set_result(server.sockets[0].getsockname()[1])
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            if self._on_stop is not None:
                self._on_stop()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)


class HttpServerThread:
    """An http.server server (a ThreadingHTTPServer, say) answering in a daemon thread."""

    def __init__(self, server: socketserver.TCPServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        """Stop accepting, close the listener and join the serving thread (handlers of
        connections still open run in daemon threads of their own)."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=2.0)
