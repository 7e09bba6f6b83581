"""The cancel gate: the one owner of the cancel promise. The pusher asks it before every
request of a follow-up; it answers from the batch's still-claimed set, re-read from the
database in a worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from followup_cli.db import Database, classify_error

log = logging.getLogger("followups.delivery")


class CancelGate:
    """The cancel promise's one owner (a PushGate): "may this follow-up still be pushed?",
    asked by the pusher before every request of it (first attempt, each retry, each
    resend of a push the service did not process).

    The app may cancel a follow-up after it was claimed. Rather than one query per
    request, the batch's still-claimed set is re-read (one query for every follow-up
    not yet answered) whenever the last reading began more than `interval` seconds ago,
    so a cancel committed `interval` seconds before a request starts stops it. The
    reading runs in a worker thread: the event loop and its streams never wait on the
    database. While the round runs, it is also kept fresh in the background, so a request
    that waited for a stream is checked against a recent reading when it starts.

    While the database does not answer, nothing is pushed (None): the push could not be
    recorded either, and the push round keeps the rest of that conversation back.
    """

    def __init__(self, db: Database, run_id: str, ids: Sequence[str], interval: float) -> None:
        self._db = db
        self._run_id = run_id
        self._pending = set(ids)
        self._interval = interval
        self._live: set[str] | None = set()  # None: the database did not answer
        self._read_at = float("-inf")  # when the latest reading began (monotonic)
        self._reading: asyncio.Future[None] | None = None

    async def allows(self, follow_up_id: str) -> bool | None:
        if time.monotonic() - self._read_at >= self._interval:
            await self._refresh()
        if self._live is None:
            return None
        return follow_up_id in self._live

    def withdrawn(self, follow_up_id: str) -> bool:
        if self._read_at == float("-inf"):
            return False  # not read yet: allows() reads before any request
        return self._live is not None and follow_up_id not in self._live

    def done(self, follow_up_id: str) -> None:
        """Answered: no further request of it, so no need to read it again."""
        self._pending.discard(follow_up_id)

    async def keep_fresh(self) -> None:
        """Reads again only when no request has caused a reading for `interval`: while
        pushes flow, their own checks keep it fresh, and this adds nothing."""
        every = max(self._interval, 0.05)
        while True:
            await asyncio.sleep(every)
            if self._pending and time.monotonic() - self._read_at >= every:
                await self._refresh()

    async def close(self) -> None:
        """Ends a reading still under way (the round is over: nobody needs it)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _refresh(self) -> None:
        # Callers at the same moment share one reading.
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        began = time.monotonic()
        ids = sorted(self._pending)
        try:
            self._live = await asyncio.get_running_loop().run_in_executor(
                None, self._still_claimed, ids
            )
        finally:
            self._read_at = began
            self._reading = None

    def _still_claimed(self, ids: list[str]) -> set[str] | None:
        for last_try in (False, True):
            try:
                with self._db.transaction() as repo:
                    return repo.still_claimed(self._run_id, ids)
            except SQLAlchemyError as exc:
                problem = classify_error(exc)
                if not problem.transient:
                    raise
                # A connection the server dropped mid-query: a new one may well answer.
                if last_try:
                    if self._live is not None:
                        log.warning(
                            "cancel check failed (%s); not pushing until the database answers",
                            problem.summary,
                        )
        return None
