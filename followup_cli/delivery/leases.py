"""The lease keeper: how long this run's leases surely last, their renewal (in the
background while a batch pushes), and the retries of database work while the database is
away for a moment, bounded by the leases."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from followup_cli.clock import utcnow
from followup_cli.db import Database, classify_error

log = logging.getLogger("followups.delivery")
T = TypeVar("T")

# Waits between tries while the database is away: doubling, with jitter, up to the cap.
DB_RETRY_FIRST_SECONDS = 0.1
DB_RETRY_MAX_SECONDS = 2.0


class RunLeases:
    """How long this run's leases surely last, their renewal, and the retries of database
    work while the database is away for a moment (a restart or failover of managed
    PostgreSQL takes seconds to a minute).

    Every row a run holds carries a lease that ends `lease_seconds` after its claim or
    the last renewal, whichever is later. Retrying past that point would gain nothing:
    another run may take the rows over and push them again. Batches are finished in the
    order they were claimed, so the oldest lease at stake is the oldest unfinished
    batch's claim, or the last renewal if that came later.
    """

    def __init__(self, db: Database, run_id: str, lease_seconds: float) -> None:
        self._db = db
        self._run_id = run_id
        self._lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._claims: deque[float] = deque()  # monotonic claim times of unfinished batches
        self._renewed_at = float("-inf")
        self._claimed_any = False  # the database answered a claim: it was there

    def batch_claimed(self, at: float) -> None:
        with self._lock:
            self._claims.append(at)
            self._claimed_any = True

    def batch_finished(self) -> None:
        with self._lock:
            if self._claims:
                self._claims.popleft()

    def seconds_left(self) -> float | None:
        """Until the first lease at stake ends; None when the run holds nothing."""
        with self._lock:
            if not self._claims:
                return None
            since = max(self._claims[0], self._renewed_at)
        return since + self._lease_seconds - time.monotonic()

    def renew(self) -> None:
        started = time.monotonic()
        with self._db.transaction() as repo:
            repo.renew_claims(self._run_id, utcnow() + timedelta(seconds=self._lease_seconds))
        with self._lock:
            self._renewed_at = max(self._renewed_at, started)

    def retry(self, work: Callable[[bool], T], what: str) -> T:
        """`work(retrying)` until it succeeds, retrying transient database errors while the
        leases last, renewing them between tries. Between batches, when the run holds no
        lease but has already claimed some (a restart right after a batch was finished),
        it waits as long as a lease would last. Before the first claim there is no retry:
        a database that was never reached (a wrong URL, a server down) ends the run at
        once. Any other error, or the last transient one, is raised."""
        delay = DB_RETRY_FIRST_SECONDS
        waited = 0.0
        retrying = False
        while True:
            try:
                result = work(retrying)
            except SQLAlchemyError as exc:
                problem = classify_error(exc)
                if not problem.transient:
                    raise
                left = self.seconds_left()
                if left is None:
                    if not self._claimed_any:
                        raise
                    left = float(self._lease_seconds)
                # The sum of the waits bounds it too, should the clock stand still.
                left = min(left, self._lease_seconds - waited)
                if left <= 0:
                    raise
                if not retrying:
                    log.warning(
                        "database unavailable while %s (%s); trying again for up to %.0fs, "
                        "as long as this run's leases last",
                        what,
                        problem.summary,
                        left,
                    )
                pause = min(left, delay / 2 + random.uniform(0, delay / 2))
                time.sleep(pause)
                waited += pause
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)
                retrying = True
                try:
                    self.renew()
                except SQLAlchemyError:
                    pass  # still away: the next try tells
                continue
            if retrying:
                log.warning("database back after %.1fs; %s done", waited, what)
            return result


async def renew_periodically(renew: Callable[[], None], every: float) -> None:
    """Keeps this run's leases alive while a slow batch is still pushing."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        try:
            await loop.run_in_executor(None, renew)
        except Exception as exc:  # one failed renewal must not end the renewals
            # A lapsed lease could let another run push this batch again; the next try
            # comes at the next interval, well before the lease ends.
            log.warning("could not renew this run's leases (%s); retrying", type(exc).__name__)
