"""Prometheus metrics: the textfile (read back with prometheus-client's own parser), the
counters it carries across runs, and the Pushgateway push, against a local HTTP receiver."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from followup_cli.db import Database
from followup_cli.metrics import RunMetrics, publish
from followup_cli.tables import follow_up_runs
from tests.fakes.webhook import FakeWebhook
from tests.helpers import app_row, cli, row

STARTED = datetime.fromisoformat("2026-11-28T12:00:00+00:00")
GROUP = f"/metrics/job/followups/instance/{socket.gethostname()}"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type, as Prometheus reads them."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_outcome(samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["outcome"]: v for (n, labels), v in samples.items() if n == name}


def run(ok: bool = True, minutes: int = 0, **deliveries: int) -> RunMetrics:
    start = STARTED + timedelta(minutes=minutes)
    return RunMetrics(
        started_at=start,
        finished_at=start + timedelta(seconds=2.5),
        deliveries={"pushed": 0, "in_app_only": 0, "failed": 0, "skipped": 0, **deliveries},
        overdue=0 if ok else 7,
        ok=ok,
    )


@pytest.fixture
def gateway() -> Any:
    """A local HTTP receiver standing in for a Pushgateway: this host's group only."""
    with FakeWebhook(path=GROUP) as hook:
        yield hook


# -- the textfile -----------------------------------------------------------------------


def test_metrics_file_is_prometheus_text_and_counters_accumulate(
    db_url: str, db: Database, tmp_path: Path
) -> None:
    """send-due --metrics-file: counters by outcome across runs, the last run's gauges."""
    metrics = tmp_path / "textfile" / "followups.prom"
    metrics.parent.mkdir()  # node_exporter's textfile directory exists; the tool never makes it
    app_row(db)
    app_row(db, device_token=None)
    assert cli(db_url, "send-due", "--metrics-file", str(metrics)).exit_code == 0
    app_row(db)
    app_row(db, scheduled_for=STARTED.replace(year=2099))
    assert cli(db_url, "send-due", "--metrics-file", str(metrics)).exit_code == 0

    samples, types = parse(metrics.read_text())
    assert by_outcome(samples, "followups_deliveries_total") == {
        "pushed": 2,
        "in_app_only": 1,
        "failed": 0,
        "skipped": 0,
    }
    assert value(samples, "followups_runs_total") == 2
    assert by_outcome(samples, "followups_last_run_deliveries") == {
        "pushed": 1,
        "in_app_only": 0,
        "failed": 0,
        "skipped": 0,
    }
    assert types["followups_deliveries"] == "counter"
    assert types["followups_last_run_deliveries"] == "gauge"
    assert value(samples, "followups_backlog_overdue") == 0
    assert value(samples, "followups_last_run_success") == 1
    started = value(samples, "followups_last_run_timestamp_seconds")
    finished = value(samples, "followups_last_success_timestamp_seconds")
    duration = value(samples, "followups_last_run_duration_seconds")
    assert finished == pytest.approx(started + duration)
    assert not any(name.endswith("_created") for name, _ in samples)  # no fake creation times
    assert [p.name for p in metrics.parent.iterdir()] == ["followups.prom"]  # no temp left


def test_a_stopped_run_keeps_the_last_success_time_and_the_counters(tmp_path: Path) -> None:
    """After a completed run, a stopped one: success 0, last success unchanged, counts added."""
    metrics = tmp_path / "followups.prom"
    publish(run(pushed=5, failed=1), metrics_file=metrics, pushgateway_url=None)
    first, _ = parse(metrics.read_text())
    stopped = run(ok=False, minutes=1, pushed=2, skipped=3)
    publish(stopped, metrics_file=metrics, pushgateway_url=None)
    samples, _ = parse(metrics.read_text())

    assert value(samples, "followups_last_run_success") == 0
    assert value(samples, "followups_last_success_timestamp_seconds") == (
        (STARTED + timedelta(seconds=2.5)).timestamp()
    )
    assert value(first, "followups_last_success_timestamp_seconds") == (
        value(samples, "followups_last_success_timestamp_seconds")
    )
    assert value(samples, "followups_last_run_timestamp_seconds") == (
        (STARTED + timedelta(minutes=1)).timestamp()
    )
    assert value(samples, "followups_last_run_duration_seconds") == 2.5
    assert value(samples, "followups_backlog_overdue") == 7
    assert by_outcome(samples, "followups_deliveries_total") == {
        "pushed": 7,
        "in_app_only": 0,
        "failed": 1,
        "skipped": 3,
    }
    assert value(samples, "followups_runs_total") == 2


