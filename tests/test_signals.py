"""A clean stop on SIGTERM and SIGINT, with real `send-due` processes and the fake APNs:
the pushes in flight are answered and recorded, every other claimed follow-up is handed
back at once (the next run delivers it without waiting for the lease), the run is
recorded, and the exit code is 128 + the signal with one line and no asyncio noise. A
second signal exits at once, like a crash."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from followup_cli.tables import follow_up_requests, follow_up_runs
from tests.fakes.apns import FakeAPNs
from tests.helpers import (
    check_each_delivered_once,
    check_in_order,
    expire_leases,
    finish_run,
    open_engine,
    seed,
    start_apns_run,
)

r = follow_up_requests.c
pytestmark = pytest.mark.slow


def runs(engine: Any) -> list[tuple[str, int]]:
    runs_c = follow_up_runs.c
    with engine.connect() as conn:
        return [
            (row.outcome, row.sent) for row in conn.execute(select(runs_c.outcome, runs_c.sent))
        ]


def claimed(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(r.claimed_by.is_not(None))) or 0)


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_signal_stops_cleanly_and_hands_everything_back(
    backend: tuple[str, str],
    apns: FakeAPNs,
    signum: int,
    code: int,
    name: str,
) -> None:
    """Mid-backlog: exit 128 + signal with one line, the run recorded as interrupted,
    nothing left claimed, and the next run (leases untouched) delivers the rest, each
    follow-up pushed exactly once in all."""
    _name, url = backend
    engine = open_engine(url)
    seeded = seed(engine, 3000, 300)
    apns.latency = 0.05
    run = start_apns_run(url, apns, FOLLOWUPS_PUSH_CONCURRENCY="50")
    apns.wait_for(300, timeout=60)
    os.kill(run.pid, signum)
    began = time.monotonic()
    exit_code, out, err = finish_run(run)
    took = time.monotonic() - began
    assert exit_code == code, err
    assert took < 10, took
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and name in errors[0], err
    for noise in ("Traceback", "Task was destroyed", "Exception ignored", "KeyboardInterrupt"):
        assert noise not in err, err
    assert out.startswith("send-due: claimed"), out
    [(outcome, sent)] = runs(engine)
    assert outcome == "interrupted" and 0 < sent < len(seeded)
    assert claimed(engine) == 0  # in flight answered and recorded, the rest handed back

    apns.latency = 0.0
    exit_code, _out, err = finish_run(start_apns_run(url, apns))
    assert exit_code == 0, err
    check_each_delivered_once(engine, seeded)
    check_in_order(engine, seeded)
    pushes = Counter(apns.collapse_ids())
    assert set(pushes) == {s.id for s in seeded}
    assert set(pushes.values()) == {1}  # nothing pushed twice
    engine.dispose()


def test_second_signal_exits_at_once_and_claims_come_back_like_a_crash(
    backend: tuple[str, str],
    apns: FakeAPNs,
) -> None:
    """APNs stops answering; SIGTERM, then SIGTERM again: the process exits at once
    (143, one line), leaving its claims to the lease; after the lease, each follow-up is
    delivered once."""
    _name, url = backend
    engine = open_engine(url)
    seeded = seed(engine, 200, 50)
    apns.respond(200, action="stall", times=20)
    run = start_apns_run(url, apns, FOLLOWUPS_PUSH_CONCURRENCY="20", FOLLOWUPS_PUSH_TIMEOUT="30")
    deadline = time.monotonic() + 30
    while claimed(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the stalled pushes are on the wire
    os.kill(run.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert run.poll() is None  # waiting for the pushes in flight (up to its grace)
    os.kill(run.pid, signal.SIGTERM)
    began = time.monotonic()
    exit_code, _out, err = finish_run(run)
    assert exit_code == 143, err
    assert time.monotonic() - began < 2
    assert "SIGTERM again" in err and "Traceback" not in err, err
    assert claimed(engine) > 0  # what it held comes back after the lease

    apns.clear_rules()
    expire_leases(engine)
    exit_code, _out, err = finish_run(start_apns_run(url, apns))
    assert exit_code == 0, err
    check_each_delivered_once(engine, seeded)
    engine.dispose()
