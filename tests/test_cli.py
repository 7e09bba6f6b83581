"""The command line: exit codes, one-line errors, schedule/cancel, and the summary."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from followup_cli.cli import app
from followup_cli.db import Database
from tests.helpers import app_row, messages, row

runner = CliRunner()


def invoke(db_url: str, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--database-url", db_url, *args], env=env)


def test_send_due_summary_names_counts_and_backend(db_url: str, db: Database) -> None:
    """The summary says what happened and which push backend was active."""
    app_row(db)
    app_row(db, device_token=None)
    result = invoke(db_url, "send-due")
    assert result.exit_code == 0, result.output
    assert "claimed 2, sent 2 (1 pushed, 1 in-app only), failed 0, skipped 0" in result.stdout
    assert "push backend: log" in result.stdout


def test_log_backend_never_logs_message_text_or_child_data(
    db_url: str, db: Database, capfd: pytest.CaptureFixture[str]
) -> None:
    """Health data stays out of logs: no text, no child name, the token masked."""
    app_row(db, display_text="Maya has a fever of 39.5", child_name="Maya")
    result = subprocess.run(
        [sys.executable, "-m", "followup_cli", "--database-url", db_url, "send-due"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    everything = result.stdout + result.stderr
    assert "push (log backend, not sent)" in everything
    assert "Maya" not in everything
    assert "39.5" not in everything
    assert "a" * 64 not in everything
    assert "aaaaaaaa\u2026" in everything


def test_schedule_writes_what_the_app_writes_and_send_due_delivers_it(
    db_url: str, db: Database
) -> None:
    """schedule -> row + clock badge; send-due delivers it; the badge stays."""
    conversation = str(uuid.uuid4())
    result = invoke(
        db_url,
        "schedule",
        "--conversation",
        conversation,
        "--text",
        "How is Maya's fever today?",
        "--urgency",
        "urgent",
        "--token",
        "AB" * 32,
    )
    assert result.exit_code == 0, result.output
    fid = result.stdout.strip()
    r = row(db, fid)
    assert (r.status, r.urgency, r.device_token) == ("scheduled", "urgent", "ab" * 32)
    assert invoke(db_url, "send-due").exit_code == 0
    assert row(db, fid).status == "sent"
    assert len(messages(db, fid)) == 1
    with db.engine.connect() as conn:
        from sqlalchemy import text

        flag = conn.execute(
            text(
                "SELECT schedule_followup FROM provider_review_requests WHERE conversation_id = :c"
            ),
            {"c": conversation},
        ).scalar_one()
    assert flag  # sending never clears the badge


def test_schedule_in_the_future_is_not_sent_yet(db_url: str, db: Database) -> None:
    """--in puts the follow-up in the future."""
    fid = invoke(db_url, "schedule", "--in", "10m").stdout.strip()
    assert invoke(db_url, "send-due").exit_code == 0
    r = row(db, fid)
    assert r.status == "scheduled"
    assert (r.follow_up_days, r.follow_up_hours, r.follow_up_minutes) in [(0, 0, 10), (0, 0, 9)]


def test_cancel_then_send_due_delivers_nothing(db_url: str, db: Database) -> None:
    """cancel does what the app's cancel does; a cancelled follow-up is never sent."""
    fid = invoke(db_url, "schedule").stdout.strip()
    result = invoke(db_url, "cancel", fid)
    assert result.exit_code == 0
    assert row(db, fid).status == "cancelled"
    assert invoke(db_url, "send-due").stdout.startswith("send-due: claimed 0")
    assert messages(db, fid) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cancel", "not-a-uuid"], "Error: id must be a UUID"),
        (["schedule", "--in", "soon"], "Error: --in must be a number followed by"),
        (["schedule", "--at", "tomorrow"], "Error: --at must be an ISO-8601 time"),
        (["schedule", "--urgency", "asap"], "Error: --urgency must be routine or urgent"),
        (
            ["schedule", "--token", "xyz"],
            "Error: --token must be an APNs device token (64 hexadecimal characters) or an "
            "FCM registration token",
        ),
        (["send-due", "--limit", "-1"], "Error: --limit must be between 1 and 100,000,000, got -1"),
        (["send-due", "--batch-size", "0"], "Error: --batch-size must be at least 1"),
    ],
)
def test_bad_options_exit_2_with_one_line(db_url: str, args: list[str], message: str) -> None:
    """Usage errors: exit 2, one line on stderr, no traceback."""
    result = invoke(db_url, *args)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_cancel_unknown_or_sent_exits_1(db_url: str, db: Database) -> None:
    """Not found and already sent are failures (exit 1), not usage errors."""
    unknown = str(uuid.uuid4())
    result = invoke(db_url, "cancel", unknown)
    assert (result.exit_code, result.stderr.strip()) == (
        1,
        f"Error: no follow-up with id {unknown}",
    )
    sent = app_row(db, status="sent")
    result = invoke(db_url, "cancel", sent)
    assert result.exit_code == 1
    assert "is sent; only a scheduled one can be cancelled" in result.stderr


