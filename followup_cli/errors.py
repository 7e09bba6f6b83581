"""The failures the command line turns into one `Error: ...` line, each with its exit code.

The CLI maps them by class (cli.cli_errors): a subclass of FollowupsError exits with its
`exit_code`. Database errors (SQLAlchemy's) exit 1 there too. Light on imports: the idle
run reads settings, which raise ConfigError.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and failed: not found, conflict, database, push
EXIT_USAGE = 2  # the command was given something wrong: fix the call or the settings


class FollowupsError(Exception):
    """A known failure: its message is safe to print (no message text, no whole token)."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class ConfigError(FollowupsError, ValueError):
    """A configuration or usage value is wrong; the CLI prints it and exits 2."""

    exit_code = EXIT_USAGE


class NoToken(ConfigError):
    """test-send: neither the follow-up nor --to has a usable device token (exit code 2)."""


class NotFound(FollowupsError, LookupError):
    """No follow-up with that id (exit code 1)."""


class Conflict(FollowupsError, RuntimeError):
    """The follow-up is not in a state that allows the operation (exit code 1)."""
