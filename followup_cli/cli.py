"""The `followups` command line: parse, build settings, call one service, render, exit.

Exit codes (docs/cli.md): 0 done; 1 the command could not do its job (database
unreachable, APNs configuration rejected, APNs outage, not found); 2 bad usage or
configuration. Errors are one line on stderr, never a traceback (FOLLOWUPS_DEBUG=1 shows
it), and never contain message text, child data or secrets.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from followup_cli import settings as settings_mod
from followup_cli.settings import ConfigError, Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="followups",
    help="Deliver clinicians' scheduled follow-ups to parents: APNs push and in-app message.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("followups.cli")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def cli_errors(func: F) -> F:
    """Turn the known failures into one `Error: ...` line and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from followup_cli.db import describe_error
        from followup_cli.scheduling import Conflict, NotFound

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except (NotFound, Conflict) as exc:
            fail(str(exc), EXIT_FAILURE)
        except SQLAlchemyError as exc:
            if os.environ.get("FOLLOWUPS_DEBUG"):
                raise
            fail(f"database error: {describe_error(exc)}", EXIT_FAILURE)
        except KeyboardInterrupt:
            fail("interrupted; claimed follow-ups return to the queue when their lease ends", 130)

    return wrapper  # type: ignore[return-value]


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
            help="SQLAlchemy URL; overrides FOLLOWUPS_DATABASE_URL. Default: sqlite:///followups.db",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="text (default) or json; overrides FOLLOWUPS_LOG_FORMAT."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
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


@app.command("send-due")
@cli_errors
def send_due(
    ctx: typer.Context,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Follow-ups claimed per batch (FOLLOWUPS_BATCH_SIZE, 500)."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Deliver at most this many in this run.")
    ] = None,
) -> None:
    """Deliver every follow-up that is due now: push, in-app message, status sent.

    Cron runs it every minute under flock (see crontab.example). Exit 0 when the run
    completed, 1 when it stopped (database unreachable, APNs configuration rejected,
    APNs outage), 2 on bad configuration.

    Example: FOLLOWUPS_PUSH=log followups send-due
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    settings = _settings(ctx).with_overrides(batch_size=batch_size)
    settings_mod.require_push_config(settings)

    from followup_cli import render
    from followup_cli.alerts import make_alerter
    from followup_cli.db import Database
    from followup_cli.delivery import send_due as run_send_due
    from followup_cli.push import make_pusher

    db = Database(settings.database_url)
    pusher = make_pusher(settings)
    try:
        report = run_send_due(
            db, pusher, settings, make_alerter(settings.alert_webhook_url), limit=limit
        )
    finally:
        pusher.close()
        db.close()
    render.send_due_summary(report)
    if report.exit_code != EXIT_OK:
        fail(render.stop_line(report), report.exit_code)


# -- retry-failed -----------------------------------------------------------------------


@app.command("retry-failed")
@cli_errors
def retry_failed(
    ctx: typer.Context,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Only this follow-up (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only those that failed within: 30m, 24h, 7d.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only this failure reason, e.g. Unregistered.")
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

    Without filters every failed follow-up is considered. Those that failed on their
    device token (BadDeviceToken, Unregistered, DeviceTokenNotForTopic) are held back
    unless the app stored a new token since, or --in-app-only is given.

    Example: followups retry-failed --since 24h --reason ServiceUnavailable --dry-run
    """
    from followup_cli import render
    from followup_cli.clock import utcnow
    from followup_cli.db import Database
    from followup_cli.requeue import retry_failed as run_retry_failed
    from followup_cli.scheduling import parse_uuid

    try:
        wanted = [parse_uuid(value, "--id") for value in ids or []]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    failed_since = utcnow() - settings_mod.parse_duration(since, "--since") if since else None
    if reason is not None and not reason.strip():
        raise ConfigError("--reason must not be empty")
    db = Database(_settings(ctx).database_url)
    try:
        report = run_retry_failed(
            db,
            ids=wanted,
            failed_since=failed_since,
            reason=reason,
            in_app_only=in_app_only,
            dry_run=dry_run,
        )
    finally:
        db.close()
    render.requeue_report(report, wanted)


