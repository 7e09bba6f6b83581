"""A randomized, seeded fault soak of `followups send-due`: real processes, a throw-away
PostgreSQL database, the fake APNs and the fake FCM, and every row checked afterwards.

    .venv/bin/python -m tests.soak --seed 1234 --seconds 90
    make soak SOAK_ARGS='--seed 1234'

The seed is printed first. It drives every random choice (each actor below draws from
its own random.Random derived from it), so a failure can be replayed with the same
faults, the same follow-ups and the same fates for the runs; the timing still varies.

**Fault phase** (``--seconds``), everything at once:

- the app: a few conversations with several follow-ups each, APNs tokens, FCM tokens and
  no token (in-app only), mixed within some conversations, a few dead tokens that the
  fakes answer 410 ``Unregistered`` / ``UNREGISTERED``; while the phase lasts it inserts
  more due follow-ups and cancels scheduled ones, leased ones preferred, recording when
  each cancel had committed;
- `send-due` runs started at random intervals, several at once sometimes, with no flock,
  some killed with SIGKILL, some sent SIGTERM (once, or twice) at a random moment;
- faults on the fakes in short episodes: 5xx storms (FCM's with Retry-After), 429s,
  GOAWAYs, dropped connections, refused, stalled and reset streams, a low
  SETTINGS_MAX_CONCURRENT_STREAMS, slow answers;
- the database terminating every backend of the soak's database at random moments;
- optionally (``--database-settings lock_timeout=50ms,statement_timeout=3s``) the
  timeouts a managed database's owner sets for every session, so that waits for locks
  and slow statements fail as they would there.

**Drain phase** (bounded by ``--drain-seconds``): faults off, no app. Once every run has
ended, the leases still held (by dead runs) and the retry pauses still running are moved
into the past, which is what the passage of time does to them (tests/test_crash.py does
the same), and runs go on until nothing is due.

**Checks** (a failure prints the seed and the whole history of each follow-up concerned:
its row, attempts, in-app messages, every request the fakes received for it, its cancel):

1. exactly once: every follow-up never cancelled is ``sent`` with one message row (and,
   with a token, a push a fake accepted), or ``failed`` for its dead token; none is left
   scheduled; a cancelled one stays ``cancelled`` with no message;
2. no late push: no request reaches a fake for a follow-up later than its cancel's commit
   + FOLLOWUPS_CANCEL_CHECK_SECONDS + ``--late-slack``;
3. in order: per conversation, in (scheduled_for, id) order, message timestamps strictly
   increase and each follow-up's first accepted push comes after the previous one's;
4. repeated pushes only after a crash: accepted more than once, beyond the answers lost
   on a connection the fake itself cut, at most (services x FOLLOWUPS_PUSH_CONCURRENCY +
   delivery.MAX_UNFINISHED) per run killed with SIGKILL, killed by SIGTERM's default
   action, or stopped at once by a second SIGTERM; none when there was no such run;
5. runs end as they may: exit 0 or 1 (143 after SIGTERM, or killed by the signal sent),
   no traceback, none hung.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import create_engine, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from followup_cli import migrate
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.delivery import MAX_UNFINISHED
from followup_cli.push.protocol import DEVICE_REASONS
from followup_cli.tables import (
    follow_up_attempts,
    follow_up_messages,
    follow_up_requests,
    follow_up_runs,
)
from tests.fakes.apns import MAX_STREAMS as APNS_MAX_STREAMS
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.helpers import (
    PG_URL,
    apns_env,
    apns_token,
    drop_pg_database,
    fcm_env,
    fcm_token,
    new_pg_database,
    pg_url,
)

T = TypeVar("T")
r = follow_up_requests.c

# The settings every run gets (besides the seed's own, in Params).
LEASE_SECONDS = 10  # the minimum
PUSH_TIMEOUT_SECONDS = 3.0
RETRY_PAUSE = "1s"
GIVE_UP_AFTER = "1h"
SERVICES = 2  # FOLLOWUPS_PUSH=apns,fcm: each service has its own streams in flight
RUN_TIMEOUT_SECONDS = 120.0  # a run alive longer than this is hung
FCM_MAX_STREAMS = 100
# An accepted push whose connection the fake cut this soon after may never have reached
# the client: its repeat is the network's, not a crash's.
LOST_ANSWER_WINDOW = 2.0
SHOW = 8  # histories printed per broken invariant


# -- what the fakes received ------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """One request a fake received: when it arrived and was answered (monotonic)."""

    service: str
    follow_up_id: str | None
    token: str
    arrived: float
    answered: float
    status: int  # 0: not answered (reason says why)
    reason: str | None
    connection: int

    @property
    def accepted(self) -> bool:
        return self.status == 200


def apns_pushes(apns: FakeAPNs) -> list[Push]:
    """Every request the fake APNs received; the collapse id is the follow-up's id."""
    return [
        Push(
            "apns",
            r.headers.get("apns-collapse-id"),
            r.token,
            r.arrived,
            r.answered,
            r.status,
            r.reason,
            r.connection,
        )
        for r in list(apns.requests)
    ]


def fcm_pushes(fcm: FakeFCM) -> list[Push]:
    """Every request the fake FCM received; android.collapse_key is the follow-up's id."""
    pushes = []
    for r in list(fcm.requests):
        android = (r.message or {}).get("android")
        collapse = android.get("collapse_key") if isinstance(android, dict) else None
        pushes.append(
            Push(
                "fcm",
                collapse if isinstance(collapse, str) else None,
                r.token,
                r.arrived,
                r.answered,
                r.status,
                r.code,
                r.connection,
            )
        )
    return pushes


# -- what the soak keeps -----------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """The seed's choices for the whole soak."""

    concurrency: int
    batch_size: int
    retry_base: float  # FOLLOWUPS_RETRY_BASE_SECONDS: small, but a retry may outlast the slack
    cancel_check: float
    apns_latency: float
    fcm_latency: float
    conversations: int
    run_gap: float  # mean seconds between starts
    app_gap: float  # mean seconds between the app's actions
    cancel_share: float  # of the app's actions

    @classmethod
    def draw(cls, rng: random.Random) -> Params:
        return cls(
            concurrency=rng.choice([2, 4, 8, 16]),
            batch_size=rng.choice([5, 10, 20, 50]),
            retry_base=rng.choice([0.05, 0.2, 0.5]),
            cancel_check=rng.choice([0.0, 0.2, 0.2]),
            apns_latency=rng.uniform(0.005, 0.03),
            fcm_latency=rng.uniform(0.005, 0.03),
            conversations=rng.randint(8, 20),
            run_gap=rng.uniform(0.7, 1.6),
            app_gap=rng.uniform(0.3, 0.8),
            cancel_share=rng.uniform(0.2, 0.4),
        )


