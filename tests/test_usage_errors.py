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