# -- db ---------------------------------------------------------------------------------


@db_app.command("upgrade")
@cli_errors
def db_upgrade(
    ctx: typer.Context,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it (for a DBA).")
    ] = False,
) -> None:
    """Create or update the schema (idempotent; the app's rows are never touched).

    Example: followups db upgrade --sql > followups-schema.sql
    """
    from followup_cli import migrate

    settings = _settings(ctx)
    if sql:
        migrate.upgrade_sql(settings.database_url, sys.stdout)
        return
    from followup_cli.db import Database

    db = Database(settings.database_url)
    try:
        before, after = migrate.upgrade(db)
    finally:
        db.close()
    where = settings.safe_database_url
    if before == after:
        print(f"Schema already at revision {after} ({where}).")
    else:
        print(f"Schema upgraded from {before or 'empty'} to revision {after} ({where}).")


# -- schedule / cancel ------------------------------------------------------------------


def _parse_at(value: str) -> datetime:
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"--at must be an ISO-8601 time like 2026-11-28T14:30:00Z, got {value!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@app.command("schedule")
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
        str | None, typer.Option("--token", help="APNs device token (64 hex characters).")
    ] = None,
    child_name: Annotated[str | None, typer.Option("--child-name")] = None,
    provider_name: Annotated[
        str | None, typer.Option("--provider-name", help="Shown as 'Follow-up from Dr. NAME'.")
    ] = None,
) -> None:
    """Schedule a follow-up exactly as the app does; prints its id.

    Example: followups schedule --text "How is Maya's fever today?" --in 10m --urgency urgent
    """
    import uuid

    from followup_cli.clock import utcnow
    from followup_cli.db import Database
    from followup_cli.delivery import is_valid_token, normalize_token
    from followup_cli.scheduling import NewFollowUp, parse_uuid
    from followup_cli.scheduling import schedule as run_schedule

    if in_ is not None and at is not None:
        raise ConfigError("give --in or --at, not both")
    if urgency not in ("routine", "urgent"):
        raise ConfigError(f"--urgency must be routine or urgent, got {urgency!r}")
    if not text.strip():
        raise ConfigError("--text must not be empty")
    when = utcnow()
    if in_ is not None:
        when += settings_mod.parse_duration(in_, "--in")
    elif at is not None:
        when = _parse_at(at)
    device_token = normalize_token(token)
    if device_token is not None and not is_valid_token(device_token):
        raise ConfigError("--token must be 64 hexadecimal characters")
    try:
        conversation_id = parse_uuid(conversation, "--conversation") if conversation else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    db = Database(_settings(ctx).database_url)
    try:
        follow_up_id = run_schedule(
            db,
            NewFollowUp(
                conversation_id=conversation_id or str(uuid.uuid4()),
                user_id=user,
                text=text,
                scheduled_for=when,
                urgency=urgency,
                device_token=device_token,
                child_name=child_name,
                provider_name=provider_name,
            ),
        )
    finally:
        db.close()
    print(follow_up_id)


@app.command("cancel")
@cli_errors
def cancel(
    ctx: typer.Context,
    follow_up_id: Annotated[str, typer.Argument(help="The follow-up's id.")],
) -> None:
    """Cancel a scheduled follow-up, as the app's cancel does.

    Exit 1 when it is unknown or already sent.

    Example: followups cancel 3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20
    """
    from followup_cli.db import Database
    from followup_cli.scheduling import cancel as run_cancel
    from followup_cli.scheduling import parse_uuid

    try:
        follow_up_id = parse_uuid(follow_up_id)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    db = Database(_settings(ctx).database_url)
    try:
        run_cancel(db, follow_up_id)
    finally:
        db.close()
    print(f"Cancelled {follow_up_id}.")


def main() -> None:
    try:
        app()
    except Exception as exc:  # the last guard: one line, no traceback, no data
        if os.environ.get("FOLLOWUPS_DEBUG"):
            raise
        print(
            f"Error: unexpected {type(exc).__name__}; run again with FOLLOWUPS_DEBUG=1 "
            "for the traceback",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILURE)