@dataclass(frozen=True)
class Known:
    id: str
    conversation_id: str
    scheduled_for: datetime
    kind: str  # apns, fcm, none, apns-dead, fcm-dead
    token: str | None


@dataclass
class Cancel:
    at: float  # monotonic, once the commit had returned
    wall: datetime
    uncertain: bool = False  # the commit's answer was lost; `at` is when it was seen


@dataclass
class Episode:
    kind: str
    start: float
    end: float
    detail: str


@dataclass
class Run:
    index: int
    phase: str
    proc: subprocess.Popen[bytes]
    started: float
    plan: list[tuple[float, int]]  # (monotonic time, signal) still to send
    out: Path
    err: Path
    files: list[IO[bytes]]
    signals: list[tuple[float, int]] = field(default_factory=list)
    ended: float | None = None
    returncode: int | None = None
    hung: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sent(self, sig: int) -> int:
        return sum(1 for _, s in self.signals if s == sig)

    @property
    def crashed(self) -> bool:
        """Died in a way that may repeat what it had in flight."""
        rc = self.returncode
        return rc in (-signal.SIGKILL, -signal.SIGTERM) or (
            rc == 128 + signal.SIGTERM and self.sent(signal.SIGTERM) >= 2
        )


@dataclass
class SoakConfig:
    seed: int
    seconds: float = 90.0
    drain_seconds: float = 90.0
    late_slack: float = 0.5
    max_runs: int = 4
    database_url: str | None = None  # None: a throw-away database on PG_URL's server
    keep: bool = False  # keep the database and the runs' output
    # Settings the database's owner made for every session (ALTER DATABASE ... SET), as
    # managed databases often do: e.g. "lock_timeout=50ms,statement_timeout=3s".
    database_settings: str | None = None
    out: Callable[[str], None] = print


@dataclass
class SoakResult:
    seed: int
    ok: bool
    summary: str
    failures: list[str]
    figures: dict[str, Any]


def with_retries(work: Callable[[], T], attempts: int = 30) -> T:
    """The soak's own statements, through the database terminations."""
    for n in range(attempts):
        try:
            return work()
        except DBAPIError:
            if n == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**n, 1.0))
    raise AssertionError("unreachable")


# -- the soak ----------------------------------------------------------------------------


