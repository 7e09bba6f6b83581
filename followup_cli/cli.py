"""The `followups` command line: parse, build settings, call one service, render, exit.

Exit codes (docs/cli.md): 0 done; 1 the command could not do its job (database
unreachable, APNs configuration rejected, APNs outage, not found); 2 bad usage or
configuration. Errors are one line on stderr, never a traceback (FOLLOWUPS_DEBUG=1 shows
it), and never contain message text, child data or secrets.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from followup_cli import settings as settings_mod
from followup_cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, FollowupsError
from followup_cli.settings import Settings

if TYPE_CHECKING:
    from followup_cli.delivery import RunStop


class _FlagsWithoutMetavar:
    """Typer labels a flag's (absent) value <bool>; a flag takes no value, so its help
    row shows none."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


def _examples_as_lines(help_text: str) -> str:
    """An indented example block as plain lines under its "Example:" heading. The help
    is Markdown, where such a block is a code block that rich pads with blank lines; as
    code spans with hard line breaks it prints as typed, one command per line."""
    paragraphs: list[str] = []
    for paragraph in inspect.cleandoc(help_text).split("\n\n"):
        lines = paragraph.split("\n")
        if paragraphs and all(line.startswith("    ") for line in lines):
            commands = "  \n".join(f"`{line.strip()}`" for line in lines)
            if paragraphs[-1].endswith(":"):
                paragraphs[-1] += "  \n" + commands
                continue
            paragraph = commands
        paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


class _Command(_FlagsWithoutMetavar, TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = _examples_as_lines(self.help)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """A required argument as `ID`, as usage lines usually name it (not `{ID}`)."""
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


class _Group(_FlagsWithoutMetavar, TyperGroup):
    pass


app = typer.Typer(
    name="followups",
    cls=_Group,
    help=(
        "Deliver clinicians' scheduled follow-ups to parents: APNs or FCM push and in-app message."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    # Markdown joins the lines of a paragraph, so docstrings wrap to the terminal.
    rich_markup_mode="markdown",
)
db_app = typer.Typer(
    cls=_Group,
    help="Database schema commands.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("followups.cli")


def _default(field: str) -> str:
    """A setting's default as help texts show it; the Settings field is its one home."""
    return settings_mod.show_default(settings_mod.default(field))


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    from followup_cli.logsetup import scrub  # the database password, whatever the message

    print(f"Error: {scrub(message)}", file=sys.stderr)
    raise typer.Exit(code)


def cli_errors(func: F) -> F:
    """Turn the known failures into one `Error: ...` line and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from followup_cli.db import describe_error

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except FollowupsError as exc:  # ConfigError 2; NotFound, Conflict 1 (errors.py)
            fail(str(exc), exc.exit_code)
        except SQLAlchemyError as exc:
            if os.environ.get("FOLLOWUPS_DEBUG"):
                raise
            where = _which_database([*args, *kwargs.values()])
            fail(f"database error ({where}): {describe_error(exc)}", EXIT_FAILURE)
        except KeyboardInterrupt:
            fail("interrupted; claimed follow-ups return to the queue when their lease ends", 130)

    return wrapper  # type: ignore[return-value]


# The most follow-ups one `send-due --limit` may ask for.
MAX_LIMIT = 100_000_000


def _print_version() -> None:
    from followup_cli import __version__

    print(f"followups {__version__}")
    raise typer.Exit(EXIT_OK)


def _which_database(args: list[Any]) -> str:
    """The database a command's error is about (its ctx holds the settings)."""
    from followup_cli.db import describe_database

    settings = next((a.obj for a in args if isinstance(getattr(a, "obj", None), Settings)), None)
    if settings is None:
        return "the database"
    return describe_database(settings.database_url)


def _settings(ctx: typer.Context) -> Settings:
    value = ctx.obj
    assert isinstance(value, Settings)
    return value


@app.callback()
def main_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help=(
                "SQLAlchemy URL; overrides FOLLOWUPS_DATABASE_URL. "
                f"Default: {_default('database_url')}"
            ),
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help=(
                f"text or json; overrides FOLLOWUPS_LOG_FORMAT. Default: {_default('log_format')}"
            ),
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            is_eager=True,
            callback=lambda value: _print_version() if value else None,
        ),
    ] = False,
) -> None:
    """Settings come from FOLLOWUPS_* environment variables; options override them."""
    from followup_cli import logsetup

    try:
        settings = settings_mod.from_env().with_overrides(
            database_url=database_url, log_format=log_format
        )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    logsetup.configure(logging.WARNING if quiet else logging.INFO, settings.log_format)
    ctx.obj = settings


