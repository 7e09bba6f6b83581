"""Throughput benchmark of `followups send-due` against PostgreSQL and a fake APNs.

    python bench/run.py [--quick] [--scenarios backlog,idle,growth,reference,concurrent,peers]
                        [--latency-ms 20] [--env FOLLOWUPS_PUSH_CONCURRENCY=32] [--profile]
                        [--gating on|off|both] [--no-gating] [--goaway-after N]
                        [--reject-every K] [--backlog-size N] [--profile-size N]
    python bench/run.py --scenarios peers [--peers-size N] [--peers-timeout S]
                        [--peers-gating on|off|both]

Run from the repository root with the project's venv (it imports followup_cli and
tests.fakes.pki). See bench/README.md for what each scenario measures and how to read
the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

DEFAULT_SCENARIOS = ("backlog", "idle", "growth", "reference", "concurrent", "peers")
ALL_SCENARIOS = (*DEFAULT_SCENARIOS, "profile")
KEY_ID = "BENCHKEY01"
TEAM_ID = "BENCHTEAM1"
TOPIC = "com.example.parent"
TOKEN_SHARE = 0.9
DB_PREFIX = "followups_bench_"

TARGET_RATE = 1000.0  # deliveries/s
TARGET_RSS_MB = 200.0
TARGET_IDLE_S = 0.35
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass
class Sizes:
    backlog: int
    history: int
    growth: tuple[int, ...]
    reference: int
    concurrent: int
    processes: int
    idle_runs: int
    future: int  # scheduled-but-not-due rows present in the idle database
    profile: int
    peers: int  # device tokens each contender of the peers scenario pushes to


FULL = Sizes(
    100_000, 1_000_000, (1_000, 10_000, 100_000), 2_000, 100_000, 8, 9, 1_000, 20_000, 10_000
)
QUICK = Sizes(5_000, 100_000, (500, 2_000, 5_000), 300, 5_000, 8, 5, 1_000, 5_000, 2_000)
PEERS = BENCH / "peers"
PEERS_VENV = PEERS / ".venv"


@dataclass
class Row:
    scenario: str
    n: int | None
    seconds: float | None
    rate: float | None
    rss_mb: float | None
    fake_share: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class ProcResult:
    wall: float
    rc: int
    maxrss_mb: float
    cpu_s: float
    stdout: str
    stderr: str
    killed: bool = False  # by run_measured's timeout


@dataclass
class PeerResult:
    name: str
    row: Row
    sent: int  # answered 200, by the client's count
    push_rate: float  # sent / the push window (first send to last answer, or the timeout)
    finished: bool


class PeerSetupError(Exception):
    """A peer client could not be installed (its output in the message)."""


# -- processes ---------------------------------------------------------------------------


def run_measured(
    cmds: list[list[str]], env: dict[str, str], workdir: Path, timeout: float | None = None
) -> list[ProcResult]:
    """Start every command at once; wall time per process from the common start to its
    exit; peak RSS and CPU from that process's own rusage (os.wait4). With `timeout`, a
    process (and whatever it started) still running that many seconds after the start is
    killed (ProcResult.killed)."""
    procs = []
    killed: set[int] = set()

    def kill(pid: int) -> None:
        killed.add(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    t0 = time.perf_counter()
    for i, cmd in enumerate(cmds):
        out = open(workdir / f"p{i}.out", "w+b")  # noqa: SIM115
        err = open(workdir / f"p{i}.err", "w+b")  # noqa: SIM115
        tfile = workdir / f"p{i}.time"
        if GNU_TIME:
            # Peak RSS from GNU time, not from our own wait4: a child spawned straight from
            # this (large) process inherits our high-water mark in ru_maxrss at exec.
            cmd = [GNU_TIME, "-f", "%M %U %S", "-o", str(tfile), *cmd]
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=err, cwd=ROOT, start_new_session=timeout is not None
        )
        timer = None if timeout is None else threading.Timer(timeout, kill, (proc.pid,))
        if timer is not None:
            timer.start()
        procs.append((proc, out, err, tfile, timer))
    results = []
    for p, out, err, tfile, timer in procs:
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        if timer is not None:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        maxrss_mb, cpu_s = ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime
        if GNU_TIME:
            try:
                kb, user, sys_ = tfile.read_text().strip().splitlines()[-1].split()
                maxrss_mb, cpu_s = int(kb) / 1024.0, float(user) + float(sys_)
            except (OSError, ValueError, IndexError):
                pass
        out.seek(0)
        err.seek(0)
        results.append(
            ProcResult(
                wall=wall,
                rc=p.returncode,
                maxrss_mb=maxrss_mb,
                cpu_s=cpu_s,
                stdout=out.read().decode("utf-8", "replace"),
                stderr=err.read().decode("utf-8", "replace"),
                killed=p.pid in killed,
            )
        )
        out.close()
        err.close()
    return results


def check_rc(results: list[ProcResult], what: str) -> None:
    for r in results:
        if r.rc != 0:
            raise SystemExit(
                f"{what} exited {r.rc}\n--- stdout\n{r.stdout[-3000:]}"
                f"\n--- stderr\n{r.stderr[-3000:]}"
            )


class PgCpu:
    """CPU seconds used by the local PostgreSQL server, read from /proc: live postgres
    processes plus what the postmaster reaped from exited backends (cutime/cstime)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")

    def total(self) -> float | None:
        try:
            ticks = 0
            found = False
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                if comm != "postgres":
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                # fields[0] is state (field 3); utime=14, stime=15, cutime=16, cstime=17
                utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
                ticks += utime + stime
                ppid = int(fields[1])
                if not _is_postgres(ppid):
                    ticks += cutime + cstime  # the postmaster: its reaped backends
                found = True
            return ticks / self.tick if found else None
        except OSError:
            return None


