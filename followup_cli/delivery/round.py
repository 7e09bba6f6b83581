"""The push round: one batch pushed, chain by chain, within the services' limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from followup_cli.delivery.chain import Chain, ProgressCallback
from followup_cli.delivery.decisions import Decisions
from followup_cli.delivery.gate import CancelGate
from followup_cli.delivery.leases import renew_periodically
from followup_cli.delivery.stop import STOP_GRACE_SECONDS, RunStop
from followup_cli.push.protocol import Pusher, PushOutcome, PushRequest
from followup_cli.report import ServiceStop


class PushRound:
    """Pushes one batch: its conversation chains walked concurrently (chain.py owns the
    order within each), with at most `pusher.concurrency` pushes in flight per push
    service, the leases renewed and the cancel gate kept fresh meanwhile, and a stop
    request honoured: no new push starts, those in flight get STOP_GRACE_SECONDS."""

    def __init__(
        self,
        pusher: Pusher,
        gate: CancelGate,
        decisions: Decisions,
        stop: RunStop,
        stopping: Callable[[], bool],
    ) -> None:
        self._pusher = pusher
        self.gate = gate
        self.decisions = decisions
        self._stop = stop
        # The run is ending (a signal, or the database refusing every row): the rest of
        # each conversation is handed back rather than pushed or parked.
        self._stopping = stopping
        self.stops: dict[str, ServiceStop] = {}  # in the order they were noticed

    def run(
        self,
        conversations: list[Chain],
        renew: Callable[[], None],
        renew_every: float,
        progress: ProgressCallback | None,
    ) -> None:
        if conversations:
            self._pusher.run(self._run(conversations, renew, renew_every, progress))

    async def _run(
        self,
        conversations: list[Chain],
        renew: Callable[[], None],
        renew_every: float,
        progress: ProgressCallback | None,
    ) -> None:
        # One limit per service, so a slow service does not hold back the other one.
        concurrency = max(1, self._pusher.concurrency)
        slots = {s: asyncio.Semaphore(concurrency) for s in self._pusher.services}
        helpers = [
            asyncio.ensure_future(renew_periodically(renew, renew_every)),
            asyncio.ensure_future(self.gate.keep_fresh()),
        ]
        tasks = [asyncio.ensure_future(c.walk(self, slots, progress)) for c in conversations]
        walks: asyncio.Future[Any] = asyncio.gather(*tasks)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([walks, stop], return_when=asyncio.FIRST_COMPLETED)
            if not walks.done():
                # Stopping: no new push starts; those in flight get a few seconds.
                await asyncio.wait([walks], timeout=STOP_GRACE_SECONDS)
            if walks.done():
                walks.result()  # an error of the database thread ends the run
        finally:
            # Nothing is left running behind, on an error or a stop alike.
            for task in (*tasks, *helpers, stop):
                task.cancel()
            await asyncio.gather(walks, *helpers, stop, return_exceptions=True)
            await self.gate.close()

    def stopping(self) -> bool:
        return self._stopping()

    async def push(self, request: PushRequest) -> PushOutcome:
        return await self._pusher.push(request, self.gate)

    def stopped(self, service: str) -> bool:
        stop = self._pusher.stopped(service)
        if stop is None:
            return False
        self.stops.setdefault(service, stop)
        return True
