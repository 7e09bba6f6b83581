"""Values at the edges of what the command line and the settings take: each is one
`Error:` line and exit 2, or, after a run, a warning that leaves the run's own result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from followup_cli.db import Database
from followup_cli.errors import ConfigError
from followup_cli.metrics import check_metrics_file
from followup_cli.push.fcm.message import fcm_headers
from followup_cli.settings import VARIABLES, show_default
from followup_cli.tables import follow_up_requests
from tests.helpers import app_row, cli, followups, row

README = Path(__file__).resolve().parent.parent / "README.md"
FCM_TOKEN = "dGhpcyBpcyBhbiBpZA:APA91bH" + "x1_Y-z" * 25
TEXT = "How is Maya's fever today?"


def count_requests(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(follow_up_requests)) or 0)


# -- durations and numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["stats", "--since", "3000000w"], "--since"),
        (["stats", "--since", "9" * 30 + "s"], "--since"),
        (["cleanup", "--older-than", "3000000w"], "--older-than"),
        (["retry-failed", "--since", "3000000w"], "--since"),
        (["schedule", "--in", "3000000w"], "--in"),
    ],
)
def test_a_duration_past_a_hundred_years_is_a_usage_error(
    db_url: str, db: Database, args: list[str], option: str
) -> None:
    """now minus (or plus) it would leave the calendar: one line, exit 2, nothing written."""
    result = followups(db_url, *args)
    assert (result.returncode, result.stderr) == (
        2,
        f"Error: {option} is too long (at most 100 years)\n",
    )
    assert count_requests(db) == 0


def test_a_hundred_years_is_still_taken(db_url: str, db: Database) -> None:
    """The bound itself is a valid window."""
    result = followups(db_url, "stats", "--since", "36500d", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["window_seconds"] == 36500 * 86400


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FOLLOWUPS_BATCH_SIZE": "99999999999999999999"},
            "FOLLOWUPS_BATCH_SIZE must be at most 10000, got a larger number",
        ),
        (
            {"FOLLOWUPS_LEASE_SECONDS": "99999999999999999999"},
            "FOLLOWUPS_LEASE_SECONDS must be at most 86400, got a larger number",
        ),
        (
            {"FOLLOWUPS_PUSH_CONCURRENCY": "1000001"},
            "FOLLOWUPS_PUSH_CONCURRENCY must be at most 1000, got 1000001",
        ),
        (
            {"FOLLOWUPS_OUTAGE_THRESHOLD": "99999999999999999999"},
            "FOLLOWUPS_OUTAGE_THRESHOLD must be at most 1000, got a larger number",
        ),
        (
            {"FOLLOWUPS_CHECK_MIN_ATTEMPTS": "99999999999999999999"},
            "FOLLOWUPS_CHECK_MIN_ATTEMPTS must be at most 1000000, got a larger number",
        ),
        (
            {"FOLLOWUPS_PUSH_TIMEOUT": "1e999"},
            "FOLLOWUPS_PUSH_TIMEOUT must be at most 300, got inf",
        ),
        (
            {"FOLLOWUPS_RETRY_BASE_SECONDS": "nan"},
            "FOLLOWUPS_RETRY_BASE_SECONDS must be a number, got 'nan'",
        ),
        (
            {"FOLLOWUPS_RETRY_PAUSE": "3000000w"},
            "FOLLOWUPS_RETRY_PAUSE is too long (at most 100 years)",
        ),
    ],
)
def test_a_setting_out_of_range_is_a_configuration_error(
    db_url: str, db: Database, env: dict[str, str], message: str
) -> None:
    """A huge number in a FOLLOWUPS_* variable: one line, exit 2, before anything is claimed."""
    fid = app_row(db)
    result = followups(db_url, "send-due", env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"Error: {message}"]
    assert row(db, fid).status == "scheduled"


def test_a_batch_size_option_out_of_range_is_a_usage_error(db_url: str, db: Database) -> None:
    """--batch-size goes through the same bounds as FOLLOWUPS_BATCH_SIZE."""
    fid = app_row(db)
    result = cli(db_url, "send-due", "--batch-size", "99999999999999999999")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: FOLLOWUPS_BATCH_SIZE must be at most 10000, got a larger number"
    ]
    assert row(db, fid).status == "scheduled"


def test_the_readme_states_every_numeric_range() -> None:
    """Each numeric variable's README row gives the bounds settings.py enforces."""
    readme = README.read_text()
    for var in VARIABLES:
        if var.kind not in ("int", "float"):
            continue
        cell = re.search(rf"^\| `{var.name}` \|.*$", readme, re.M)
        assert cell is not None, var.name
        low, high = show_default(var.minimum), show_default(var.maximum)
        assert f"({low} to {high})" in cell.group(0) or f"at most {high})" in cell.group(0), (
            var.name
        )


