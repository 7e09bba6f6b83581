"""Help screens: no value shown for flags, paragraphs that wrap, examples at the end,
printed as typed, right under their heading."""

from __future__ import annotations

import inspect
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from followup_cli.cli import app

runner = CliRunner()


def all_commands() -> list[list[str]]:
    """Every command of the app, as its words (db upgrade -> ["db", "upgrade"])."""
    commands: list[list[str]] = []
    for name, command in get_command(app).commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        commands += [[name, sub] for sub in subcommands] if subcommands else [[name]]
    return commands


COMMANDS = all_commands()


def render_help(command: list[str], columns: int) -> list[str]:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return [line.rstrip() for line in result.stdout.splitlines()]


def docstring(command: list[str]) -> str:
    group = get_command(app)
    for name in command:
        group = group.commands[name]  # type: ignore[attr-defined]
    return inspect.cleandoc(group.help or "")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_at_80_columns_shows_no_bool_and_ends_with_examples(command: list[str]) -> None:
    """No <bool> after a flag, nothing wider than 80, and the text ends with examples."""
    lines = render_help(command, 80)
    assert not any("<bool>" in line for line in lines)
    assert all(len(line) <= 80 for line in lines)
    text_end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    example = lines.index(" Example:")
    examples = [line.strip() for line in lines[example + 1 : text_end] if line.strip()]
    assert examples, command
    assert all(re.match(r"(FOLLOWUPS_\w+=\S+ )?followups ", e) for e in examples), examples
    assert all(" ".join(command) in e for e in examples), examples
    # Right under "Example:", one per line, no blank lines among or around them.
    assert [line.strip() for line in lines[example + 1 : example + 1 + len(examples)]] == examples
    assert all(not line.strip() for line in lines[example + 1 + len(examples) : text_end])
    assert text_end - (example + 1 + len(examples)) <= 1


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_paragraphs_wrap_as_paragraphs(command: list[str]) -> None:
    """On a wide terminal each paragraph of the docstring is one line: the line breaks
    in the source do not cut sentences."""
    lines = {line.strip() for line in render_help(command, 1000)}
    prose = docstring(command).split("Example:")[0]
    for paragraph in filter(None, (p.strip() for p in prose.split("\n\n"))):
        assert " ".join(paragraph.replace("`", "").split()) in lines, paragraph