def test_a_run_that_never_completed_has_no_last_success_time(tmp_path: Path) -> None:
    """No completed run yet: the gauge is absent rather than a made-up time."""
    metrics = tmp_path / "followups.prom"
    publish(run(ok=False), metrics_file=metrics, pushgateway_url=None)
    samples, _ = parse(metrics.read_text())
    assert ("followups_last_success_timestamp_seconds", ()) not in samples
    assert value(samples, "followups_last_run_success") == 0


def test_counters_continue_from_the_previous_hand_written_format(tmp_path: Path) -> None:
    """A file written by the earlier version (integer samples, no last success) carries on."""
    metrics = tmp_path / "followups.prom"
    metrics.write_text(
        "# HELP followups_deliveries_total Follow-ups handled by send-due, by outcome.\n"
        "# TYPE followups_deliveries_total counter\n"
        'followups_deliveries_total{outcome="failed"} 4\n'
        'followups_deliveries_total{outcome="pushed"} 1200\n'
        "# HELP followups_runs_total send-due runs that wrote this file.\n"
        "# TYPE followups_runs_total counter\n"
        "followups_runs_total 300\n"
        "# TYPE followups_last_run_success gauge\n"
        "followups_last_run_success 1\n"
    )
    publish(run(pushed=3), metrics_file=metrics, pushgateway_url=None)
    samples, _ = parse(metrics.read_text())
    assert by_outcome(samples, "followups_deliveries_total") == {
        "pushed": 1203,
        "in_app_only": 0,
        "failed": 4,
        "skipped": 0,
    }
    assert value(samples, "followups_runs_total") == 301


def test_a_file_that_is_not_prometheus_text_restarts_the_counters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in the file: one warning, counters start from this run (a reset to Prometheus)."""
    metrics = tmp_path / "followups.prom"
    metrics.write_text("followups_runs_total {{{ not a number\n")
    publish(run(pushed=2), metrics_file=metrics, pushgateway_url=None)
    samples, _ = parse(metrics.read_text())
    assert value(samples, "followups_runs_total") == 1
    assert value(samples, "followups_deliveries_total", outcome="pushed") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"metrics file {metrics} is not Prometheus text: counters start again"]


def test_a_metrics_path_under_a_file_is_refused_before_the_run(
    db_url: str, db: Database, tmp_path: Path
) -> None:
    """A metrics path under a regular file: one `Error:` line, exit 2, before anything is
    claimed."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    target = blocker / "followups.prom"
    fid = app_row(db)
    result = cli(db_url, "send-due", "--metrics-file", str(target))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: --metrics-file {str(target)!r}: {str(blocker)!r} is not a directory"
    ]
    assert row(db, fid).status == "scheduled"


# -- the Pushgateway --------------------------------------------------------------------


def test_pushgateway_gets_the_run_grouped_by_host(
    db_url: str, db: Database, gateway: FakeWebhook
) -> None:
    """FOLLOWUPS_PUSHGATEWAY_URL: a PUT to job=followups/instance=<host> after each run."""
    app_row(db)
    env = {"FOLLOWUPS_PUSHGATEWAY_URL": gateway.base_url}
    assert cli(db_url, "send-due", env=env).exit_code == 0
    (request,) = gateway.requests
    assert (request.method, request.path, request.status) == ("PUT", GROUP, 200)
    samples, _ = parse(request.body.decode())
    assert value(samples, "followups_last_run_deliveries", outcome="pushed") == 1
    assert value(samples, "followups_last_run_success") == 1
    assert ("followups_last_success_timestamp_seconds", ()) in samples
    # Without a file there is nothing to continue counters from: none are pushed.
    assert "followups_deliveries_total" not in {name for name, _ in samples}


def test_pushgateway_and_metrics_file_get_the_same_registry(
    db_url: str, db: Database, gateway: FakeWebhook, tmp_path: Path
) -> None:
    """With both, the Pushgateway receives exactly the file's samples, counters included."""
    metrics = tmp_path / "followups.prom"
    env = {"FOLLOWUPS_PUSHGATEWAY_URL": gateway.base_url + "/"}
    for _ in range(2):
        app_row(db)
        assert cli(db_url, "send-due", "--metrics-file", str(metrics), env=env).exit_code == 0
    assert [r.method for r in gateway.requests] == ["PUT", "PUT"]
    pushed, _ = parse(gateway.requests[-1].body.decode())
    in_file, _ = parse(metrics.read_text())
    assert pushed == in_file
    assert value(pushed, "followups_deliveries_total", outcome="pushed") == 2


