"""A request to stop the run (SIGTERM, SIGINT), and how long pushes in flight then get."""

from __future__ import annotations

import asyncio


class RunStop:
    """A request to stop the run (SIGTERM, SIGINT), set from a signal handler.

    Once set, nothing more is claimed and no new push starts; the pushes in flight get
    up to STOP_GRACE_SECONDS to be answered and recorded, and every other claimed
    follow-up is handed back at once, so the next run need not wait for the lease."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._events: list[asyncio.Event] = []

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int) -> None:
        """Safe from a signal handler: it only sets a field and wakes the event loop."""
        if self.signal is None:
            self.signal = signum
        for loop, event in zip(self._loops, self._events, strict=True):
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        """Returns once a stop is requested (at once if it already was)."""
        event = asyncio.Event()
        self._loops.append(asyncio.get_running_loop())
        self._events.append(event)
        try:
            if not self.requested:
                await event.wait()
        finally:
            self._loops.pop()
            self._events.pop()


# After a stop request, how long the pushes in flight may take to be answered. Beyond
# this they are abandoned unrecorded: their follow-ups stay leased and come back after
# the lease, as a crash's do (what APNs may have accepted is not pushed sooner).
STOP_GRACE_SECONDS = 5.0