# -- send-due ---------------------------------------------------------------------------


@app.command(cls=_Command, name="send-due")
@cli_errors
def send_due(
    ctx: typer.Context,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help=f"Follow-ups claimed per batch (FOLLOWUPS_BATCH_SIZE, {_default('batch_size')}).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Deliver at most this many in this run.")
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Write Prometheus metrics here (node_exporter textfile collector).",
        ),
    ] = None,
) -> None:
    """Deliver every follow-up that is due now: push, in-app message, status sent.

    Cron runs it every minute under flock (see crontab.example). Exit 0 when the run
    completed, 1 when it stopped (database unreachable, a push service's configuration
    rejected, an APNs or FCM outage), 2 on bad configuration.

    Example:

        FOLLOWUPS_PUSH=log followups send-due
        followups send-due --metrics-file /var/lib/node_exporter/followups.prom
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"--limit must be between 1 and {MAX_LIMIT:,}, got {limit}")
    settings = _settings(ctx).with_overrides(batch_size=batch_size)
    settings_mod.require_push_config(settings)
    if metrics_file is not None:
        from followup_cli.metrics import check_metrics_file

        check_metrics_file(metrics_file)

    from followup_cli import render
    from followup_cli.alerts import make_alerter
    from followup_cli.db import Database
    from followup_cli.delivery import RunStop
    from followup_cli.delivery import send_due as run_send_due
    from followup_cli.monitoring import after_send_due, backlog_size
    from followup_cli.push.factory import make_pusher

    stop = RunStop()
    with Database(settings.database_url, create=False) as db:
        pusher = make_pusher(settings, db)
        alerter = make_alerter(settings.alert_webhook_url)
        try:
            # A person draining a backlog by hand sees a progress bar; cron sees none.
            total = backlog_size(db, limit) if render.is_terminal() else 0
            with render.progress("send-due", total) as advance, _stop_on_signals(stop):
                report = run_send_due(
                    db, pusher, settings, alerter, limit=limit, progress=advance, stop=stop
                )
            after_send_due(db, report, settings, metrics_file)
        finally:
            pusher.close()
    render.send_due_summary(report)
    if report.exit_code != EXIT_OK:
        fail(render.stop_line(report), report.exit_code)


@contextmanager
def _stop_on_signals(stop: RunStop) -> Iterator[None]:
    """SIGTERM (systemd, Kubernetes, docker stop) and SIGINT (Ctrl-C) stop the run
    cleanly (delivery.RunStop). A second one exits at once, as a crash would: what the
    run still holds comes back when its lease ends."""

    def handle(signum: int, _frame: object) -> None:
        if stop.requested:
            name = signal.Signals(signum).name
            os.write(
                2,
                f"Error: {name} again: stopped at once; the claimed follow-ups return to "
                "the queue when their lease ends\n".encode(),
            )
            os._exit(128 + signum)
        stop.request(signum)

    try:
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (an embedding program): its signals, its rules
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- retry-failed -----------------------------------------------------------------------


@app.command(cls=_Command, name="retry-failed")
@cli_errors
def retry_failed(
    ctx: typer.Context,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Only this follow-up (repeatable).", metavar="ID"),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only those that failed within: 30m, 24h, 7d.")
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Only this failure reason, any case, e.g. unregistered."),
    ] = None,
    in_app_only: Annotated[
        bool,
        typer.Option(
            "--in-app-only",
            help="Deliver them as the in-app message without a push (needed for dead tokens).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be requeued; change nothing.")
    ] = False,
) -> None:
    """Put failed follow-ups back to scheduled; the next send-due delivers them.

    Without filters every failed follow-up is considered, except those that failed on the
    row itself (empty_message, missing_recipient), which need the app to fix them first
    and are requeued only when named by --reason or --id. Those that failed on their
    device token (BadDeviceToken, Unregistered, UNREGISTERED, …) are held back unless
    the app stored a new token since, or --in-app-only is given. --reason matches
    whatever the case. Exit 1 when an --id is unknown or neither failed nor held.

    Example:

        followups retry-failed --since 24h --reason ServiceUnavailable --dry-run
        followups retry-failed --reason Unregistered --in-app-only
    """
    from followup_cli import render
    from followup_cli.clock import utcnow
    from followup_cli.db import Database
    from followup_cli.requeue import retry_failed as run_retry_failed
    from followup_cli.scheduling import parse_uuid

    wanted = [parse_uuid(value, "--id") for value in ids or []]
    failed_since = utcnow() - settings_mod.parse_duration(since, "--since") if since else None
    if reason is not None and not reason.strip():
        raise ConfigError("--reason must not be empty")
    with Database(_settings(ctx).database_url, create=False) as db:
        report = run_retry_failed(
            db,
            ids=wanted,
            failed_since=failed_since,
            reason=reason,
            in_app_only=in_app_only,
            dry_run=dry_run,
        )
    render.requeue_report(report)
    if report.unknown_ids:
        fail(
            f"{len(report.unknown_ids)} of the --id follow-ups are unknown, or neither failed nor "
            "held (listed above)",
            EXIT_FAILURE,
        )


# -- stats ------------------------------------------------------------------------------


@app.command(cls=_Command, name="stats")
@cli_errors
def stats(
    ctx: typer.Context,
    since: Annotated[str, typer.Option("--since", help="Window: 30m, 24h, 7d.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    check_: Annotated[
        bool,
        typer.Option(
            "--check", help="Monitor mode: exit 1 and name the rule when something is wrong."
        ),
    ] = False,
    min_success_rate: Annotated[
        float | None,
        typer.Option(
            "--min-success-rate",
            help=(
                f"Percent (FOLLOWUPS_CHECK_MIN_SUCCESS_RATE, {_default('check_min_success_rate')})."
            ),
        ),
    ] = None,
    min_attempts: Annotated[
        int | None,
        typer.Option(
            "--min-attempts",
            help=(
                "Judge the rate only from this many "
                f"(FOLLOWUPS_CHECK_MIN_ATTEMPTS, {_default('check_min_attempts')})."
            ),
        ),
    ] = None,
    max_run_age: Annotated[
        str | None,
        typer.Option(
            "--max-run-age",
            help=(
                "Last run at most this old "
                f"(FOLLOWUPS_CHECK_MAX_RUN_AGE, {_default('check_max_run_age')})."
            ),
        ),
    ] = None,
    max_overdue: Annotated[
        str | None,
        typer.Option(
            "--max-overdue",
            help=(
                "No follow-up overdue longer "
                f"(FOLLOWUPS_CHECK_MAX_OVERDUE, {_default('check_max_overdue')})."
            ),
        ),
    ] = None,
) -> None:
    """How follow-ups did in a window, the backlog now, and whether cron looks alive.

    With --check it is a monitor: exit 0 when healthy, 1 when the success rate is low,
    the last send-due run is too old, or a follow-up is overdue too long.

    Example:

        followups stats --since 24h --check
        followups stats --since 1h --json
    """
    from dataclasses import replace

    from followup_cli import render
    from followup_cli.db import Database
    from followup_cli.monitoring import CheckRules, check, gather

    window = settings_mod.parse_duration(since, "--since")
    settings = _settings(ctx)
    rules = CheckRules.from_settings(settings)
    if min_success_rate is not None:
        if not 0 <= min_success_rate <= 100:
            raise ConfigError(f"--min-success-rate must be 0-100, got {min_success_rate:g}")
        rules = replace(rules, min_success_rate=min_success_rate)
    if min_attempts is not None:
        if min_attempts < 1:
            raise ConfigError(f"--min-attempts must be at least 1, got {min_attempts}")
        rules = replace(rules, min_attempts=min_attempts)
    if max_run_age is not None:
        rules = replace(
            rules, max_run_age=settings_mod.parse_duration(max_run_age, "--max-run-age")
        )
    if max_overdue is not None:
        rules = replace(
            rules, max_overdue=settings_mod.parse_duration(max_overdue, "--max-overdue")
        )
    with Database(settings.database_url, create=False) as db:
        result = gather(db, window)
    problems = check(result, rules) if check_ else []
    if as_json:
        render.stats_json(result, rules, problems if check_ else None)
    else:
        render.stats_table(result, rules)
        if check_:
            render.check_result(problems)
    if problems:
        raise typer.Exit(EXIT_FAILURE)


# -- cleanup ----------------------------------------------------------------------------


@app.command(cls=_Command, name="cleanup")
@cli_errors
def cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Age after which sent and cancelled follow-ups go (30d, 2w)."
        ),
    ] = "90d",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the counts it would remove.")
    ] = False,
    archive: Annotated[
        bool,
        typer.Option("--archive", help="Move them to follow_up_requests_archive instead."),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Rows per short transaction.")
    ] = 1000,
) -> None:
    """Purge sent and cancelled follow-ups older than the window, in short batches.

    Failed and scheduled follow-ups are kept, and follow_up_messages (the parents'
    history) are never deleted. Sent ones age by sent_at, cancelled ones by created_at.

    Example:

        followups cleanup --older-than 90d --dry-run
        followups cleanup --older-than 180d --archive
    """
    from followup_cli import cleanup as cleanup_mod
    from followup_cli import render
    from followup_cli.db import Database

    window = settings_mod.parse_duration(older_than, "--older-than")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    with Database(_settings(ctx).database_url, create=False) as db:
        planned = cleanup_mod.count(db, window)
        if dry_run:
            report = planned
        else:
            with render.progress("cleanup", planned.total) as advance:
                report = cleanup_mod.cleanup(
                    db, window, archive=archive, batch_size=batch_size, progress=advance
                )
    render.cleanup_report(report)


# -- test-send --------------------------------------------------------------------------


@app.command(cls=_Command, name="test-send")
@cli_errors
def test_send(
    ctx: typer.Context,
    follow_up_id: Annotated[str, typer.Argument(help="The follow-up's id.", metavar="ID")],
    to: Annotated[
        str | None, typer.Option("--to", help="Push to this device token instead.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the payload and headers; send nothing.")
    ] = False,
    mark_sent: Annotated[
        bool,
        typer.Option("--mark-sent", help="On success, also write the message and mark it sent."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Send even a cancelled one.")] = False,
) -> None:
    """Push one follow-up now, whatever its time, and show exactly what went out.

    Prints the payload, the headers and the push service's answer (APNs or FCM, by the
    token). Changes nothing unless --mark-sent.

    Exit 2 on a malformed id or no usable token, 1 when not found, cancelled (without
    --force) or the push failed.

    Example:

        followups test-send 3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20 --dry-run
        followups test-send 3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20 --to TOKEN
    """
    from datetime import timedelta

    from followup_cli import render
    from followup_cli import testsend as testsend_mod
    from followup_cli.db import Database
    from followup_cli.push.factory import make_pusher
    from followup_cli.scheduling import parse_uuid
    from followup_cli.vocabulary import Outcome

    follow_up_id = parse_uuid(follow_up_id)
    settings = _settings(ctx)
    if not dry_run:
        settings_mod.require_push_config(settings)
    with Database(settings.database_url, create=False) as db:
        try:
            prepared = testsend_mod.prepare(db, follow_up_id, to, force, settings)
        except testsend_mod.NoToken as exc:
            raise ConfigError(str(exc)) from None
        render.test_send_request(prepared, settings.push, dry_run)
        if dry_run:
            return
        pusher = make_pusher(settings, db)
        try:
            result = testsend_mod.send(
                db, pusher, prepared, mark_sent, timedelta(seconds=settings.lease_seconds)
            )
        finally:
            pusher.close()
    render.test_send_outcome(result)
    if result.outcome is None or result.outcome.kind != Outcome.SENT:
        raise typer.Exit(EXIT_FAILURE)


# -- show -------------------------------------------------------------------------------


@app.command(cls=_Command, name="show")
@cli_errors
def show(
    ctx: typer.Context,
    follow_up_id: Annotated[str, typer.Argument(help="The follow-up's id.", metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as one JSON object.")] = False,
) -> None:
    """Show one follow-up's whole story, for support: did the parent get it?

    Its status, due time and lateness, when it was sent or why it failed, whether it is
    held, waiting to be retried or claimed by a run now, every push attempt with the
    push service's answer and id, the in-app message's time, and the runs and hosts that
    handled it. Never the message text, the child's name or age, or the whole device
    token (masked as the logs show it). Reads only.

    Exit 2 on a malformed id, 1 when not found.

    Example:

        followups show 3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20
        followups show 3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20 --json
    """
    from followup_cli import render
    from followup_cli.db import Database
    from followup_cli.scheduling import parse_uuid
    from followup_cli.story import gather

    follow_up_id = parse_uuid(follow_up_id)
    with Database(_settings(ctx).database_url, create=False) as db:
        story = gather(db, follow_up_id)
    if as_json:
        render.show_story_json(story)
    else:
        render.show_story(story)


# -- db ---------------------------------------------------------------------------------


@db_app.command(cls=_Command, name="upgrade")
@cli_errors
def db_upgrade(
    ctx: typer.Context,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it (for a DBA).")
    ] = False,
) -> None:
    """Create or update the schema (idempotent; the app's rows are never touched).

    First checks the app's schema, as `db check` does: an error stops it before it
    changes anything (exit 1); warnings are printed and the upgrade goes on.

    Example:

        followups db upgrade
        followups db upgrade --sql > followups-schema.sql
    """
    from followup_cli import migrate

    settings = _settings(ctx)
    if sql:
        migrate.upgrade_sql(settings.database_url, sys.stdout)
        return
    from followup_cli import render, schemacheck
    from followup_cli.db import Database

    with Database(settings.database_url) as db:
        findings = schemacheck.run(db, schemacheck.APP_CHECKS)
        render.schema_findings(findings)
        problems = schemacheck.errors(findings)
        if problems:
            fail(
                f"the app's schema would make delivery fail ({len(problems)} error(s) above); "
                "nothing was changed. Apply the fixes, then run `followups db upgrade` again"
            )
        before, after = migrate.upgrade(db)
        where = settings.safe_database_url
        if before == after:
            print(f"Schema already at revision {after} ({where}).")
        else:
            print(f"Schema upgraded from {before or 'empty'} to revision {after} ({where}).")
        # Advice only: the exit code stays the upgrade's.
        render.schema_findings(schemacheck.run(db, schemacheck.ACCESS_CHECKS))


@db_app.command(cls=_Command, name="grants")
@cli_errors
def db_grants(
    ctx: typer.Context,
    role: Annotated[
        str, typer.Argument(help="The role cron connects as (as \\du shows it).", metavar="ROLE")
    ],
    create: Annotated[
        bool,
        typer.Option("--create", help="Create the role first when it does not exist."),
    ] = False,
) -> None:
    """Print the GRANTs and policies a least-privilege runtime role needs (PostgreSQL).

    They cover send-due, retry-failed, stats, cleanup and test-send on the schema the
    tables are in. Apply them as the tables' owner, and again after each db upgrade.
    Reads the catalogs only; changes nothing. Refuses (exit 2) a role the app's REST API
    acts as (anon, authenticated, service_role, authenticator) or that one of them
    belongs to, PUBLIC, a superuser, a role with BYPASSRLS, and a role that does not
    exist unless --create. Exit 2 on SQLite or a bad role name, 1 when the tables are
    missing.

    Example:

        followups db grants followups_runtime --create > followups-grants.sql
    """
    from followup_cli import render
    from followup_cli.db import Database
    from followup_cli.security import runtime_grants

    with Database(_settings(ctx).database_url, create=False) as db:
        script = runtime_grants(db, role, create=create)
    render.grant_script(script)


@db_app.command(cls=_Command, name="check")
@cli_errors
def db_check(
    ctx: typer.Context,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="The runtime role whose grants and policies to check (PostgreSQL; "
            "default: the connected user).",
        ),
    ] = None,
) -> None:
    """Check the app's schema for what would make delivery fail; read-only, for a DBA.

    One line per finding with the SQL that fixes it: a status CHECK or enum without
    'sent' or 'failed', NOT NULL columns of follow_up_messages this tool does not fill,
    triggers on the app's tables, foreign keys from follow_up_messages, and tables the
    API roles (anon, authenticated) can read. On PostgreSQL, as the runtime role
    (--role) meets the database: app tables under row level security without a policy
    for it, app triggers that run as it (SECURITY INVOKER), and privileges it lacks.
    Exit 1 when any is an error, 0 when there are only warnings or none.

    Example:

        followups --database-url postgresql+psycopg://dba@db/app db check
        followups db check --role followups_runtime
    """
    from followup_cli import render, schemacheck
    from followup_cli.db import Database

    with Database(_settings(ctx).database_url, create=False) as db:
        findings = schemacheck.run(db, role=role)
    render.schema_findings(findings)
    render.schema_check_summary(findings)
    if schemacheck.errors(findings):
        raise typer.Exit(EXIT_FAILURE)


# -- schedule / cancel ------------------------------------------------------------------


@app.command(cls=_Command, name="schedule")
@cli_errors
def schedule(
    ctx: typer.Context,
    text: Annotated[
        str, typer.Option("--text", help="The message the parent will read.")
    ] = "How is your child feeling today?",
    user: Annotated[str, typer.Option("--user", help="The parent's user id.")] = "demo-parent",
    conversation: Annotated[
        str | None, typer.Option("--conversation", help="Conversation UUID (default: a new one).")
    ] = None,
    in_: Annotated[
        str | None, typer.Option("--in", help="Due after this long: 30s, 10m, 2h, 1d.")
    ] = None,
    at: Annotated[str | None, typer.Option("--at", help="Due at this ISO-8601 time.")] = None,
    urgency: Annotated[str, typer.Option("--urgency", help="routine or urgent.")] = "routine",
    token: Annotated[
        str | None,
        typer.Option(
            "--token", help="APNs device token (64 hex characters) or FCM registration token."
        ),
    ] = None,
    child_name: Annotated[
        str | None, typer.Option("--child-name", help="The child's name, as the app stores it.")
    ] = None,
    provider_name: Annotated[
        str | None, typer.Option("--provider-name", help="Shown as 'Follow-up from Dr. NAME'.")
    ] = None,
) -> None:
    """Schedule a follow-up exactly as the app does; prints its id.

    Example:

        followups schedule --text "How is Maya's fever?" --in 10m --urgency urgent
        followups schedule --at 2026-11-28T14:30:00Z --token TOKEN
    """
    from followup_cli.db import Database
    from followup_cli.scheduling import new_follow_up
    from followup_cli.scheduling import schedule as run_schedule

    new = new_follow_up(
        text=text,
        user_id=user,
        conversation=conversation,
        due_in=in_,
        due_at=at,
        urgency=urgency,
        token=token,
        child_name=child_name,
        provider_name=provider_name,
    )
    with Database(_settings(ctx).database_url, create=False) as db:
        follow_up_id = run_schedule(db, new)
    print(follow_up_id)


@app.command(cls=_Command, name="cancel")
@cli_errors
def cancel(
    ctx: typer.Context,
    follow_up_id: Annotated[str, typer.Argument(help="The follow-up's id.", metavar="ID")],
) -> None:
    """Cancel a scheduled follow-up, as the app's cancel does.

    Exit 1 when it is unknown or already sent.

    Example:

        followups cancel 3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20
    """
    from followup_cli.db import Database
    from followup_cli.scheduling import cancel as run_cancel
    from followup_cli.scheduling import parse_uuid

    follow_up_id = parse_uuid(follow_up_id)
    with Database(_settings(ctx).database_url, create=False) as db:
        run_cancel(db, follow_up_id)
    print(f"Cancelled {follow_up_id}.")


def main() -> None:
    """Run the command; a usage error is one `Error:` line and exit 2, like every other
    error (not the framework's box), and nothing escapes as a traceback."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        print("Error: aborted", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except typer.TyperException as exc:  # the command line could not be read: usage
        message = _usage_message(exc)
        if message:  # a bare group prints its help itself
            print(f"Error: {message}", file=sys.stderr)
        sys.exit(int(getattr(exc, "exit_code", EXIT_USAGE)))
    except Exception as exc:  # the last guard: one line, no traceback, no data
        if os.environ.get("FOLLOWUPS_DEBUG"):
            raise
        print(
            f"Error: unexpected {type(exc).__name__}; run again with FOLLOWUPS_DEBUG=1 "
            "for the traceback",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILURE)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _usage_message(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    message = str(format_message() if callable(format_message) else exc).strip()
    if not message:
        return ""
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "followups"
    return f"{' '.join(message.split())} (see '{path} --help')"