def test_a_stopped_run_adds_to_the_group_instead_of_replacing_it(gateway: FakeWebhook) -> None:
    """A stopped run POSTs (replace only its own metrics) and has no last success time, so
    the group keeps the one the last completed run pushed."""
    publish(run(ok=False, failed=2), metrics_file=None, pushgateway_url=gateway.base_url)
    (request,) = gateway.requests
    assert (request.method, request.path, request.status) == ("POST", GROUP, 200)
    samples, _ = parse(request.body.decode())
    assert value(samples, "followups_last_run_success") == 0
    assert value(samples, "followups_last_run_deliveries", outcome="failed") == 2
    assert ("followups_last_success_timestamp_seconds", ()) not in samples


def test_pushgateway_credentials_go_as_basic_auth_and_never_into_logs(
    gateway: FakeWebhook, caplog: pytest.LogCaptureFixture
) -> None:
    """user:password in the URL become an Authorization header; a failure names no secret."""
    url = f"http://pusher:s%40cret-9f2@127.0.0.1:{gateway.port}"
    publish(run(pushed=1), metrics_file=None, pushgateway_url=url)
    expected = "Basic " + base64.b64encode(b"pusher:s@cret-9f2").decode()
    assert gateway.requests[0].headers["authorization"] == expected
    assert gateway.requests[0].path == GROUP

    gateway.status = 500
    publish(run(pushed=1), metrics_file=None, pushgateway_url=url)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["metrics push to the Pushgateway failed (HTTP 500)"]
    assert "cret" not in caplog.text and "pusher" not in caplog.text


@pytest.mark.parametrize("trouble", ["http_500", "unreachable"])
def test_a_failing_pushgateway_is_one_log_line_and_the_run_succeeds(
    db_url: str, db: Database, gateway: FakeWebhook, trouble: str
) -> None:
    """An error answer or nothing listening: one warning line, exit 0, delivery done."""
    if trouble == "http_500":
        gateway.status = 500
        url = gateway.base_url
    else:
        with socket.socket() as probe:  # a port nobody listens on once closed
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    app_row(db)
    result = cli(db_url, "send-due", env={"FOLLOWUPS_PUSHGATEWAY_URL": url})
    assert result.exit_code == 0
    assert "claimed 1, sent 1" in result.stdout
    lines = [line for line in result.stderr.splitlines() if "Pushgateway" in line]
    why = "HTTP 500" if trouble == "http_500" else "URLError"
    assert len(lines) == 1 and lines[0].endswith(f"metrics push to the Pushgateway failed ({why})")


def test_a_pushgateway_url_must_be_http(db_url: str) -> None:
    """A bad value is a configuration error (exit 2) that does not echo the value."""
    result = cli(db_url, "send-due", env={"FOLLOWUPS_PUSHGATEWAY_URL": "pushgw:9091"})
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: FOLLOWUPS_PUSHGATEWAY_URL must be an http(s) URL"


# -- the idle minute --------------------------------------------------------------------

PROBE = (
    "import sys; from followup_cli.idle import fast_send_due; "
    "code = fast_send_due(sys.argv[1:]); "
    "print('RESULT', code, 'prometheus_client' in sys.modules)"
)


def test_idle_minute_never_imports_prometheus_client(db_url: str, db: Database) -> None:
    """The fast path stays fast; with a Pushgateway it steps aside for the full path."""
    env = {**os.environ, "FOLLOWUPS_DATABASE_URL": db_url}
    command = [sys.executable, "-c", PROBE, "send-due"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert "RESULT 0 False" in done.stdout

    env["FOLLOWUPS_PUSHGATEWAY_URL"] = "http://127.0.0.1:9/"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert "RESULT None False" in done.stdout
    with db.engine.connect() as conn:  # only the first probe recorded a run
        assert conn.scalar(select(func.count()).select_from(follow_up_runs)) == 1


def test_idle_minute_with_a_pushgateway_pushes(
    db_url: str, db: Database, gateway: FakeWebhook
) -> None:
    """Through the real entry point, nothing due: the run is recorded and pushed."""
    env = {**os.environ, "FOLLOWUPS_DATABASE_URL": db_url}
    env["FOLLOWUPS_PUSHGATEWAY_URL"] = gateway.base_url
    command = [sys.executable, "-m", "followup_cli", "send-due"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and "claimed 0, sent 0" in done.stdout
    (request,) = gateway.requests
    samples, _ = parse(request.body.decode())
    assert request.method == "PUT"
    assert value(samples, "followups_last_run_success") == 1
    assert sum(by_outcome(samples, "followups_last_run_deliveries").values()) == 0