class Soak:
    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.seed = config.seed
        self.params = Params.draw(random.Random(config.seed))
        self.rng = {
            name: random.Random(f"{config.seed}/{name}")
            for name in ("seed", "app", "runs", "faults", "db")
        }
        self.out = config.out
        self.t0 = time.monotonic()
        self.wall0 = utcnow()
        self.lock = threading.Lock()
        self.known: dict[str, Known] = {}
        self.by_token: dict[str, str] = {}
        self.conversations: list[str] = []
        self.last_due: dict[str, datetime] = {}
        self.cancels: dict[str, Cancel] = {}
        self.runs: list[Run] = []
        self.episodes: list[Episode] = []
        self.fault_counts: Counter[str] = Counter()
        self.terminations = 0
        self.terminated_backends = 0
        self.skipped_starts = 0
        self.fast_forwarded = 0
        self.expired = 0
        self.actor_errors: list[str] = []
        self.stop = threading.Event()
        self.tokens = itertools.count(1)
        self.fault_end = 0.0

    # -- clock and output

    def rel(self, t: float) -> str:
        return f"{t - self.t0:+.3f}s"

    def mono(self, value: datetime) -> float:
        """A database time on the soak's monotonic clock (same host, same wall clock)."""
        return self.t0 + (value - self.wall0).total_seconds()

    def rel_dt(self, value: datetime | None) -> str:
        if value is None:
            return "-"
        return f"{(value - self.wall0).total_seconds():+.3f}s"

    def say(self, line: str) -> None:
        self.out(line)

    # -- setup

    def setup(self, workdir: Path) -> None:
        self.workdir = workdir
        config = self.config
        if config.database_url is None:
            self.db_name = new_pg_database()
            self.url = pg_url(self.db_name)
            self.own_db = True
        else:
            self.url = config.database_url
            self.db_name = str(make_url(self.url).database)
            self.own_db = False
        db = Database(self.url)
        try:
            migrate.upgrade(db)
            for setting in filter(None, (config.database_settings or "").split(",")):
                name, _, value = setting.partition("=")
                with db.engine.begin() as conn:  # for the sessions opened from now on
                    conn.exec_driver_sql(
                        f"ALTER DATABASE \"{self.db_name}\" SET {name.strip()} = '{value.strip()}'"
                    )
        finally:
            db.close()
        self.engine = create_engine(
            self.url,
            pool_pre_ping=True,
            connect_args={"application_name": "followups-soak", "connect_timeout": 5},
        )
        self.columns = set(follow_up_requests.c.keys())
        self.apns = FakeAPNs(latency=self.params.apns_latency).start()
        self.fcm = FakeFCM(latency=self.params.fcm_latency, max_streams=FCM_MAX_STREAMS).start()
        p = self.params
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUPS_")}
        self.env = {
            **clean,
            **apns_env(self.apns),
            **fcm_env(self.fcm),
            "FOLLOWUPS_DATABASE_URL": self.url,
            "FOLLOWUPS_PUSH": "apns,fcm",
            "FOLLOWUPS_RETRY_BASE_SECONDS": str(p.retry_base),
            "FOLLOWUPS_LEASE_SECONDS": str(LEASE_SECONDS),
            "FOLLOWUPS_CANCEL_CHECK_SECONDS": str(p.cancel_check),
            "FOLLOWUPS_PUSH_CONCURRENCY": str(p.concurrency),
            "FOLLOWUPS_BATCH_SIZE": str(p.batch_size),
            "FOLLOWUPS_PUSH_TIMEOUT": str(PUSH_TIMEOUT_SECONDS),
            "FOLLOWUPS_RETRY_PAUSE": RETRY_PAUSE,
            "FOLLOWUPS_GIVE_UP_AFTER": GIVE_UP_AFTER,
        }

    def teardown(self, keep: bool) -> None:
        for run in self.alive():  # only when the soak itself was interrupted
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)
            run.proc.wait()
        for fake in (getattr(self, "apns", None), getattr(self, "fcm", None)):
            if fake is not None:
                with contextlib.suppress(Exception):
                    fake.stop()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()
        if getattr(self, "own_db", False) and not keep:
            drop_pg_database(self.db_name)

    def preflight(self) -> str | None:
        """One run over the empty database: the settings must be taken (exit 0)."""
        run = self.start_run("preflight", [], bare=False)
        self.wait_runs([run], RUN_TIMEOUT_SECONDS)
        if run.returncode == 0:
            return None
        return f"exit {run.returncode}: {run.err.read_text(errors='replace').strip()[-2000:]}"

    # -- follow-ups as the app writes them

    def new_token(self, kind: str) -> str | None:
        n = next(self.tokens)
        if kind == "none":
            return None
        token = apns_token(n) if kind.startswith("apns") else fcm_token(n)
        if kind == "apns-dead":
            self.apns.respond(410, "Unregistered", token=token)
        elif kind == "fcm-dead":
            self.fcm.respond("UNREGISTERED", token=token)
        return token

    def draw_kind(self, rng: random.Random, conversation_kind: str) -> str:
        if conversation_kind != "mixed" and rng.random() < 0.9:
            return conversation_kind
        return rng.choices(["apns", "fcm", "none", "apns-dead", "fcm-dead"], [40, 35, 19, 3, 3])[0]

    def make(self, rng: random.Random, conversation: str, due: datetime, kind: str) -> Known:
        due = max(due, self.last_due.get(conversation, due) + timedelta(milliseconds=1))
        self.last_due[conversation] = due
        return Known(str(uuid.uuid4()), conversation, due, kind, self.new_token(kind))

    def values(self, k: Known) -> dict[str, Any]:
        n = self.conversations.index(k.conversation_id)
        return {
            "id": k.id,
            "conversation_id": k.conversation_id,
            "user_id": f"parent-{n}",
            "scheduled_for": k.scheduled_for,
            "urgency": "urgent" if n % 3 == 0 else "routine",
            "display_text": f"How is your child feeling today? ({k.id[:8]})",
            "original_message": f"How is your child feeling today? ({k.id[:8]})",
            "status": "scheduled",
            "child_name": "Maya",
            "child_age": "4",
            "device_token": k.token,
            "follow_up_days": 0,
            "follow_up_hours": 1,
            "follow_up_minutes": 0,
        }

    def register(self, items: Iterable[Known]) -> None:
        with self.lock:
            for k in items:
                self.known[k.id] = k
                if k.token:
                    self.by_token[k.token] = k.id

    def seed_rows(self) -> None:
        rng = self.rng["seed"]
        now = utcnow()
        latest = now + timedelta(seconds=0.6 * self.config.seconds)
        self.conversation_kind: dict[str, str] = {}
        items: list[Known] = []
        for _ in range(self.params.conversations):
            conversation = str(uuid.uuid4())
            self.conversations.append(conversation)
            kind = rng.choice(["mixed", "mixed", "apns", "fcm", "none"])
            self.conversation_kind[conversation] = kind
            due = now - timedelta(seconds=rng.uniform(0, 300))
            for _ in range(rng.randint(2, 8)):
                item = self.make(rng, conversation, min(due, latest), self.draw_kind(rng, kind))
                items.append(item)
                due = item.scheduled_for + timedelta(seconds=rng.uniform(0.5, 30))
        with self.engine.begin() as conn:
            conn.execute(insert(follow_up_requests).values([self.values(k) for k in items]))
        self.register(items)

    # -- the app, while the fault phase lasts

    def app(self) -> None:
        rng = self.rng["app"]
        while not self.stop.wait(rng.expovariate(1 / self.params.app_gap)):
            cancel = rng.random() < self.params.cancel_share
            try:
                self.cancel_one(rng) if cancel else self.insert_some(rng)
            except DBAPIError:
                pass  # the database terminated this connection: the app tries again later

    def insert_some(self, rng: random.Random) -> None:
        count = rng.randint(1, 6) if rng.random() < 0.8 else rng.randint(8, 20)
        items: list[Known] = []
        for _ in range(count):
            if rng.random() < 0.25 or not self.conversations:
                conversation = str(uuid.uuid4())
                self.conversations.append(conversation)
                self.conversation_kind[conversation] = rng.choice(["mixed", "apns", "fcm"])
            else:
                conversation = rng.choice(self.conversations)
            ahead = rng.uniform(0, 8) if rng.random() < 0.2 else -rng.uniform(0, 2)
            ahead = min(ahead, self.fault_end - time.monotonic() - 1.0)  # due before the drain
            kind = self.draw_kind(rng, self.conversation_kind[conversation])
            items.append(self.make(rng, conversation, utcnow() + timedelta(seconds=ahead), kind))
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(follow_up_requests).values([self.values(k) for k in items]))
        except DBAPIError:
            ids = [k.id for k in items]
            there = with_retries(lambda: self.ids_where(r.id.in_(ids)))
            items = [k for k in items if k.id in there]
        self.register(items)

    def cancel_one(self, rng: random.Random) -> None:
        horizon = utcnow() + timedelta(seconds=2)
        with self.engine.connect() as conn:
            rows = sorted(
                conn.execute(
                    select(r.id, r.claimed_by).where(
                        r.status == "scheduled", r.scheduled_for <= horizon
                    )
                ).all()
            )
        if not rows:
            return
        leased = [row.id for row in rows if row.claimed_by is not None]
        pool = leased if leased and rng.random() < 0.6 else [row.id for row in rows]
        follow_up_id = str(rng.choice(pool))
        try:
            with self.engine.begin() as conn:
                done = conn.execute(
                    update(follow_up_requests)
                    .where(r.id == follow_up_id, r.status == "scheduled")
                    .values(status="cancelled")
                ).rowcount
            if done:
                self.cancels[follow_up_id] = Cancel(time.monotonic(), utcnow())
        except DBAPIError:
            status = with_retries(lambda: self.status_of(follow_up_id))
            if status == "cancelled":
                self.cancels[follow_up_id] = Cancel(time.monotonic(), utcnow(), uncertain=True)

    def status_of(self, follow_up_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(select(r.status).where(r.id == follow_up_id))

    def ids_where(self, *where: Any) -> set[str]:
        with self.engine.connect() as conn:
            return {str(x) for x in conn.scalars(select(r.id).where(*where))}

    # -- runs

    def start_run(self, phase: str, plan: list[tuple[float, int]], *, bare: bool) -> Run:
        index = len(self.runs) + 1
        out = self.workdir / f"run{index:04d}.out"
        err = self.workdir / f"run{index:04d}.err"
        command = [sys.executable, "-m", "followup_cli"]
        command += ["send-due"] if bare else ["--database-url", self.url, "send-due"]
        stdout, stderr = out.open("wb"), err.open("wb")
        started = time.monotonic()
        proc = subprocess.Popen(command, env=self.env, stdout=stdout, stderr=stderr)
        run = Run(
            index,
            phase,
            proc,
            started,
            sorted((started + delay, sig) for delay, sig in plan),
            out,
            err,
            [stdout, stderr],
        )
        with self.lock:
            self.runs.append(run)
        return run

    def alive(self) -> list[Run]:
        with self.lock:
            return [run for run in self.runs if run.returncode is None]

    def tend(self, run: Run) -> None:
        """Reap the run if it ended; send the signals it is due; kill it if hung."""
        if run.returncode is not None:
            return
        now = time.monotonic()
        code = run.proc.poll()
        if code is not None:
            run.returncode, run.ended = code, now
            for f in run.files:
                f.close()
            return
        while run.plan and run.plan[0][0] <= now:
            _, sig = run.plan.pop(0)
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, sig)
                run.signals.append((now, sig))
        if now - run.started > RUN_TIMEOUT_SECONDS and not run.hung:
            run.hung = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)

    def wait_runs(self, runs: list[Run], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(run.returncode is None for run in runs):
            for run in runs:
                self.tend(run)
                if run.returncode is None and time.monotonic() > deadline and not run.hung:
                    run.hung = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(run.pid, signal.SIGKILL)
            time.sleep(0.02)

    def draw_plan(self, rng: random.Random) -> list[tuple[float, int]]:
        fate, at = rng.random(), rng.uniform(0.2, 4.0)
        if fate < 0.15:
            return [(at, signal.SIGKILL)]
        if fate < 0.25:
            return [(at, signal.SIGTERM)]
        if fate < 0.30:
            return [(at, signal.SIGTERM), (at + rng.uniform(0.02, 0.6), signal.SIGTERM)]
        return []

    def runner(self) -> None:
        rng = self.rng["runs"]
        next_start = time.monotonic() + rng.uniform(0, 0.5)
        while not self.stop.is_set():
            if time.monotonic() >= next_start:
                burst = 1 if rng.random() < 0.7 else rng.randint(2, 4)
                for _ in range(burst):
                    plan, bare = self.draw_plan(rng), rng.random() < 0.5
                    if len(self.alive()) < self.config.max_runs:
                        self.start_run("fault", plan, bare=bare)
                    else:
                        self.skipped_starts += 1
                next_start = time.monotonic() + rng.expovariate(1 / self.params.run_gap)
            for run in self.alive():
                self.tend(run)
            time.sleep(0.02)

    # -- faults on the fakes

    def faults(self) -> None:
        rng = self.rng["faults"]
        undo: list[tuple[float, Callable[[], None]]] = []
        busy: set[str] = set()
        kinds = {
            "apns_5xx": 3,
            "apns_429": 1,
            "apns_goaway": 2,
            "apns_drop": 2,
            "apns_refuse": 2,
            "apns_stall": 1,
            "apns_reset": 1,
            "apns_throttle": 1,
            "apns_slow": 1,
            "fcm_5xx": 3,
            "fcm_429": 1,
            "fcm_long_retry_after": 0.5,
            "fcm_drop": 2,
            "fcm_refuse": 1,
            "fcm_stall": 1,
            "fcm_reset": 1,
            "fcm_throttle": 1,
            "fcm_slow": 1,
        }
        names, weights = list(kinds), list(kinds.values())
        next_fault = time.monotonic() + rng.uniform(0.5, 2.0)
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                for item in [u for u in undo if u[0] <= now]:
                    undo.remove(item)
                    item[1]()
                if now >= next_fault:
                    kind = rng.choices(names, weights)[0]
                    duration = rng.uniform(0.5, 4.0)
                    started = self.start_fault(kind, duration, rng, busy)
                    if started is not None:
                        detail, stop = started
                        self.fault_counts[kind] += 1
                        self.episodes.append(Episode(kind, now, now + duration, detail))
                        if stop is not None:
                            undo.append((now + duration, stop))
                    next_fault = now + rng.uniform(0.3, 2.5)
                time.sleep(0.05)
        finally:
            for _, stop in undo:
                stop()
            self.apns.latency = self.params.apns_latency
            self.fcm.latency = self.params.fcm_latency
            self.apns.goaway_after = None
            self.fcm.max_streams = FCM_MAX_STREAMS
            self.apns.max_streams = APNS_MAX_STREAMS

    def start_fault(
        self, kind: str, duration: float, rng: random.Random, busy: set[str]
    ) -> tuple[str, Callable[[], None] | None] | None:
        """Start one episode: (what it is, how to end it, None if instant); None if its
        knob is taken by an episode still running (the draws are the same either way)."""
        apns, fcm = self.apns, self.fcm
        pick = rng.random()  # every kind draws the same, so the stream does not depend on busy
        times = 1 + int(pick * 20)

        def knob(name: str, set_: Callable[[], None], reset: Callable[[], None]) -> Any:
            if name in busy:
                return None
            busy.add(name)
            set_()

            def stop() -> None:
                reset()
                busy.discard(name)

            return stop

        def rule(fake: FakeAPNs | FakeFCM, *args: Any, **kwargs: Any) -> Callable[[], None]:
            handle = fake.respond(*args, **kwargs)
            return lambda: fake.drop_rule(handle)

        if kind == "apns_5xx":
            status, reason = [(500, None), (503, None), (503, "Shutdown")][int(pick * 3)]
            return f"{status} {reason or ''}".strip(), rule(apns, status, reason)
        if kind == "apns_429":
            return "429 TooManyRequests", rule(apns, 429, "TooManyRequests")
        if kind == "apns_goaway":
            if pick < 0.5:
                apns.goaway_now()
                return "GOAWAY now", None
            after = 2 + int(pick * 30)

            def set_after() -> None:
                apns.goaway_after = after

            def reset_after() -> None:
                apns.goaway_after = None

            stop = knob("apns_goaway_after", set_after, reset_after)
            return (f"GOAWAY every {after} requests", stop) if stop else None
        if kind == "fcm_5xx":
            error = "UNAVAILABLE" if pick < 0.6 else "INTERNAL"
            retry_after = [None, "0", "1", "2"][int(pick * 4)]
            return f"{error} Retry-After {retry_after}", rule(fcm, error, retry_after=retry_after)
        if kind == "fcm_429":
            retry_after = str(1 + int(pick * 3))
            return f"QUOTA_EXCEEDED Retry-After {retry_after}", rule(
                fcm, "QUOTA_EXCEEDED", retry_after=retry_after
            )
        if kind == "fcm_long_retry_after":
            return "UNAVAILABLE Retry-After 45", rule(fcm, "UNAVAILABLE", retry_after="45")
        if kind in ("apns_drop", "fcm_drop"):
            (apns if kind == "apns_drop" else fcm).drop_connections()
            return "connections dropped", None
        if kind in ("apns_refuse", "apns_stall", "apns_reset"):
            action = kind.removeprefix("apns_")
            count = times if action == "refuse" else 1 + times // 6
            return f"{action} x{count}", rule(apns, 200, action=action, times=count)
        if kind in ("fcm_refuse", "fcm_stall", "fcm_reset"):
            action = kind.removeprefix("fcm_")
            count = times if action == "refuse" else 1 + times // 6
            return f"{action} x{count}", rule(fcm, action=action, times=count)
        if kind == "apns_throttle":
            limit = 1 + int(pick * 3)

            def set_limit() -> None:
                apns.max_streams = limit

            def reset_limit() -> None:
                apns.max_streams = APNS_MAX_STREAMS

            stop = knob("apns_streams", set_limit, reset_limit)
            return (f"max streams {limit}", stop) if stop else None
        if kind == "fcm_throttle":
            limit = 1 + int(pick * 2)

            def set_fcm_limit() -> None:
                fcm.max_streams = limit

            def reset_fcm_limit() -> None:
                fcm.max_streams = FCM_MAX_STREAMS

            stop = knob("fcm_streams", set_fcm_limit, reset_fcm_limit)
            return (f"max streams {limit}", stop) if stop else None
        if kind in ("apns_slow", "fcm_slow"):
            fake: Any = apns if kind == "apns_slow" else fcm
            base = self.params.apns_latency if kind == "apns_slow" else self.params.fcm_latency
            latency = 0.1 + pick * 0.4

            def slow() -> None:
                fake.latency = latency

            def fast() -> None:
                fake.latency = base

            stop = knob(kind, slow, fast)
            return (f"latency {latency:.2f}s", stop) if stop else None
        raise ValueError(kind)

    # -- the database terminating backends

    def terminator(self) -> None:
        rng = self.rng["db"]
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        query = text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :d AND pid <> pg_backend_pid()"
        )
        try:
            while not self.stop.wait(rng.uniform(1.0, 8.0)):
                burst = rng.uniform(0.3, 1.5) if rng.random() < 0.3 else 0.0
                until = time.monotonic() + burst
                self.terminations += 1
                self.episodes.append(
                    Episode("db_terminate", time.monotonic(), until, f"burst {burst:.1f}s")
                )
                while True:
                    try:
                        with admin.connect() as conn:
                            self.terminated_backends += len(
                                conn.execute(query, {"d": self.db_name}).all()
                            )
                    except DBAPIError:
                        pass
                    if time.monotonic() >= until or self.stop.is_set():
                        break
                    time.sleep(0.1)
        finally:
            admin.dispose()

    # -- phases

    def actor(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception:
                self.actor_errors.append(f"{name}: {traceback.format_exc()}")

        thread = threading.Thread(target=run, name=f"soak-{name}", daemon=True)
        thread.start()
        return thread

    def fault_phase(self) -> None:
        self.fault_end = time.monotonic() + self.config.seconds
        threads = [
            self.actor(self.app, "app"),
            self.actor(self.runner, "runs"),
            self.actor(self.faults, "faults"),
            self.actor(self.terminator, "db"),
        ]
        next_report = time.monotonic() + 10
        while time.monotonic() < self.fault_end:
            time.sleep(0.1)
            if time.monotonic() >= next_report:
                next_report += 10
                self.progress("fault")
        self.stop.set()
        for thread in threads:
            thread.join(timeout=30)

    def progress(self, phase: str) -> None:
        statuses: Counter[str]
        try:
            with self.engine.connect() as conn:
                statuses = Counter(
                    dict(conn.execute(select(r.status, func.count()).group_by(r.status)).all())
                )
        except DBAPIError:
            statuses = Counter()
        runs = list(self.runs)
        self.say(
            f"  {phase} {self.rel(time.monotonic())}: runs {len(runs)} "
            f"(alive {sum(1 for x in runs if x.returncode is None)}), "
            f"follow-ups {len(self.known)} {dict(sorted(statuses.items()))}, "
            f"cancels {len(self.cancels)}, faults {sum(self.fault_counts.values())}, "
            f"db terminations {self.terminations}"
        )

    def drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_seconds
        # The fault phase's runs end by themselves (a stalled push waits out its timeout).
        self.wait_runs(self.alive(), max(10.0, deadline - time.monotonic()))
        rng = random.Random(f"{self.seed}/drain")
        while True:
            self.expired += with_retries(self.expire_leases)
            self.fast_forwarded += with_retries(self.fast_forward_retries)
            due, later = with_retries(self.count_due)
            if (due == 0 and later == 0) or time.monotonic() > deadline:
                break
            if due == 0:
                time.sleep(0.2)  # the last ones are not due yet
                continue
            count = 2 if rng.random() < 0.3 else 1
            runs = [self.start_run("drain", [], bare=rng.random() < 0.5) for _ in range(count)]
            self.wait_runs(runs, min(RUN_TIMEOUT_SECONDS, max(5.0, deadline - time.monotonic())))
        self.progress("drained")

    def expire_leases(self) -> int:
        """No run is alive: every lease left is a dead run's; let it run out."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(follow_up_requests)
                .where(r.claimed_by.is_not(None), r.claim_expires_at > utcnow())
                .values(claim_expires_at=utcnow() - timedelta(seconds=1))
            ).rowcount

    def fast_forward_retries(self) -> int:
        """Retry pauses still running end now, as they would with time."""
        if "retry_at" not in self.columns:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(
                update(follow_up_requests)
                .where(r.status == "scheduled", r.retry_at > utcnow())
                .values(retry_at=utcnow() - timedelta(seconds=1))
            ).rowcount

    def count_due(self) -> tuple[int, int]:
        """(scheduled and due, scheduled and due later), held ones left out."""
        where = [r.status == "scheduled", r.scheduled_for.is_not(None)]
        if "held_at" in self.columns:
            where.append(r.held_at.is_(None))
        now = utcnow()
        with self.engine.connect() as conn:
            due = conn.scalar(select(func.count()).where(*where, r.scheduled_for <= now))
            later = conn.scalar(select(func.count()).where(*where, r.scheduled_for > now))
        return int(due or 0), int(later or 0)

    # -- the checks

    def load(self) -> None:
        def read() -> tuple[Any, ...]:
            with self.engine.connect() as conn:
                rows = conn.execute(select(follow_up_requests)).all()
                attempts = conn.execute(
                    select(follow_up_attempts).order_by(
                        follow_up_attempts.c.attempted_at, follow_up_attempts.c.id
                    )
                ).all()
                messages = conn.execute(select(follow_up_messages)).all()
                runs = conn.execute(select(follow_up_runs.c.id, follow_up_runs.c.pid)).all()
            return rows, attempts, messages, runs

        rows, attempts, messages, runs = with_retries(read)
        self.rows = {str(row.id): row for row in rows}
        self.attempts: dict[str, list[Any]] = defaultdict(list)
        for a in attempts:
            self.attempts[str(a.follow_up_id)].append(a)
        self.messages: dict[str, list[Any]] = defaultdict(list)
        for m in messages:
            if m.follow_up_id is not None:
                self.messages[str(m.follow_up_id)].append(m)
        pids = {run.pid: run.index for run in self.runs}
        self.run_label = {str(x.id): f"run{pids.get(x.pid, '?')}" for x in runs}
        self.pushes: dict[str, list[Push]] = defaultdict(list)
        self.unmapped = 0
        for p in sorted(apns_pushes(self.apns) + fcm_pushes(self.fcm), key=lambda p: p.arrived):
            fid = p.follow_up_id or self.by_token.get(p.token)
            if fid is None:
                self.unmapped += 1
            else:
                self.pushes[fid].append(p)

    def accepted_at(self, fid: str) -> list[Push]:
        return [p for p in self.pushes.get(fid, []) if p.accepted]

    def history(self, fid: str) -> list[str]:
        k, row = self.known.get(fid), self.rows.get(fid)
        kind = k.kind if k else "?"
        lines = [f"  follow-up {fid}  token {kind}"]
        if row is not None:
            m = row._mapping
            fields = [
                f"{name}={self.rel_dt(m[name]) if isinstance(m[name], datetime) else m[name]}"
                for name in (
                    "status",
                    "conversation_id",
                    "scheduled_for",
                    "sent_at",
                    "failed_at",
                    "failure_reason",
                    "claimed_by",
                    "claim_expires_at",
                    "retry_at",
                    "retrying_since",
                    "retry_count",
                    "held_at",
                )
                if name in m and (m[name] is not None or name == "status")
            ]
            lines.append("    row: " + " ".join(fields))
        else:
            lines.append("    row: not in the database")
        cancel = self.cancels.get(fid)
        if cancel is not None:
            note = " (commit answer lost: seen then)" if cancel.uncertain else ""
            lines.append(f"    cancel committed by {self.rel(cancel.at)}{note}")
        for a in self.attempts.get(fid, []):
            run = self.run_label.get(str(a.run_id), str(a.run_id)[:8])
            lines.append(
                f"    attempt {self.rel_dt(a.attempted_at)} {run} #{a.attempt} {a.outcome}"
                f" {a.reason or ''} {a.status_code or ''}".rstrip()
            )
        for msg in self.messages.get(fid, []):
            lines.append(f"    message timestamp {self.rel_dt(msg.timestamp)}")
        for p in self.pushes.get(fid, []):
            answer = f"{p.status} {p.reason or ''}" if p.status else f"unanswered ({p.reason})"
            cut = self.connection_cut(p)
            lines.append(
                f"    {p.service} request arrived {self.rel(p.arrived)} answered "
                f"{self.rel(p.answered)}: {answer.strip()} (connection {p.connection}"
                f"{f', cut by the fake {self.rel(cut)}' if cut is not None else ''})"
            )
        if k is not None and k.kind.endswith("dead"):
            lines.append("    (a dead token: the fake answers it 410 / UNREGISTERED)")
        return lines

    def connection_cut(self, p: Push) -> float | None:
        fake = self.apns if p.service == "apns" else self.fcm
        return fake.connections_cut.get(p.connection) if p.connection else None

    def context(self, at: float) -> str:
        """The runs alive and the faults going on at a moment."""
        runs = [
            f"run{x.index}"
            + (
                "(" + ",".join(signal.Signals(s).name for _, s in x.signals) + ")"
                if x.signals
                else ""
            )
            for x in self.runs
            if x.started <= at and (x.ended is None or x.ended >= at)
        ]
        faults = [f"{e.kind}[{e.detail}]" for e in self.episodes if e.start <= at <= e.end + 0.5]
        return f"    then: runs {' '.join(runs) or '-'}; faults {' '.join(faults) or '-'}"

    def verify(self) -> SoakResult:
        self.load()
        failures: list[str] = []
        check_s = self.params.cancel_check

        def report(title: str, items: list[tuple[str, list[str]]]) -> None:
            if not items:
                return
            failures.append(f"{title}: {len(items)}")
            for head, fids in items[:SHOW]:
                failures.append(f" {head}")
                for fid in fids:
                    failures.extend(self.history(fid))
            if len(items) > SHOW:
                failures.append(f" ... and {len(items) - SHOW} more")

        # 1. exactly once
        once: list[tuple[str, list[str]]] = []
        left = 0
        for fid, row in sorted(self.rows.items()):
            k = self.known.get(fid)
            msgs = len(self.messages.get(fid, []))
            accepted = self.accepted_at(fid)
            problem = None
            if fid in self.cancels or row.status == "cancelled":
                if row.status != "cancelled":
                    problem = f"cancelled by the app, now {row.status}"
                elif msgs:
                    problem = f"cancelled, yet {msgs} in-app message(s)"
            elif row.status == "scheduled":
                left += 1
                problem = "left scheduled after the drain"
            elif row.status == "sent":
                if msgs != 1:
                    problem = f"sent with {msgs} in-app messages"
                elif k is not None and k.token and not accepted:
                    problem = "sent, but no push to its token was ever accepted"
            elif row.status == "failed":
                dead = k is not None and k.kind.endswith("dead")
                if not dead or row.failure_reason not in DEVICE_REASONS:
                    problem = f"failed ({row.failure_reason}) although its token is not dead"
                    if row.failed_at is not None:
                        problem += "\n" + self.context(self.mono(row.failed_at))
                elif msgs:
                    problem = f"failed, yet {msgs} in-app message(s)"
            else:
                problem = f"status {row.status}"
            if problem:
                once.append((problem, [fid]))
        missing = set(self.known) - set(self.rows)
        once += [("written by the app, gone from the database", [fid]) for fid in missing]
        report("1. not delivered exactly once", once)

        # 2. no push after a cancel's window
        late: list[tuple[str, list[str]]] = []
        bound = check_s + self.config.late_slack
        for fid, cancel in sorted(self.cancels.items()):
            for p in self.pushes.get(fid, []):
                if p.arrived > cancel.at + bound:
                    late.append(
                        (
                            f"{p.service} request {p.arrived - cancel.at:.3f}s after the cancel "
                            f"(allowed {bound:.1f}s), answered "
                            f"{p.status or p.reason}\n{self.context(p.arrived)}",
                            [fid],
                        )
                    )
        report("2. pushes after the cancel window", late)

        # 3. in scheduled order, per conversation
        order: list[tuple[str, list[str]]] = []
        by_conversation: dict[str, list[Any]] = defaultdict(list)
        for row in self.rows.values():
            by_conversation[str(row.conversation_id)].append(row)
        for conversation, rows in sorted(by_conversation.items()):
            rows.sort(key=lambda x: (x.scheduled_for, str(x.id)))
            stamped = [
                (str(x.id), self.messages[str(x.id)][0].timestamp)
                for x in rows
                if self.messages.get(str(x.id))
            ]
            for (a, ta), (b, tb) in itertools.pairwise(stamped):
                if not ta < tb:
                    order.append(
                        (
                            f"conversation {conversation}: message of the later follow-up at "
                            f"{self.rel_dt(tb)}, the earlier one's at {self.rel_dt(ta)}\n"
                            f"{self.context(self.mono(tb))}",
                            [a, b],
                        )
                    )
            pushed = [
                (str(x.id), self.accepted_at(str(x.id))[0])
                for x in rows
                if self.accepted_at(str(x.id))
            ]
            for (a, pa), (b, pb) in itertools.pairwise(pushed):
                if not pa.arrived < pb.arrived:
                    order.append(
                        (
                            f"conversation {conversation}: the later follow-up's push accepted "
                            f"from {self.rel(pb.arrived)}, the earlier one's from "
                            f"{self.rel(pa.arrived)}\n{self.context(pb.arrived)}",
                            [a, b],
                        )
                    )
        report("3. out of scheduled order", order)

        # 4. repeated pushes
        repeats = lost = 0
        repeated: list[tuple[str, list[str]]] = []
        for fid in sorted(self.pushes):
            accepted = self.accepted_at(fid)
            if len(accepted) < 2:
                continue
            extra = len(accepted) - 1
            repeats += extra
            first = accepted[0]
            cut = self.connection_cut(first)
            answer_lost = (
                cut is not None and 0 <= cut - first.answered <= LOST_ANSWER_WINDOW
            ) or first.answered - first.arrived > PUSH_TIMEOUT_SECONDS - 0.25
            if answer_lost:
                lost += extra
            else:
                repeated.append((f"accepted {len(accepted)} times", [fid]))
        crashes = [x for x in self.runs if x.crashed]
        per_crash = SERVICES * self.params.concurrency + MAX_UNFINISHED
        allowed = len(crashes) * per_crash
        unexplained = repeats - lost
        if unexplained > allowed:
            head = (
                f"4. repeated pushes: {unexplained} beyond the {lost} whose answer the fake's "
                f"cut connection may have lost; allowed {allowed} ({len(crashes)} crashed "
                f"run(s) x {per_crash})"
            )
            report(head, repeated)

        # 5. how the runs ended
        ends: list[tuple[str, list[str]]] = []
        for run in self.runs:
            allowed_codes = {0, 1}
            if run.sent(signal.SIGTERM):
                allowed_codes |= {128 + signal.SIGTERM, -signal.SIGTERM}
            if run.sent(signal.SIGKILL):
                allowed_codes.add(-signal.SIGKILL)
            err = run.err.read_text(errors="replace")
            problem = None
            if run.hung:
                problem = f"hung: killed after {RUN_TIMEOUT_SECONDS:.0f}s or at the drain's end"
            elif run.returncode not in allowed_codes:
                problem = f"exit {run.returncode}"
            elif "Traceback" in err:
                problem = "a traceback"
            if problem:
                tail = "\n".join("    " + line for line in err.strip().splitlines()[-15:])
                ends.append((f"run{run.index} ({run.phase}, pid {run.pid}): {problem}\n{tail}", []))
        report("5. runs that did not end as they may", ends)
        for error in self.actor_errors:
            failures.append(f"the soak itself failed: {error}")

        kills = sum(x.sent(signal.SIGKILL) for x in self.runs)
        sigterms = sum(x.sent(signal.SIGTERM) for x in self.runs)
        late_count, order_count = len(late), len(order)
        fault_counts = dict(sorted(self.fault_counts.items()))
        figures: dict[str, Any] = {
            "follow_ups": len(self.known),
            "cancels": len(self.cancels),
            "runs": len(self.runs),
            "kills": kills,
            "sigterms": sigterms,
            "crashed_runs": len(crashes),
            "faults": fault_counts,
            "db_terminations": self.terminations,
            "terminated_backends": self.terminated_backends,
            "repeats": repeats,
            "lost_answer_repeats": lost,
            "late_pushes": late_count,
            "order_breaks": order_count,
            "left_scheduled": left,
            "not_once": len(once),
            "bad_ends": len(ends),
        }
        faults = ",".join(f"{k}:{v}" for k, v in fault_counts.items()) or "-"
        ok = not failures
        summary = (
            f"soak seed={self.seed} follow-ups={len(self.known)} runs={len(self.runs)} "
            f"kills={kills} sigterms={sigterms} faults={sum(self.fault_counts.values())} "
            f"({faults}) db_terminations={self.terminations} "
            f"({self.terminated_backends} backends) repeats={repeats} "
            f"(lost answers {lost}, allowed {allowed}) late_pushes={late_count} "
            f"order_breaks={order_count} left_scheduled={left} "
            f"not_once={len(once)} bad_run_ends={len(ends)} result={'PASS' if ok else 'FAIL'}"
        )
        return SoakResult(self.seed, ok, summary, failures, figures)

    def describe(self) -> str:
        p = self.params
        by_fate: dict[str, Counter[Any]] = defaultdict(Counter)
        for run in self.runs:
            fate = "+".join(signal.Signals(sig).name for _, sig in run.signals) or "no signal"
            if "Error: stopped by" in run.err.read_text(errors="replace"):
                fate += " (printed its stop line)"
            by_fate[fate][run.returncode] += 1
        codes = "; ".join(
            f"{fate}: {dict(sorted(c.items(), key=lambda kv: str(kv[0])))}"
            for fate, c in sorted(by_fate.items())
        )
        errors: Counter[str] = Counter()
        for run in self.runs:
            for line in run.err.read_text(errors="replace").splitlines():
                if line.startswith("Error:"):
                    errors[line[:70]] += 1
        statuses = Counter(row.status for row in self.rows.values())
        lines = [
            f"  settings: concurrency {p.concurrency}, batch {p.batch_size}, cancel check "
            f"{p.cancel_check}s, lease {LEASE_SECONDS}s, retry base {p.retry_base}s, "
            f"push timeout {PUSH_TIMEOUT_SECONDS}s, retry pause {RETRY_PAUSE}, give up after "
            f"{GIVE_UP_AFTER}; latency apns {p.apns_latency:.3f}s fcm {p.fcm_latency:.3f}s"
            f"; database settings: {self.config.database_settings or 'none'}",
            f"  follow-ups by status: {dict(sorted(statuses.items()))}; kinds: "
            f"{dict(sorted(Counter(k.kind for k in self.known.values()).items()))}; "
            f"cancels {len(self.cancels)}",
            f"  run exit codes by signals sent: {codes}; "
            f"starts skipped (max {self.config.max_runs} alive): {self.skipped_starts}",
            f"  requests: apns {len(self.apns.requests)} ({len(self.apns.accepted())} accepted), "
            f"fcm {len(self.fcm.requests)} ({len(self.fcm.accepted())} accepted), "
            f"unmapped {self.unmapped}",
            f"  drain: {self.expired} leases expired, {self.fast_forwarded} retry pauses ended",
        ]
        lines += [f"  {n} x {line}" for line, n in errors.most_common(8)]
        return "\n".join(lines)


def run_soak(config: SoakConfig) -> SoakResult:
    """The whole soak; prints as it goes through config.out."""
    out = config.out
    out(f"soak seed: {config.seed}")
    soak = Soak(config)
    workdir = Path(tempfile.mkdtemp(prefix="followups-soak-"))
    result: SoakResult | None = None
    try:
        soak.setup(workdir)
        out(
            f"  database {soak.db_name}; fault phase {config.seconds:.0f}s, drain at most "
            f"{config.drain_seconds:.0f}s; runs' output in {workdir}"
        )
        refused = soak.preflight()
        if refused is not None:
            out(f"FAIL: the tool refused the soak's settings: {refused}")
            return SoakResult(
                config.seed,
                False,
                f"soak seed={config.seed} result=FAIL: the tool refused the soak's settings",
                [f"preflight send-due: {refused}"],
                {},
            )
        soak.seed_rows()
        soak.fault_phase()
        soak.drain()
        result = soak.verify()
        out(soak.describe())
        for line in result.failures:
            out(line)
        if result.failures:
            out(f"replay: .venv/bin/python -m tests.soak --seed {config.seed}")
        out(result.summary)
        return result
    finally:
        keep = config.keep or result is None or not result.ok
        soak.teardown(keep=config.keep)
        if keep:
            out(f"  runs' output kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description="Seeded fault soak of send-due against PostgreSQL and the fake push services.",
    )
    parser.add_argument("--seed", type=int, default=None, help="replay this seed (default: new)")
    parser.add_argument("--seconds", type=float, default=90.0, help="fault phase length")
    parser.add_argument("--drain-seconds", type=float, default=90.0, help="drain phase bound")
    parser.add_argument(
        "--late-slack",
        type=float,
        default=0.5,
        help="seconds allowed beyond FOLLOWUPS_CANCEL_CHECK_SECONDS after a cancel",
    )
    parser.add_argument("--max-runs", type=int, default=4, help="send-due processes alive at once")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"use this database (default: a throw-away one on {PG_URL})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and run output")
    parser.add_argument(
        "--database-settings",
        default=None,
        metavar="NAME=VALUE,...",
        help="set on the database for every session first, as a managed database's owner "
        "might: e.g. lock_timeout=50ms,statement_timeout=3s",
    )
    args = parser.parse_args(argv)
    if args.database_settings and args.database_url:
        parser.error("--database-settings alters the database: only with the throw-away one")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    result = run_soak(
        SoakConfig(
            seed=seed,
            seconds=args.seconds,
            drain_seconds=args.drain_seconds,
            late_slack=args.late_slack,
            max_runs=args.max_runs,
            database_url=args.database_url,
            keep=args.keep,
            database_settings=args.database_settings,
            out=lambda line: print(line, flush=True),
        )
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
