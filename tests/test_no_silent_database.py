"""A cron job pointed at nothing says so: with FOLLOWUPS_DATABASE_URL unset and no
`followups.db` where it runs, every command but `db upgrade` exits 2 naming the path it
looked for, and creates no file; database errors name the database; an SQLite path in a
missing directory is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import followups


@pytest.mark.parametrize(
    "args",
    [
        ("send-due",),
        ("stats", "--check"),
        ("retry-failed",),
        ("cleanup",),
        ("db", "check"),
        ("schedule", "--text", "x"),
    ],
)
def test_unset_url_and_no_file_is_exit_2_and_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = followups(None, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    expected = tmp_path / "followups.db"
    assert line.startswith(f"Error: no SQLite database at {expected} (FOLLOWUPS_DATABASE_URL")
    assert list(tmp_path.iterdir()) == []


def test_db_upgrade_creates_it_and_then_the_rest_works(tmp_path: Path) -> None:
    assert followups(None, "db", "upgrade", cwd=tmp_path).returncode == 0
    assert (tmp_path / "followups.db").exists()
    assert followups(None, "send-due", cwd=tmp_path).returncode == 0
    # Tables and a recent run: healthy (the run before any send-due is not: below).
    check = followups(None, "stats", "--check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def test_stats_check_fails_before_any_send_due_run(tmp_path: Path) -> None:
    assert followups(None, "db", "upgrade", cwd=tmp_path).returncode == 0
    check = followups(None, "stats", "--check", cwd=tmp_path)
    assert check.returncode == 1
    assert "send-due has never run against this database" in check.stdout


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "followups.db"
    result = followups(f"sqlite:///{path}", "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Error: cannot create the SQLite database {path}: the directory {path.parent} "
        "does not exist"
    ]


def test_a_database_error_names_the_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    path.touch()  # a file, but not this tool's database
    result = followups(f"sqlite:///{path}", "stats", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: database error (SQLite {path}): ")
