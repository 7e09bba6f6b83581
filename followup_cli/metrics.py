"""Prometheus metrics of one send-due run, for node_exporter's textfile collector and for
a Pushgateway.

A cron job has no long-lived process to hold counters. Each run therefore builds a fresh
registry: gauges describing this run, as Prometheus advises for batch jobs (when it
started, how long it took, whether it completed, what it delivered, when a run last
completed), and, when a metrics file is kept, counters continued from the values the
previous run left in that file, read back with prometheus-client's own parser.

Imported only by a run that publishes metrics: prometheus-client alone takes about a
tenth of a second to import, as much as a third of the idle run.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import (
    CollectorRegistry,
    push_to_gateway,
    pushadd_to_gateway,
    write_to_textfile,
)
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from followup_cli.errors import ConfigError

log = logging.getLogger("followups.metrics")

# What happened to each follow-up a run claimed (RunReport's counts).
OUTCOMES = ("pushed", "in_app_only", "failed", "skipped")
PUSHGATEWAY_JOB = "followups"
PUSH_TIMEOUT_SECONDS = 5.0

DELIVERIES_TOTAL = "followups_deliveries_total"
RUNS_TOTAL = "followups_runs_total"
LAST_SUCCESS = "followups_last_success_timestamp_seconds"


@dataclass(frozen=True)
class RunMetrics:
    """One send-due run, as its metrics describe it."""

    started_at: datetime
    finished_at: datetime
    deliveries: Mapping[str, int]  # by outcome
    overdue: int  # scheduled follow-ups already due once the run ended
    ok: bool  # the run completed (exit 0)

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


@dataclass
class Carried:
    """What the previous metrics file knows and one run cannot: the counters' totals and
    when a run last completed."""

    deliveries: dict[str, float] = field(default_factory=dict)
    runs: float = 0.0
    last_success: float | None = None


def check_metrics_file(path: Path) -> None:
    """--metrics-file, checked before a run claims anything: the directory it goes in
    must exist (it is not created: a mistyped path would otherwise collect metrics where
    nothing reads them). Raises ConfigError. Whether the file can be written is only
    known when it is written, after the run; a failure there is a warning (publish)."""
    directory = path.parent
    if not directory.exists():
        raise ConfigError(
            f"--metrics-file {str(path)!r}: the directory {str(directory)!r} does not exist"
        )
    if not directory.is_dir():
        raise ConfigError(f"--metrics-file {str(path)!r}: {str(directory)!r} is not a directory")


def publish(run: RunMetrics, *, metrics_file: Path | None, pushgateway_url: str | None) -> None:
    """Write the metrics file (atomically) and/or push to the Pushgateway.

    Neither failure fails the run, whose deliveries are done: each is logged in one
    warning line, and the run's summary and exit code stay as they are."""
    carried = read_carried(metrics_file) if metrics_file is not None else None
    registry = build_registry(run, carried)
    if pushgateway_url:
        push(pushgateway_url, registry, replace=run.ok)
    if metrics_file is not None:
        try:
            # A temporary file beside the target, then rename(2): the collector never
            # reads half a file, and the temporary name does not end in .prom.
            write_to_textfile(str(metrics_file), registry)
        except OSError as exc:
            log.warning(
                "metrics file %s cannot be written (%s): this run's metrics are lost",
                metrics_file,
                exc.strerror or type(exc).__name__,
            )


def read_carried(path: Path) -> Carried:
    """The counters and last success time in the previous file. A missing file is a first
    run; an unreadable one restarts the counters, which Prometheus reads as a reset."""
    carried = Carried()
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return carried
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("metrics file %s unreadable (%s): counters start again", path, exc)
        return carried
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == DELIVERIES_TOTAL and "outcome" in sample.labels:
                    carried.deliveries[sample.labels["outcome"]] = sample.value
                elif sample.name == RUNS_TOTAL:
                    carried.runs = sample.value
                elif sample.name == LAST_SUCCESS:
                    carried.last_success = sample.value
    except (ValueError, IndexError, KeyError, TypeError):
        log.warning("metrics file %s is not Prometheus text: counters start again", path)
        return Carried()
    return carried


