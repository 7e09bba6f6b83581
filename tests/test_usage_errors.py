"""The command line as cron and people meet it, through the installed entry point: a
usage error is one `Error:` line and exit 2, `--version` prints the version."""

from __future__ import annotations

import pytest

from followup_cli import __version__
from tests.helpers import followups


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("send-due", "--batch-size", "abc"), "Invalid value for '--batch-size'"),
        (("stats", "--no-such-option"), "No such option: --no-such-option"),
        (("nosuch",), "No such command 'nosuch'."),
        (("retry-failed", "--id"), "Option '--id' requires an argument."),
    ],
)
def test_a_usage_error_is_one_error_line_and_exit_2(args: tuple[str, ...], said: str) -> None:
    result = followups(None, *args)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and said in line, line
    assert line.endswith("--help')")
    assert "╭" not in result.stderr and result.stdout == ""


def test_version() -> None:
    result = followups(None, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"followups {__version__}\n",
        "",
    )


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (("cancel", "--help"), "cancel [OPTIONS] ID"),
        (("test-send", "--help"), "test-send [OPTIONS] ID"),
        (("db", "grants", "--help"), "db grants [OPTIONS] ROLE"),
    ],
)
def test_help_names_arguments_plainly(args: tuple[str, ...], usage: str) -> None:
    result = followups(None, *args, env={"COLUMNS": "100"})
    assert result.returncode == 0
    assert usage in result.stdout
    assert "{" not in result.stdout.split("Usage:")[1].splitlines()[0]


def test_help_shows_an_id_option_and_a_default_once() -> None:
    retry = followups(None, "retry-failed", "--help", env={"COLUMNS": "100"}).stdout
    assert "<list[str]>" not in retry and "--id" in retry
    cleanup = followups(None, "cleanup", "--help", env={"COLUMNS": "100"}).stdout
    assert "90d. [default: 90d]" not in cleanup and "[default: 90d]" in cleanup