def _is_postgres(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "postgres"
    except OSError:
        return False


class FakeAPNs:
    """bench/fake_apns.mjs as a child process; stats via SIGUSR2 / SIGTERM. `rules` are
    its extra options (--no-gating, --goaway-after N, --reject-every K)."""

    def __init__(self, pki: dict[str, str], latency_ms: float, rules: list[str]) -> None:
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node (v18+) is needed for the fake APNs")
        self.proc = subprocess.Popen(
            [
                node,
                str(BENCH / "fake_apns.mjs"),
                "--port",
                "0",
                "--latency-ms",
                str(latency_ms),
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
                *rules,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.lines.get(timeout=10)
        if not first.startswith("ready "):
            raise SystemExit(f"fake APNs did not start: {first!r}")
        self.port = int(first.split()[1])
        self.url = f"https://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def stats(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGUSR2)
        return json.loads(self.lines.get(timeout=10))

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        final = json.loads(self.lines.get(timeout=10))
        self.proc.wait(timeout=10)
        return final


# -- database ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.tmp = Path(tempfile.mkdtemp(prefix="followups-bench-"))
        self.pki = make_pki(self.tmp)
        self.pg_base = args.pg_url.rstrip("/")
        self.pgcpu = PgCpu()
        self.rows: list[Row] = []
        self.extra: list[str] = []
        self.failures: list[str] = []
        self.backlog_result: Row | None = None
        self.rand = random.Random(20240601)
        bindir = Path(sys.executable).parent
        exe = bindir / "followups"
        self.followups = [str(exe)] if exe.exists() else [sys.executable, "-m", "followup_cli"]
        self.user_env = dict(kv.split("=", 1) for kv in args.env)

    # databases

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(f"{self.pg_base}/postgres", autocommit=True)

    def fresh_db(self, name: str) -> str:
        # The pid keeps two bench runs at once (two terminals, CI) from dropping each
        # other's databases; CPU contention would still spoil both sets of numbers.
        dbname = f"{DB_PREFIX}{os.getpid()}_{name}"
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = f"{self.pg_base}/{dbname}"
        from followup_cli.db import Database
        from followup_cli.migrate import upgrade

        db = Database(sa_url(url))
        try:
            upgrade(db)
        finally:
            db.close()
        return url

    def drop_db(self, url: str) -> None:
        if self.args.keep_databases:
            return
        dbname = url.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def drop_own_databases(self) -> None:
        """What a failed scenario left behind (this run's databases only)."""
        with self.admin() as conn:
            names = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (f"{DB_PREFIX}{os.getpid()}\\_%",),
            ).fetchall()
            for (dbname,) in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def seed_due(self, url: str, n: int, tokens: Sequence[str] | None = None) -> int:
        """n due follow-ups (90% with a valid device token), 1-3 per conversation, due
        within the last hour. With `tokens` (n of them), row i has tokens[i]: every row has
        a token. Returns how many have a token."""
        if tokens is not None and len(tokens) != n:
            raise ValueError(f"seed_due: {len(tokens)} tokens for {n} rows")
        now = datetime.now(UTC)
        with_token = 0
        rand = self.rand
        lines: list[str] = []
        i = 0
        while i < n:
            conv = _uuid(rand)
            user = f"parent-{rand.randrange(10**9)}"
            token = f"{rand.getrandbits(256):064x}"
            for _ in range(min(rand.randint(1, 3), n - i)):
                has_token = rand.random() < TOKEN_SHARE
                if tokens is not None:
                    has_token, token = True, tokens[i]
                with_token += has_token
                when = now - timedelta(seconds=rand.uniform(1, 3600))
                lines.append(
                    "\t".join(
                        (
                            _uuid(rand),
                            conv,
                            user,
                            when.isoformat(),
                            "urgent" if rand.random() < 0.1 else "routine",
                            "How is Maya's fever today? Reply here if anything changed.",
                            "How is Maya's fever today?",
                            "scheduled",
                            "Maya",
                            "4",
                            token if has_token else r"\N",
                            "0",
                            "1",
                            "0",
                            (when - timedelta(hours=1)).isoformat(),
                            "Dr. Chen",
                            r"\N",
                        )
                    )
                )
                i += 1
        self._copy(url, lines)
        self._analyze(url)
        return with_token

    def seed_history(self, url: str, n: int, future: int) -> None:
        """n sent/cancelled rows (80/20) spread over the past year, and `future`
        scheduled rows due tomorrow or later."""
        now = datetime.now(UTC)
        rand = self.rand
        chunk: list[str] = []
        for i in range(n + future):
            if i < n:
                when = now - timedelta(seconds=rand.uniform(3600, 365 * 86400))
                sent = rand.random() < 0.8
                status, sent_at = ("sent", when.isoformat()) if sent else ("cancelled", r"\N")
            else:
                when = now + timedelta(seconds=rand.uniform(86400, 30 * 86400))
                status, sent_at = "scheduled", r"\N"
            chunk.append(
                "\t".join(
                    (
                        _uuid(rand),
                        _uuid(rand),
                        "parent-1",
                        when.isoformat(),
                        "routine",
                        "How is Maya's fever today?",
                        "How is Maya's fever today?",
                        status,
                        "Maya",
                        "4",
                        "ab" * 32,
                        "0",
                        "1",
                        "0",
                        (when - timedelta(hours=1)).isoformat(),
                        "Dr. Chen",
                        sent_at,
                    )
                )
            )
            if len(chunk) >= 100_000:
                self._copy(url, chunk)
                chunk = []
        if chunk:
            self._copy(url, chunk)
        self._analyze(url)

    def _copy(self, url: str, lines: list[str]) -> None:
        cols = (
            "id, conversation_id, user_id, scheduled_for, urgency, display_text, "
            "original_message, status, child_name, child_age, device_token, follow_up_days, "
            "follow_up_hours, follow_up_minutes, created_at, provider_name, sent_at"
        )
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY follow_up_requests ({cols}) FROM STDIN") as copy:
                step = 20_000
                for k in range(0, len(lines), step):
                    copy.write("\n".join(lines[k : k + step]) + "\n")
            conn.commit()

    def _analyze(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE follow_up_requests")
            conn.execute("VACUUM ANALYZE follow_up_messages")

    def verify(
        self, url: str, n: int, with_token: int, accepted: int, unregistered: int = 0
    ) -> list[str]:
        """Every seeded due row sent, exactly one in-app message each, one push per token;
        with --reject-every, the rows the fake answered 410 are `failed` (Unregistered)
        instead, without a message."""
        with psycopg.connect(url) as conn:
            statuses: dict[str, int] = dict(
                conn.execute(
                    "SELECT coalesce(status || ' ' || failure_reason, status), count(*) "
                    "FROM follow_up_requests WHERE scheduled_for <= now() GROUP BY 1"
                ).fetchall()
            )
            bad_msgs = one_value(
                conn,
                "SELECT count(*) FROM follow_up_requests r WHERE r.status = 'sent' AND "
                "(SELECT count(*) FROM follow_up_messages m WHERE m.follow_up_id = r.id) <> 1",
            )
            msgs = one_value(conn, "SELECT count(*) FROM follow_up_messages")
        sent = statuses.get("sent", 0)
        expected = {"sent": n - unregistered}
        if unregistered:
            expected["failed Unregistered"] = unregistered
        problems = []
        if statuses != expected:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            problems.append(f"due rows: {shown} (expected {n - unregistered} sent)")
        if bad_msgs or msgs != sent:
            problems.append(
                f"{msgs} messages for {sent} sent rows, {bad_msgs} rows without exactly one"
            )
        if accepted != with_token - unregistered:
            problems.append(
                f"fake APNs accepted {accepted} pushes, {with_token - unregistered} expected"
            )
        return problems

    # commands

    def env(self, url: str, fake: FakeAPNs) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUPS_")}
        env.update(
            {
                "FOLLOWUPS_DATABASE_URL": sa_url(url),
                "FOLLOWUPS_PUSH": "apns",
                "FOLLOWUPS_APNS_KEY_FILE": self.pki["auth_key"],
                "FOLLOWUPS_APNS_KEY_ID": KEY_ID,
                "FOLLOWUPS_APNS_TEAM_ID": TEAM_ID,
                "FOLLOWUPS_APNS_TOPIC": TOPIC,
                "FOLLOWUPS_APNS_URL": fake.url,
                "FOLLOWUPS_APNS_CA_FILE": self.pki["ca"],
                "FOLLOWUPS_LOG_FORMAT": "json",
            }
        )
        env.update(self.user_env)
        return env

    def send_due_cmd(self) -> list[str]:
        return [*self.followups, "--quiet", "send-due"]

    def fake(self, gating: bool | None = None, *, all_rules: bool = True) -> FakeAPNs:
        """A fresh fake APNs with this run's rules (gating as --gating unless given; the
        GOAWAY and 410 rules only with all_rules)."""
        rules = []
        if not (self.args.gating != "off" if gating is None else gating):
            rules.append("--no-gating")
        if all_rules and self.args.goaway_after:
            rules += ["--goaway-after", str(self.args.goaway_after)]
        if all_rules and self.args.reject_every:
            rules += ["--reject-every", str(self.args.reject_every)]
        return FakeAPNs(self.pki, self.args.latency_ms, rules)

    def timed_delivery(
        self,
        name: str,
        n: int,
        processes: int = 1,
        label: str | None = None,
        gating: bool | None = None,
        tokens: Sequence[str] | None = None,
    ) -> Row:
        """Fresh database with n due rows (row i with tokens[i] when given, see seed_due);
        `processes` send-due at once; verified."""
        url = self.fresh_db(name)
        with_token = self.seed_due(url, n, tokens)
        fake = self.fake(gating)
        try:
            before, pg0 = fake.stats(), self.pgcpu.total()
            work = self.tmp / name
            work.mkdir(exist_ok=True)
            results = run_measured([self.send_due_cmd()] * processes, self.env(url, fake), work)
            after, pg1 = fake.stats(), self.pgcpu.total()
        finally:
            final = fake.stop()
        wall = max(r.wall for r in results)
        failed_procs = [r for r in results if r.rc != 0]
        accepted = after["accepted"] - before["accepted"]
        unregistered = final["rejected"].get("Unregistered", 0)
        problems = self.verify(url, n, with_token, accepted, unregistered)
        self.drop_db(url)
        cpu = sum(r.cpu_s for r in results)
        rate = n / wall
        notes = [f"client CPU {1000 * cpu / n:.2f} ms/delivery ({cpu / wall:.2f} cores)"]
        if pg0 is not None and pg1 is not None:
            notes.append(f"PG {(pg1 - pg0) / wall:.2f} cores")
        notes.append(fake_rules_note(final))
        if processes > 1:
            notes.append(
                f"{processes} processes; per-process wall "
                f"{min(r.wall for r in results):.1f}-{wall:.1f}s"
            )
        if failed_procs:
            first = failed_procs[0]
            last_err = (first.stderr.strip().splitlines() or ["?"])[-1][:300]
            notes.append(
                f"{len(failed_procs)} of {processes} send-due exited {first.rc}: {last_err}"
            )
            self.failures.append(
                f"{label or name}: send-due stdout/stderr of a failed process:\n"
                f"{first.stdout[-2000:]}\n{first.stderr[-4000:]}"
            )
        errors = {
            k: v for k in ("session_errors", "stream_errors", "tls_errors") if (v := final.get(k))
        }
        if errors or final.get("rejected"):
            notes.append(f"fake saw: rejected={final.get('rejected')} {errors}")
        if final.get("repeated_collapse_ids"):
            notes.append(f"PUSHED TWICE: {final['repeated_collapse_ids']} notifications")
        notes.append("verified" if not problems else "VERIFY FAILED: " + "; ".join(problems))
        return Row(
            label or name,
            n,
            wall,
            rate,
            max(r.maxrss_mb for r in results),
            (after["cpu_s"] - before["cpu_s"]) / wall,
            notes,
        )

    # scenarios

    def backlog(self) -> None:
        n = self.args.backlog_size or self.sizes.backlog
        if self.args.gating == "both":
            row = self.timed_delivery("backlog", n, label="backlog (gated)", gating=True)
            ungated = self.timed_delivery(
                "backlog_ungated", n, label="backlog (no gating)", gating=False
            )
        else:
            row, ungated = self.timed_delivery("backlog", n), None
        for r in (row, ungated):
            if r is None:
                continue
            ok_rate = r.rate is not None and r.rate >= TARGET_RATE
            ok_rss = r.rss_mb is not None and r.rss_mb < TARGET_RSS_MB
            r.notes.insert(
                0,
                f"target >={TARGET_RATE:.0f}/s {'OK' if ok_rate else 'MISSED'}, "
                f"<{TARGET_RSS_MB:.0f} MB {'OK' if ok_rss else 'MISSED'}",
            )
            self.rows.append(r)
        if ungated is not None and row.rate and ungated.rate:
            ratio = row.rate / ungated.rate
            ungated.notes.insert(0, f"gated = {ratio:.2f}x this")
            self.extra.append(
                f"gating: backlog with APNs' stream gating {row.rate:,.0f}/s, without "
                f"{ungated.rate:,.0f}/s (gated/ungated = {ratio:.2f}, same run)"
            )
        self.backlog_result = row

    def concurrent(self) -> None:
        p = self.sizes.processes
        row = self.timed_delivery("concurrent", self.sizes.concurrent, p, f"concurrent x{p}")
        row.notes.insert(
            0,
            f"target >={TARGET_RATE:.0f}/s {'OK' if (row.rate or 0) >= TARGET_RATE else 'MISSED'}",
        )
        self.rows.append(row)

    def growth(self) -> None:
        rows = []
        for n in self.sizes.growth:
            if self.backlog_result is not None and n == self.backlog_result.n:
                b = self.backlog_result
                rows.append(
                    Row(
                        f"growth {n}",
                        n,
                        b.seconds,
                        b.rate,
                        b.rss_mb,
                        b.fake_share,
                        ["= the backlog run"],
                    )
                )
                continue
            rows.append(self.timed_delivery(f"growth_{n}", n, label=f"growth {n}"))
        small, big = rows[0], rows[-1]
        assert small.seconds and big.seconds and small.n and big.n
        # Cost per extra follow-up between the smallest and largest N, and the fixed part.
        per = (big.seconds - small.seconds) / (big.n - small.n)
        fixed = small.seconds - per * small.n
        for r in rows:
            assert r.seconds and r.n
            predicted = fixed + per * r.n
            r.notes.insert(
                0, f"linear fit {predicted:.1f}s ({(r.seconds / predicted - 1) * 100:+.0f}%)"
            )
            self.rows.append(r)
        self.extra.append(
            f"growth: time ~= {fixed:.2f}s + {per * 1000:.3f} ms x N "
            f"(fit through N={small.n} and N={big.n}; middle points show the deviation)"
        )

    def reference(self) -> None:
        n = self.sizes.reference
        url = self.fresh_db("reference")
        with_token = self.seed_due(url, n)
        fake = self.fake()
        try:
            before, pg0 = fake.stats(), self.pgcpu.total()
            work = self.tmp / "reference"
            work.mkdir(exist_ok=True)
            cmd = [
                sys.executable,
                str(BENCH / "reference_loop.py"),
                "--database-url",
                url,
                "--apns-url",
                fake.url,
                "--ca-file",
                self.pki["ca"],
                "--key-file",
                self.pki["auth_key"],
                "--key-id",
                KEY_ID,
                "--team-id",
                TEAM_ID,
                "--topic",
                TOPIC,
            ]
            results = run_measured([cmd], dict(os.environ), work)
            after, pg1 = fake.stats(), self.pgcpu.total()
        finally:
            final = fake.stop()
        check_rc(results, "reference loop")
        r = results[0]
        accepted = after["accepted"] - before["accepted"]
        unregistered = final["rejected"].get("Unregistered", 0)
        problems = self.verify(url, n, with_token, accepted, unregistered)
        self.drop_db(url)
        rate = n / r.wall
        notes = [
            f"original loop; {final['connections']} TLS connections for {accepted} pushes",
            f"client CPU {1000 * r.cpu_s / n:.2f} ms/delivery",
        ]
        if pg0 is not None and pg1 is not None:
            notes.append(f"PG {(pg1 - pg0) / r.wall:.2f} cores")
        if self.backlog_result is not None and self.backlog_result.rate:
            ratio = self.backlog_result.rate / rate
            notes.insert(0, f"ours (backlog) = {ratio:.1f}x this")
            self.extra.append(
                f"reference: {rate:.1f} deliveries/s -> 100,000 would take "
                f"{100_000 / rate / 60:.0f} min; send-due backlog is {ratio:.1f}x faster"
            )
        notes.append("verified" if not problems else "VERIFY FAILED: " + "; ".join(problems))
        self.rows.append(
            Row(
                "reference",
                n,
                r.wall,
                rate,
                r.maxrss_mb,
                (after["cpu_s"] - before["cpu_s"]) / r.wall,
                notes,
            )
        )

    def idle(self) -> None:
        url = self.fresh_db("idle")
        self.seed_history(url, 0, self.sizes.future)
        fake = self.fake()
        try:
            floor = self._median_wall([[sys.executable, "-c", "pass"]], os.environ, "floor", 5)
            self.extra.append(f"idle: bare `python -c pass` takes {floor[0]:.3f}s on this machine")
            self._idle_row(url, fake, 0)
            self.seed_history(url, self.sizes.history, 0)
            self._idle_row(url, fake, self.sizes.history)
            self._stats_row(url, fake, self.sizes.history)
        finally:
            fake.stop()
        with psycopg.connect(url) as conn:
            still = one_value(
                conn, "SELECT count(*) FROM follow_up_requests WHERE status = 'scheduled'"
            )
        if still != self.sizes.future:
            self.extra.append(
                f"idle: VERIFY FAILED, {still} future rows left of {self.sizes.future}"
            )
        self.drop_db(url)

    def _median_wall(
        self, cmd: list[list[str]], env: Any, name: str, runs: int
    ) -> tuple[float, list[ProcResult]]:
        work = self.tmp / name
        work.mkdir(exist_ok=True)
        all_results = []
        for _ in range(runs):
            res = run_measured(cmd, dict(env), work)
            check_rc(res, name)
            all_results.append(res[0])
        return statistics.median(r.wall for r in all_results), all_results

    def _stats_row(self, url: str, fake: FakeAPNs, history: int) -> None:
        """`followups stats --since 24h --json` over the history table (target < 1 s)."""
        cmd = [sys.executable, "-m", "followup_cli", "stats", "--since", "24h", "--json"]
        env = self.env(url, fake)
        self._median_wall([cmd], env, "stats_warm", 1)
        median, results = self._median_wall([cmd], env, "stats", 5)
        walls = sorted(r.wall for r in results)
        # The queries alone, in this process (start-up and imports excluded).
        from followup_cli.db import Database
        from followup_cli.monitoring import gather

        db = Database(sa_url(url))
        timings = []
        for _ in range(5):
            t0 = time.perf_counter()
            gather(db, timedelta(hours=24))
            timings.append(time.perf_counter() - t0)
        db.close()
        ok = "OK" if median < 1.0 else "MISSED"
        self.rows.append(
            Row(
                f"stats --since 24h ({history:,} rows)",
                None,
                median,
                None,
                max(r.maxrss_mb for r in results),
                None,
                [
                    f"target <1s {ok}",
                    f"median of {len(walls)} (min {walls[0]:.3f}, max {walls[-1]:.3f})",
                    "whole process",
                    f"queries alone {1000 * statistics.median(timings):.0f} ms",
                ],
            )
        )

    def _idle_row(self, url: str, fake: FakeAPNs, history: int) -> None:
        env = self.env(url, fake)
        # One warm-up run (page cache, .pyc), then the measured ones.
        self._median_wall([self.send_due_cmd()], env, f"idle_warm_{history}", 1)
        before = fake.stats()
        median, results = self._median_wall(
            [self.send_due_cmd()], env, f"idle_{history}", self.sizes.idle_runs
        )
        after = fake.stats()
        walls = sorted(r.wall for r in results)
        plan_note, plan_text = self.explain(url)
        self.extra.append(
            f"EXPLAIN of the claim statement with {history:,} history rows:\n{plan_text}"
        )
        notes = [
            f"target <={TARGET_IDLE_S}s {'OK' if median <= TARGET_IDLE_S else 'MISSED'}",
            f"median of {len(walls)} (min {walls[0]:.3f}, max {walls[-1]:.3f})",
            f"CPU {statistics.median(r.cpu_s for r in results):.3f}s",
            plan_note,
        ]
        if after["requests"] != before["requests"]:
            notes.append(f"UNEXPECTED: {after['requests'] - before['requests']} pushes")
        self.rows.append(
            Row(
                f"idle ({history:,} history)",
                0,
                median,
                None,
                max(r.maxrss_mb for r in results),
                (after["cpu_s"] - before["cpu_s"]) / sum(r.wall for r in results),
                notes,
            )
        )

    def explain(self, url: str) -> tuple[str, str]:
        """EXPLAIN (ANALYZE, BUFFERS) of the exact UPDATE that Repository.claim_due sends,
        captured from SQLAlchemy and rolled back, plus the brief's plain SELECT."""
        from sqlalchemy import event

        from followup_cli.db import Database

        db = Database(sa_url(url))
        captured: list[tuple[str, Any]] = []

        def grab(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            if statement.lstrip().upper().startswith("UPDATE FOLLOW_UP_REQUESTS"):
                captured.append((statement, params))

        event.listen(db.engine, "before_cursor_execute", grab)
        now = datetime.now(UTC)

        class _Rollback(Exception):
            pass

        try:
            with db.transaction() as repo:
                repo.claim_due("bench-explain", now, now, now + timedelta(seconds=120), 500)
                raise _Rollback
        except _Rollback:
            pass
        event.remove(db.engine, "before_cursor_execute", grab)
        statement, params = captured[0]
        lines: list[str] = []
        with db.engine.connect() as conn:
            for title, sql, p in (
                ("Repository.claim_due (captured UPDATE ... RETURNING)", statement, params),
                (
                    "plain candidate SELECT",
                    "SELECT id FROM follow_up_requests WHERE status = 'scheduled' "
                    "AND scheduled_for <= now() "
                    "AND (claim_expires_at IS NULL OR claim_expires_at <= now()) "
                    "ORDER BY scheduled_for, id LIMIT 500 FOR UPDATE SKIP LOCKED",
                    None,
                ),
            ):
                trans = conn.begin()
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", p).scalars().all()
                trans.rollback()
                lines.append(f"  -- {title}")
                lines.extend(f"    {line}" for line in plan)
        db.close()
        text = "\n".join(lines)
        # The candidate scan: the first node mentioning the due index.
        at = next((i for i, ln in enumerate(lines) if "ix_follow_up_requests_due" in ln), None)
        if at is None:
            return "claim scan: NOT on ix_follow_up_requests_due (see plan)", text
        scan = lines[at].strip()
        cost = scan[scan.find("cost=") :].split()[0] if "cost=" in scan else "?"
        kind = scan.split(" on ")[0].replace("->", "").strip()
        buffers = next(
            (ln.strip() for ln in lines[at + 1 : at + 5] if "Buffers:" in ln), "Buffers: ?"
        )
        return f"claim scan: {kind}, est. {cost}, actual {buffers.lower()}", text

    def fake_ceiling(self) -> None:
        """The fake's own capacity: a Node client with many streams, no DB, no Python. With
        the run's stream gating, without its GOAWAY and 410 rules (the load generator
        does not reconnect)."""
        import jwt

        fake = self.fake(all_rules=False)
        try:
            token = jwt.encode(
                {"iss": TEAM_ID, "iat": int(time.time())},
                Path(self.pki["auth_key"]).read_text(),
                algorithm="ES256",
                headers={"kid": KEY_ID},
            )
            before = fake.stats()
            out = subprocess.run(
                [
                    "node",
                    str(BENCH / "apns_load.mjs"),
                    "--url",
                    fake.url,
                    "--ca",
                    self.pki["ca"],
                    "--jwt",
                    token,
                    "--topic",
                    TOPIC,
                    "--connections",
                    "8",
                    "--streams",
                    "100",
                    "--seconds",
                    "4",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            after = fake.stats()
        finally:
            fake.stop()
        load = json.loads(out.stdout.strip().splitlines()[-1])
        fake_cpu = after["cpu_s"] - before["cpu_s"]
        served = after["accepted"] - before["accepted"]
        self.rows.append(
            Row(
                "fake APNs ceiling",
                served,
                load["seconds"],
                load["rate"],
                None,
                fake_cpu / load["seconds"],
                [
                    "Node client, 8 conns x 100 streams, 4 s incl. warm-up; "
                    f"{load['failed']} non-200",
                    f"fake {1000 * fake_cpu / max(served, 1):.3f} ms CPU/request "
                    f"(~{served / max(fake_cpu, 1e-9):,.0f}/s per core)",
                    f"client {load['client_cpu_s'] / load['seconds']:.2f} cores",
                    fake_rules_note(after),
                ],
            )
        )

    def profile(self) -> None:
        """One backlog run under py-spy (samples of the thread holding the GIL: Python's
        CPU, waits left out), with its CPU by stage (bench/breakdown.py) and
        PostgreSQL's CPU per delivery."""
        pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if pyspy is None:
            self.extra.append("profile: py-spy not installed (pip install py-spy); skipped")
            return
        n = self.args.profile_size or self.sizes.profile
        url = self.fresh_db("profile")
        self.seed_due(url, n)
        fake = self.fake()
        raw = self.tmp / "profile.txt"
        try:
            work = self.tmp / "profile"
            work.mkdir(exist_ok=True)
            cmd = [
                pyspy,
                "record",
                "-r",
                "250",
                "--gil",
                "--full-filenames",
                "--format",
                "raw",
                "-o",
                str(raw),
                "--",
                *self.send_due_cmd(),
            ]
            pg0 = self.pgcpu.total()
            res = run_measured([cmd], self.env(url, fake), work)
            pg1 = self.pgcpu.total()
        finally:
            fake.stop()
        check_rc(res, "py-spy record")
        self.drop_db(url)
        self.extra.append(summarize_profile(raw, n, res[0].wall))
        from breakdown import render as stage_table

        cpu = res[0].cpu_s
        pg = (
            f"; PostgreSQL {1000 * (pg1 - pg0) / n:.3f} ms CPU per delivery"
            if pg0 is not None and pg1 is not None
            else ""
        )
        self.extra.append(
            f"profile by stage ({n:,} deliveries, client {1000 * cpu / n:.3f} ms CPU per "
            f"delivery under the profiler{pg}):\n" + stage_table(raw, n, cpu)
        )
        if self.args.keep_profile:
            dest = Path(self.args.keep_profile)
            shutil.copy(raw, dest)
            self.extra.append(f"profile: raw collapsed stacks saved to {dest}")

    def peers(self) -> None:
        """aioapns and @parse/node-apn pushing (no database) to the same device tokens that
        one send-due then delivers follow-ups to end to end, each contender against a fresh
        fake with the same rules; rows, and the ratios in one summary line per gating."""
        n = self.args.peers_size or self.sizes.peers
        tokens = [f"{self.rand.getrandbits(256):064x}" for _ in range(n)]
        token_file = self.tmp / "peers_tokens.txt"
        token_file.write_text("\n".join(tokens) + "\n")
        contenders: list[tuple[str, list[str] | None, str]] = []
        for name, setup in (
            (f"aioapns {pinned_aioapns()}", ensure_aioapns),
            (f"@parse/node-apn {pinned_node_apn()}", ensure_node_apn),
        ):
            try:
                contenders.append((name, setup(), ""))
            except PeerSetupError as e:
                contenders.append((name, None, str(e)))
        mode = self.args.peers_gating or self.args.gating
        gatings = {"on": (True,), "off": (False,), "both": (True, False)}[mode]
        for gating in gatings:
            tag = "" if len(gatings) == 1 else " (gated)" if gating else " (no gating)"
            results = []
            for name, cmd, problem in contenders:
                if cmd is None:
                    self.rows.append(Row(f"peers: {name}{tag}", n, None, None, None, None, []))
                    self.rows[-1].notes.append(f"NOT RUN: {problem[-300:]}")
                    self.failures.append(f"peers: {name} could not be set up:\n{problem}")
                    continue
                results.append(self.peer_run(f"peers: {name}{tag}", name, cmd, token_file, gating))
            ours = self.timed_delivery(
                "peers" if gating else "peers_ungated",
                n,
                label=f"peers: followups send-due{tag}",
                gating=gating,
                tokens=tokens,
            )
            ours.notes.insert(
                0,
                "end to end from process start, with PostgreSQL (claim, push, record); "
                "every row has a token: deliveries = pushes",
            )
            self.rows.extend(r.row for r in results)
            self.rows.append(ours)
            self.extra.append(self.peers_summary(ours, results, n, gating))

    def peer_run(
        self, label: str, name: str, cmd: list[str], token_file: Path, gating: bool
    ) -> PeerResult:
        """One peer's driver against a fresh fake: its own JSON line plus what the process
        and the fake say."""
        timeout = self.args.peers_timeout
        fake = self.fake(gating)
        work = self.tmp / ("peer_" + "".join(c if c.isalnum() else "_" for c in label))
        work.mkdir(exist_ok=True)
        full = [
            *cmd,
            "--url",
            fake.url,
            "--ca",
            self.pki["ca"],
            "--key",
            self.pki["auth_key"],
            "--key-id",
            KEY_ID,
            "--team-id",
            TEAM_ID,
            "--topic",
            TOPIC,
            "--tokens",
            str(token_file),
            "--timeout",
            str(timeout),
        ]
        try:
            before = fake.stats()
            # The driver's own timeout ends it; this one is for a driver that cannot.
            r = run_measured([full], dict(os.environ), work, timeout=timeout + 30)[0]
            after = fake.stats()
        finally:
            final = fake.stop()
        n = len(token_file.read_text().split())
        out: dict[str, Any] | None = None
        for line in reversed(r.stdout.strip().splitlines()):
            try:
                out = json.loads(line)
                break
            except ValueError:
                continue
        accepted = after["accepted"] - before["accepted"]
        notes = ["push only, no database; seconds = whole process from spawn"]
        if out is None:
            sent, push_s, finished = 0, r.wall, False
            notes.append(
                f"NO RESULT: the driver {'was killed' if r.killed else f'exited {r.rc}'} "
                f"without its JSON line; the fake accepted {accepted:,}"
            )
            self.failures.append(
                f"{label}: driver stdout/stderr:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
            )
        else:
            sent, push_s, finished = int(out["sent"]), float(out["seconds"]), bool(out["finished"])
            push_rate = sent / push_s if push_s > 0 else 0.0
            notes.append(
                f"push window {push_s:.2f}s (first send to last answer): {push_rate:,.0f}/s"
            )
            if not finished:
                notes.append(
                    f"STALLED: did not finish within {timeout:g}s, {sent:,} sent "
                    f"(rate over the {timeout:g}s; last answer at "
                    f"{float(out.get('last_answer_s', 0)):.1f}s)"
                )
            if sent < n:
                reasons = ", ".join(
                    f"{k} x{v:,}" for k, v in sorted(out["failed_reasons"].items(), key=_by_count)
                )
                notes.append(
                    f"LOST {n - sent:,} of {n:,}: {out['failed']:,} failed"
                    + (f" ({reasons})" if reasons else "")
                    + f", {out['unanswered']:,} unanswered"
                )
            else:
                notes.append(f"all {n:,} sent")
            if accepted != sent:
                notes.append(
                    f"the fake accepted {accepted:,} ({accepted - sent:+,} vs the client's count)"
                )
            if r.rc != 0:
                notes.append(f"driver exited {r.rc}")
        if r.killed:
            notes.append(f"KILLED {timeout + 30:g}s after start (its own timeout did not end it)")
        if sent:
            notes.append(
                f"client CPU {1000 * r.cpu_s / sent:.2f} ms/delivery ({r.cpu_s / r.wall:.2f} cores)"
            )
        else:
            notes.append(f"client CPU {r.cpu_s:.1f}s, nothing delivered")
        notes.append(fake_rules_note(final))
        errors = {
            k: v for k in ("session_errors", "stream_errors", "tls_errors") if (v := final.get(k))
        }
        if errors or final.get("rejected"):
            notes.append(f"fake saw: rejected={final.get('rejected')} {errors}")
        if final.get("repeated_collapse_ids"):
            notes.append(f"PUSHED TWICE: {final['repeated_collapse_ids']} notifications")
        row = Row(
            label,
            n,
            r.wall,
            sent / r.wall,
            r.maxrss_mb,
            (after["cpu_s"] - before["cpu_s"]) / r.wall,
            notes,
        )
        return PeerResult(name, row, sent, sent / push_s if push_s > 0 else 0.0, finished)

    def peers_summary(self, ours: Row, results: list[PeerResult], n: int, gating: bool) -> str:
        """followups / each peer, on its push window and on its whole process, and / the
        best peer; the ratio goes into each peer's row as well."""
        rules = "stream gating" if gating else "no stream gating"
        head = (
            f"peers ({rules}, {n:,} device tokens, latency {self.args.latency_ms:g} ms): "
            f"followups send-due end to end {ours.rate or 0:,.0f}/s"
        )
        if not results or not ours.rate:
            return head + "; no ratio"
        parts = []
        for p in results:
            wall_rate = p.row.rate or 0.0
            if p.sent == 0:
                p.row.notes.insert(0, "followups = n/a (nothing delivered here)")
                parts.append(f"n/a vs {p.name} (0 of {n:,} delivered)")
                continue
            push_x, wall_x = ours.rate / p.push_rate, ours.rate / wall_rate
            p.row.notes.insert(
                0, f"followups = {push_x:.2f}x this push window, {wall_x:.2f}x its whole process"
            )
            state = [f"push-only {p.push_rate:,.0f}/s", f"{wall_x:.2f}x its whole process"]
            if p.sent < n:
                state.append(f"lost {n - p.sent:,}")
            if not p.finished:
                state.append(f"STALLED at {self.args.peers_timeout:g}s")
            parts.append(f"{push_x:.2f}x {p.name} ({', '.join(state)})")
        line = f"{head} = " + ", ".join(parts)
        delivered = [p for p in results if p.sent]
        if delivered:
            best = max(delivered, key=lambda p: p.push_rate)
            line += (
                f"; followups / best peer ({best.name}, push window) = "
                f"{ours.rate / best.push_rate:.2f}x"
            )
        return line

    # driver

    def run(self) -> None:
        order = [s for s in ALL_SCENARIOS if s in self.args.scenarios]
        t0 = time.perf_counter()
        try:
            self.fake_ceiling()
            for s in order:
                print(f"# {s} ...", file=sys.stderr, flush=True)
                getattr(self, s)()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.args.keep_databases:
                self.drop_own_databases()
        print(self.header())
        print(render_table(self.rows))
        for line in self.extra + self.failures:
            print()
            print(line)
        print(f"\n(total bench time {time.perf_counter() - t0:.0f}s)")

    def header(self) -> str:
        with self.admin() as conn:
            pg = one_value(conn, "SHOW server_version")
        env = " ".join(f"{k}={v}" for k, v in self.user_env.items()) or "defaults"
        git = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "followup_cli"],
            capture_output=True,
            text=True,
        ).stdout.split()
        env += f"\nproduct: {git or '?'}" + (
            f" + uncommitted changes in followup_cli/ ({len(dirty) // 2} files)" if dirty else ""
        )
        rules = {"on": "stream gating", "off": "no stream gating", "both": "gating on and off"}[
            self.args.gating
        ]
        if self.args.goaway_after:
            rules += f", GOAWAY after {self.args.goaway_after} requests per connection"
        if self.args.reject_every:
            rules += f", every {self.args.reject_every}th push 410 Unregistered"
        peers_gating = self.args.peers_gating
        if "peers" in self.args.scenarios and peers_gating not in (None, self.args.gating):
            rules += f"; peers scenario: gating {peers_gating}"
        return (
            f"followups bench ({'quick' if self.args.quick else 'full'}) - {platform.node()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, PostgreSQL {pg}, "
            f"fake APNs latency {self.args.latency_ms} ms ({rules}), send-due env: {env}\n"
        )


# -- peers ----------------------------------------------------------------------------------


def pinned_aioapns() -> str:
    """The aioapns version bench/peers/requirements.txt pins."""
    for line in (PEERS / "requirements.txt").read_text().splitlines():
        if line.startswith("aioapns=="):
            return line.split("==", 1)[1].split()[0]
    return "?"


def pinned_node_apn() -> str:
    """The @parse/node-apn version bench/peers/package.json pins."""
    return str(json.loads((PEERS / "package.json").read_text())["dependencies"]["@parse/node-apn"])


def _setup_step(cmd: list[str], cwd: Path) -> None:
    print(f"# peers: {' '.join(cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PeerSetupError(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )


def ensure_aioapns() -> list[str]:
    """bench/peers/.venv with requirements.txt installed (hashes checked): created on first
    use, installed again when requirements.txt changes. The command of the aioapns driver."""
    python = PEERS_VENV / "bin" / "python"
    reqs = PEERS / "requirements.txt"
    stamp = PEERS_VENV / "requirements.installed"
    want = reqs.read_text()
    if not (python.exists() and stamp.exists() and stamp.read_text() == want):
        if not python.exists():
            _setup_step([sys.executable, "-m", "venv", str(PEERS_VENV)], PEERS)
        _setup_step(
            [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "-r", str(reqs)],
            PEERS,
        )
        stamp.write_text(want)
    return [str(python), str(PEERS / "aioapns_push.py")]


def ensure_node_apn() -> list[str]:
    """bench/peers/node_modules from package-lock.json (npm ci) when the pinned
    @parse/node-apn is not there yet. The command of the node-apn driver."""
    node = shutil.which("node")
    if node is None:
        raise PeerSetupError("node is not installed")
    installed = PEERS / "node_modules" / "@parse" / "node-apn" / "package.json"
    have = json.loads(installed.read_text()).get("version") if installed.exists() else None
    if have != pinned_node_apn():
        npm = shutil.which("npm")
        if npm is None:
            raise PeerSetupError("npm is not installed")
        _setup_step([npm, "ci", "--no-audit", "--no-fund"], PEERS)
    return [node, str(PEERS / "node_apn_push.mjs")]


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def fake_rules_note(stats: dict[str, Any]) -> str:
    """What the fake's APNs rules did: connections, refused streams, GOAWAYs, token updates,
    the concurrency reached; the rarer counters only when they are not zero."""
    goaways = stats.get("goaway_sent") or {}
    parts = [
        f"{stats['connections']} conn",
        f"{stats['refused']} refused",
        "GOAWAY " + (", ".join(f"{k} {v}" for k, v in goaways.items()) if goaways else "0"),
        f"{stats['token_updates']} token updates",
        f"max in-flight {stats['max_in_flight']} ({stats['max_in_flight_one_connection']}/conn)",
    ]
    extra = {
        "beyond acked limit": stats.get("refused_beyond_acknowledged_limit"),
        "not processed after GOAWAY": stats.get("not_processed_after_goaway"),
        "token updates refused": stats.get("token_updates_refused"),
        "unanswered (connection gone)": stats.get("unanswered"),
        "limit dropped to 1": stats.get("limit_lowered"),
    }
    parts += [f"{k} {v}" for k, v in extra.items() if v]
    rst = {k: v for k, v in (stats.get("rst_sent") or {}).items() if k != "REFUSED_STREAM"}
    if rst:
        parts.append(f"other RST_STREAM {rst}")
    return "fake: " + ", ".join(parts)


def summarize_profile(raw: Path, n: int, wall: float) -> str:
    """Self and inclusive samples per function, and self samples per package."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_c[_short(leaf)] += count
        pkg[_package(leaf)] += count
        for fr in {_short(f) for f in frames[1:]}:
            incl[fr] += count
    if total == 0:
        return "profile: no samples"

    def pct(c: int) -> str:
        return f"{100 * c / total:5.1f}%"

    out = [
        f"profile: py-spy, one send-due of {n:,} due rows, {wall:.1f}s wall, "
        f"{total} active samples (250 Hz)"
    ]
    out.append("  self time by package:")
    out += [f"    {pct(c)}  {k}" for k, c in pkg.most_common(12)]
    out.append("  top functions, self time:")
    out += [f"    {pct(c)}  {k}" for k, c in self_c.most_common(15)]
    out.append("  top functions, inclusive (project and key library frames):")
    interesting = [
        (k, c)
        for k, c in incl.most_common(200)
        if any(
            s in k
            for s in (
                "followup_cli",
                "pyapns",
                "httpx",
                "httpcore",
                "h2/",
                "sqlalchemy",
                "psycopg",
                "jwt",
                "ssl",
            )
        )
    ]
    out += [f"    {pct(c)}  {k}" for k, c in interesting[:20]]
    return "\n".join(out)


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module-relative path:line)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def _package(frame: str) -> str:
    _, _, where = frame.partition(" (")
    if "site-packages/" in where:
        return where.split("site-packages/", 1)[1].split("/", 1)[0]
    if str(ROOT) in where:
        return where.split(str(ROOT) + "/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in where:
        mod = where.split("/lib/python3", 1)[1].split("/", 1)[1]
        return "stdlib:" + mod.split("/", 1)[0].split(".py")[0]
    return where.split(":")[0] or "?"


def render_table(rows: list[Row]) -> str:
    head = ["scenario", "N", "seconds", "deliveries/s", "peak RSS MB", "fake CPU share", "notes"]
    body = []
    for r in rows:
        body.append(
            [
                r.scenario,
                "-" if r.n is None else f"{r.n:,}",
                "-"
                if r.seconds is None
                else f"{r.seconds:.3f}"
                if r.seconds < 10
                else f"{r.seconds:.1f}",
                "-" if r.rate is None else f"{r.rate:,.0f}",
                "-" if r.rss_mb is None else f"{r.rss_mb:.0f}",
                "-" if r.fake_share is None else f"{100 * r.fake_share:.0f}%",
                "; ".join(r.notes),
            ]
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, ["-" * w for w in widths] + ["-----"], *body]:
        left = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:-1], widths[1:], strict=True)
        ]
        lines.append("  ".join([*left, cells[-1]]))
    return "\n".join(lines)


def make_pki(directory: Path) -> dict[str, str]:
    """TLS CA + server certificate and the ES256 provider key, via tests/fakes/pki.py."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.fakes import pki

    ca, cert, server_key = pki.make_pki(str(directory))
    auth_key = str(directory / f"AuthKey_{KEY_ID}.p8")
    pki.write_private_key(auth_key, ec.generate_private_key(ec.SECP256R1()))
    return {"ca": ca, "cert": cert, "server_key": server_key, "auth_key": auth_key}


def one_value(conn: psycopg.Connection[Any], query: str) -> Any:
    """The first column of the one row `query` returns."""
    found = conn.execute(query).fetchone()
    assert found is not None, query
    return found[0]


def sa_url(libpq_url: str) -> str:
    return libpq_url.replace("postgresql://", "postgresql+psycopg://", 1)


def _uuid(rand: random.Random) -> str:
    return str(uuid.UUID(int=rand.getrandbits(128), version=4))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small N (about two minutes in all)")
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, from {', '.join(ALL_SCENARIOS)}",
    )
    p.add_argument("--profile", action="store_true", help="also run the py-spy profile scenario")
    p.add_argument("--keep-profile", metavar="FILE", help="save py-spy's collapsed stacks here")
    p.add_argument("--latency-ms", type=float, default=20.0, help="fake APNs answer latency")
    p.add_argument(
        "--gating",
        choices=("on", "off", "both"),
        default="on",
        help="APNs' stream gating in the fake (limit 1 until a push is accepted, 1 again "
        "after a rejection); 'both' runs the backlog once with and once without",
    )
    p.add_argument(
        "--no-gating", dest="gating", action="store_const", const="off", help="--gating off"
    )
    p.add_argument(
        "--goaway-after",
        type=int,
        default=0,
        metavar="N",
        help="the fake sends GOAWAY after N requests on each connection",
    )
    p.add_argument(
        "--reject-every",
        type=int,
        default=0,
        metavar="K",
        help="the fake answers every K-th acceptable push 410 Unregistered",
    )
    p.add_argument(
        "--backlog-size", type=int, default=0, metavar="N", help="due rows of the backlog run"
    )
    p.add_argument(
        "--profile-size", type=int, default=0, metavar="N", help="due rows of the profile run"
    )
    p.add_argument(
        "--peers-size",
        type=int,
        default=0,
        metavar="N",
        help="device tokens of the peers scenario (10,000; 2,000 with --quick)",
    )
    p.add_argument(
        "--peers-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="a peer client still pushing after S seconds is reported as stalled",
    )
    p.add_argument(
        "--peers-gating",
        choices=("on", "off", "both"),
        default=None,
        help="stream gating for the peers scenario (default: as --gating); 'both' runs "
        "its three contenders once with and once without",
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="server URL without database (trust auth); databases followups_bench_* are created",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FOLLOWUPS_X=V",
        help="extra environment for send-due, e.g. FOLLOWUPS_PUSH_CONCURRENCY=64",
    )
    p.add_argument("--keep-databases", action="store_true", help="do not drop the bench databases")
    args = p.parse_args(argv)
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if args.profile:
        args.scenarios.add("profile")
    unknown = args.scenarios - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if min(args.goaway_after, args.reject_every, args.backlog_size, args.profile_size) < 0:
        p.error(
            "--goaway-after, --reject-every, --backlog-size and --profile-size want a number >= 0"
        )
    if args.peers_size < 0 or args.peers_timeout <= 0:
        p.error("--peers-size wants a number >= 0, --peers-timeout one > 0")
    for kv in args.env:
        if "=" not in kv or not kv.startswith("FOLLOWUPS_"):
            p.error(f"--env wants FOLLOWUPS_NAME=value, got {kv!r}")
    Bench(args).run()


if __name__ == "__main__":
    main()