# -- schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", ""], "Error: --user must not be empty"),
        (["--user", "   "], "Error: --user must not be empty"),
        (["--text", ""], "Error: --text must not be empty"),
    ],
)
def test_schedule_refuses_an_empty_recipient_or_text(
    db_url: str, db: Database, args: list[str], message: str
) -> None:
    """A follow-up nobody could receive is never written."""
    result = followups(db_url, "schedule", *args)
    assert (result.returncode, result.stderr.splitlines()) == (2, [message])
    assert count_requests(db) == 0


# -- the metrics file -----------------------------------------------------------------------


def test_check_metrics_file_wants_an_existing_directory(tmp_path: Path) -> None:
    """A missing directory, or a file where the directory should be, is a ConfigError."""
    check_metrics_file(tmp_path / "followups.prom")
    with pytest.raises(ConfigError, match="does not exist"):
        check_metrics_file(tmp_path / "missing" / "followups.prom")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_metrics_file(blocker / "followups.prom")


def test_a_metrics_file_in_a_missing_directory_is_refused_before_the_run(
    db_url: str, db: Database, tmp_path: Path
) -> None:
    """One `Error:` line, exit 2, nothing claimed, and no directory made."""
    missing = tmp_path / "missing"
    target = missing / "followups.prom"
    fid = app_row(db)
    result = followups(db_url, "send-due", "--metrics-file", str(target))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Error: --metrics-file {str(target)!r}: the directory {str(missing)!r} does not exist"
    ]
    assert row(db, fid).status == "scheduled"
    assert not missing.exists()


def test_a_metrics_file_that_cannot_be_written_is_a_warning(
    db_url: str, db: Database, tmp_path: Path
) -> None:
    """The write fails after the run: a warning; the summary and exit 0 stay."""
    textfile = tmp_path / "textfile"
    target = textfile / "followups.prom"
    target.mkdir(parents=True)  # a directory where the file should go: the rename fails
    fid = app_row(db)
    result = followups(db_url, "send-due", "--metrics-file", str(target))
    assert result.returncode == 0, result.stderr
    assert "send-due: claimed 1, sent 1" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert [w for w in warnings if f"metrics file {target} cannot be written" in w]
    assert "Error:" not in result.stderr
    assert row(db, fid).status == "sent"
    assert list(textfile.iterdir()) == [target]  # no temporary file left behind


# -- the log push backend -----------------------------------------------------------------


def _push_line(stderr: str) -> str:
    [line] = [ln for ln in stderr.splitlines() if "push (log backend, not sent)" in ln]
    return line


def test_log_backend_describes_an_fcm_push_with_fcm_headers(db_url: str, db: Database) -> None:
    """An FCM token: FCM's request headers, no APNs header; the body's length, not its text."""
    app_row(db, device_token=FCM_TOKEN, display_text=TEXT)
    result = followups(db_url, "send-due", env={"FOLLOWUPS_PUSH": "log"})
    assert result.returncode == 0, result.stderr
    line = _push_line(result.stderr)
    assert "service=fcm" in line
    assert f"headers={json.dumps(fcm_headers(), sort_keys=True)} " in line
    assert "apns-" not in line
    assert f"body_length={len(TEXT)}" in line
    assert TEXT not in result.stdout + result.stderr
    assert FCM_TOKEN not in result.stdout + result.stderr


def test_log_backend_still_describes_an_apns_push_with_apns_headers(
    db_url: str, db: Database
) -> None:
    """An APNs token keeps APNs' headers."""
    app_row(db, display_text=TEXT)
    result = followups(db_url, "send-due", env={"FOLLOWUPS_PUSH": "log"})
    assert result.returncode == 0, result.stderr
    line = _push_line(result.stderr)
    assert "service=apns" in line
    assert '"apns-push-type": "alert"' in line
    assert f"body_length={len(TEXT)}" in line
    assert TEXT not in result.stdout + result.stderr