def build_registry(run: RunMetrics, carried: Carried | None) -> CollectorRegistry:
    """This run's gauges, and the counters continued from `carried` (none without it: with
    nothing to continue from, a counter would restart on every run)."""
    families: list[Metric] = []

    def gauge(name: str, doc: str, value: float) -> None:
        family = GaugeMetricFamily(name, doc)
        family.add_metric([], value)
        families.append(family)

    outcomes = sorted(set(OUTCOMES) | set(carried.deliveries if carried else ()))
    if carried is not None:
        deliveries = CounterMetricFamily(
            DELIVERIES_TOTAL,
            "Follow-ups handled by send-due, by outcome, over the runs that wrote this file.",
            labels=["outcome"],
        )
        for outcome in outcomes:
            total = carried.deliveries.get(outcome, 0.0) + run.deliveries.get(outcome, 0)
            deliveries.add_metric([outcome], total)
        families.append(deliveries)
        families.append(
            CounterMetricFamily(
                RUNS_TOTAL, "send-due runs that wrote this file.", value=carried.runs + 1
            )
        )
    last_run = GaugeMetricFamily(
        "followups_last_run_deliveries",
        "Follow-ups handled by the last send-due run, by outcome.",
        labels=["outcome"],
    )
    for outcome in outcomes:
        last_run.add_metric([outcome], run.deliveries.get(outcome, 0))
    families.append(last_run)
    gauge(
        "followups_last_run_timestamp_seconds",
        "Start of the last send-due run (Unix time).",
        run.started_at.timestamp(),
    )
    gauge(
        "followups_last_run_duration_seconds",
        "Duration of the last send-due run.",
        run.duration_seconds,
    )
    gauge(
        "followups_last_run_success",
        "1 if the last send-due run completed, 0 if it stopped.",
        1 if run.ok else 0,
    )
    last_success = carried.last_success if carried else None
    if run.ok:
        last_success = run.finished_at.timestamp()
    if last_success is not None:
        gauge(
            LAST_SUCCESS, "End of the last send-due run that completed (Unix time).", last_success
        )
    gauge(
        "followups_backlog_overdue",
        "Scheduled follow-ups already due after the last send-due run.",
        run.overdue,
    )
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return registry


def push(url: str, registry: CollectorRegistry, *, replace: bool) -> bool:
    """Push to the Pushgateway as job `followups`, grouped by this host's name. Never raises.

    `replace` (a completed run) replaces the host's whole group. A stopped run only
    replaces the metrics it has, so the group keeps the last success time that a
    completed run pushed before."""
    gateway, handler = _gateway(url)
    send = push_to_gateway if replace else pushadd_to_gateway
    try:
        send(
            gateway,
            job=PUSHGATEWAY_JOB,
            registry=registry,
            grouping_key={"instance": socket.gethostname()},
            timeout=PUSH_TIMEOUT_SECONDS,
            handler=handler,
        )
        return True
    except Exception as exc:  # a monitor's trouble never fails a run
        # The URL may hold a password: name the failure only.
        why = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else type(exc).__name__
        log.warning("metrics push to the Pushgateway failed (%s)", why)
        return False


Handler = Callable[..., Callable[[], None]]


def _gateway(url: str) -> tuple[str, Handler]:
    """The URL without its user:password, and a handler that sends them as Basic auth
    (urllib does not take credentials from the URL itself)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, default_handler
    username, password = unquote(parts.username), unquote(parts.password or "")
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def handler(
        url: str,
        method: str,
        timeout: float | None,
        headers: list[tuple[str, str]],
        data: bytes,
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler


class _Fixed(Collector):
    """Hands out values computed once, for one exposition."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
