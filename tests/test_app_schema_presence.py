"""`db check` on a database that is not the app's: no follow-up table at all, or one of
the app's names with other columns. Both would make send-due (and, for the second,
`db upgrade`) fail later; the check says so now."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from followup_cli.cli import app
from followup_cli.db import Database

runner = CliRunner()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def bare_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no tables, on each backend."""
    if request.param == "sqlite":
        (tmp_path / "bare.db").touch()  # a file, but no tables (a missing one is exit 2)
        return f"sqlite:///{tmp_path / 'bare.db'}"
    return str(request.getfixturevalue("empty_pg_url"))


def check(url: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["--database-url", url, "db", "check"])
    return result.exit_code, result.stdout.splitlines()


def test_a_database_without_the_apps_tables_is_an_error(bare_url: str) -> None:
    code, lines = check(bare_url)
    assert code == 1
    assert lines[0].startswith(
        "error: follow_up_requests does not exist here: this is not the app's database"
    )
    assert lines[-1] == "db check: 1 error(s), 0 warning(s)"
    # db upgrade, which creates them on a new database, does not stop on it.
    upgraded = runner.invoke(app, ["--database-url", bare_url, "db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert check(bare_url)[0] == 0


def test_a_foreign_table_of_the_apps_name_is_an_error_before_db_upgrade_fails(
    bare_url: str,
) -> None:
    db = Database(bare_url)
    with db.engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE follow_up_requests (id TEXT PRIMARY KEY, note TEXT, status TEXT)")
        )
    db.close()
    code, lines = check(bare_url)
    assert code == 1
    assert (
        "error: follow_up_requests has no column conversation_id, created_at, device_token, "
        "display_text, scheduled_for, sent_at, urgency, user_id, which this tool uses"
    ) in "\n".join(lines)
    upgraded = runner.invoke(app, ["--database-url", bare_url, "db", "upgrade"])
    assert upgraded.exit_code == 1
    assert "nothing was changed" in upgraded.stderr
