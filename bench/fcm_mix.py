"""Mixed-batch throughput: `followups send-due` over a backlog whose device tokens are
part APNs, part FCM, against an APNs-only backlog of the same size, in one invocation.

    python bench/fcm_mix.py [--n 20000] [--fcm-share 0.5] [--latency-ms 20]

Both push services are the tests' Python fakes (tests/fakes/apns.py, tests/fakes/fcm.py),
each in its own process, answering after --latency-ms; both rows of the table use the
same fakes, so their ratio is what an FCM share costs or gains. The absolute rates are
lower than bench/run.py's, whose Node fake APNs costs less CPU per push on the same two
cores. Needs PostgreSQL as bench/run.py does (--pg-url / BENCH_PG_URL); creates and
drops databases named followups_fcmbench_<pid>_<scenario>. Run from the repository root
with the project's venv.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB_PREFIX = "followups_fcmbench_"
TEXT = "How is Maya's fever today? Reply here if anything changed."


def fcm_token(rand: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    body = "".join(rand.choice(alphabet) for _ in range(134))
    return "".join(rand.choice(alphabet) for _ in range(22)) + ":APA91b" + body


def start_fake(module: str, latency: float) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A fake as `python -m tests.<module>`; its FOLLOWUPS_* lines become the env."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tests.{module}", "--latency", str(latency)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    env: dict[str, str] = {}
    assert proc.stdout is not None
    wanted = 6 if module == "fakes.apns" else 3
    while len(env) < wanted:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{module} ended before it was ready")
        name, _, value = line.strip().partition("=")
        env[name] = value
    return proc, env


def seed(url: str, n: int, fcm_share: float, rand: random.Random) -> tuple[int, int]:
    """n due follow-ups, one per conversation, every one with a token; returns the counts
    of (APNs, FCM) tokens."""
    now = datetime.now(UTC)
    lines = []
    counts = [0, 0]
    for _ in range(n):
        is_fcm = rand.random() < fcm_share
        counts[is_fcm] += 1
        token = fcm_token(rand) if is_fcm else f"{rand.getrandbits(256):064x}"
        when = now - timedelta(seconds=rand.uniform(1, 3600))
        lines.append(
            "\t".join(
                (
                    str(uuid.UUID(int=rand.getrandbits(128), version=4)),
                    str(uuid.UUID(int=rand.getrandbits(128), version=4)),
                    f"parent-{rand.randrange(10**9)}",
                    when.isoformat(),
                    "urgent" if rand.random() < 0.1 else "routine",
                    TEXT,
                    "scheduled",
                    token,
                    "Dr. Chen",
                )
            )
        )
    cols = (
        "id, conversation_id, user_id, scheduled_for, urgency, display_text, status, "
        "device_token, provider_name"
    )
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY follow_up_requests ({cols}) FROM STDIN") as copy:
            copy.write("\n".join(lines) + "\n")
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE follow_up_requests")
    return counts[0], counts[1]


def run_scenario(
    name: str, pg_url: str, n: int, share: float, env: dict[str, str], seed_value: int
) -> dict[str, float | int | str]:
    dbname = f"{DB_PREFIX}{os.getpid()}_{name.replace('-', '_')}"
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = pg_url.rsplit("/", 1)[0] + "/" + dbname
    sa_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    cli = [sys.executable, "-m", "followup_cli", "--quiet", "--database-url", sa_url]
    try:
        subprocess.run([*cli, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
        apns_n, fcm_n = seed(url, n, share, random.Random(seed_value))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([*cli, "send-due"], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            raise RuntimeError(f"{name}: send-due exited {done.returncode}")
        with psycopg.connect(url) as conn:
            sent, messages = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'sent'), "
                "(SELECT count(*) FROM follow_up_messages) FROM follow_up_requests"
            ).fetchone() or (0, 0)
        if (sent, messages) != (n, n):
            raise RuntimeError(f"{name}: VERIFY FAILED: {sent} sent, {messages} messages of {n}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {
            "scenario": name,
            "n": n,
            "apns": apns_n,
            "fcm": fcm_n,
            "seconds": seconds,
            "rate": n / seconds,
            "cpu_ms": 1000 * cpu / n,
        }
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--fcm-share", type=float, default=0.5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    apns_proc, apns_env = start_fake("fakes.apns", latency)
    fcm_proc, fcm_env = start_fake("fakes.fcm", latency)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUPS_")}
        common = {**base, **apns_env, **fcm_env, "FOLLOWUPS_RETRY_BASE_SECONDS": "0"}
        rows = [
            run_scenario(
                "apns-only", args.pg_url, args.n, 0.0, {**common, "FOLLOWUPS_PUSH": "apns"}, 1
            ),
            run_scenario(
                "mixed",
                args.pg_url,
                args.n,
                args.fcm_share,
                {**common, "FOLLOWUPS_PUSH": "apns,fcm"},
                2,
            ),
        ]
    finally:
        for proc in (apns_proc, fcm_proc):
            proc.terminate()
            proc.wait(timeout=10)
    print(f"latency {args.latency_ms:g} ms on both fakes; Python fakes; one send-due process")
    header = ("scenario", "N", "APNs", "FCM", "seconds", "per s", "CPU ms/delivery")
    print(f"{header[0]:<10} " + " ".join(f"{h:>7}" for h in header[1:]))
    for r in rows:
        print(
            f"{r['scenario']:<10} {r['n']:>7} {r['apns']:>7} {r['fcm']:>7} "
            f"{r['seconds']:>7.2f} {r['rate']:>7.0f} {r['cpu_ms']:>7.2f}"
        )
    print(f"mixed / apns-only throughput: {float(rows[1]['rate']) / float(rows[0]['rate']):.2f}")


if __name__ == "__main__":
    main()