def test_bad_environment_value_exits_2(tmp_path: Path) -> None:
    """A bad FOLLOWUPS_* value is one line and exit 2 before anything runs."""
    result = runner.invoke(app, ["send-due"], env={"FOLLOWUPS_PUSH": "pager"})
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "Error: FOLLOWUPS_PUSH must be log, apns, fcm or apns,fcm, got 'pager'"
    )


def test_apns_without_credentials_exits_2_before_claiming(db_url: str, db: Database) -> None:
    """FOLLOWUPS_PUSH=apns with no key: configuration error, nothing claimed."""
    fid = app_row(db)
    result = invoke(db_url, "send-due", env={"FOLLOWUPS_PUSH": "apns"})
    assert result.exit_code == 2
    assert "FOLLOWUPS_PUSH=apns needs FOLLOWUPS_APNS_KEY_FILE" in result.stderr
    assert row(db, fid).claimed_by is None


def test_unreachable_database_is_one_line_exit_1_without_password() -> None:
    """No server: one clear line, exit 1, and the password is not printed."""
    url = "postgresql+psycopg://app:s3cret-pass@127.0.0.1:1/none"
    result = subprocess.run(
        [sys.executable, "-m", "followup_cli", "--database-url", url, "send-due"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: database error (PostgreSQL 127.0.0.1:1/none): ")
    assert "s3cret-pass" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_missing_schema_says_to_run_db_upgrade(tmp_path: Path) -> None:
    """A database without tables: one line that names the fix."""
    (tmp_path / "empty.db").touch()
    result = invoke(f"sqlite:///{tmp_path / 'empty.db'}", "send-due")
    assert result.exit_code == 1
    assert "run `followups db upgrade` first" in result.stderr


def test_db_upgrade_reports_and_is_idempotent(tmp_path: Path) -> None:
    """db upgrade says what it did, and the second time that nothing was needed."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first = invoke(url, "db", "upgrade")
    assert first.exit_code == 0
    assert "Schema upgraded from empty to revision" in first.stdout
    second = invoke(url, "db", "upgrade")
    assert "Schema already at revision" in second.stdout


def test_every_command_is_documented() -> None:
    """Each command has help with an example, and docs/cli.md mentions it."""
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    commands = (
        ["send-due"],
        ["retry-failed"],
        ["stats"],
        ["cleanup"],
        ["test-send"],
        ["show"],
        ["db", "upgrade"],
        ["db", "grants"],
        ["db", "check"],
        ["schedule"],
        ["cancel"],
    )
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.stdout, command
        assert f"followups {' '.join(command)}" in docs, command


def test_json_log_format_writes_one_json_object_per_line(db_url: str, db: Database) -> None:
    """--log-format json: every log line parses, and the privacy rule still holds."""
    import json

    app_row(db, display_text="Maya's fever", child_name="Maya")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "followup_cli",
            "--database-url",
            db_url,
            "--log-format",
            "json",
            "send-due",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)
    assert "Maya" not in result.stderr
