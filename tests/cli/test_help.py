"""Every verb's --help reads as plain text: no reST markup leaks into the terminal."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from gptforge.cli.main import app
from typer.testing import CliRunner


def _verbs(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if hasattr(command, "commands"):  # a group
        return [v for name, sub in command.commands.items() for v in _verbs(sub, (*path, name))]
    return [path]


VERBS = _verbs(typer.main.get_command(app))


def test_every_verb_is_found():
    assert {("train",), ("generate",), ("demo",), ("convert", "to-hf")} <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_is_plain_text(verb):
    result = CliRunner().invoke(app, [*verb, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (
        "``" not in result.output
        and ":class:" not in result.output
        and ":func:" not in result.output
    )
