"""Every ``gptforge ...`` command quoted in README.md and docs/*.md exists in the real CLI.

Commands in shell code blocks are parsed in full by the command's own click parser
(``make_context``: every option name, value type and required option, without running it).
Commands quoted inline in prose or tables (``gptforge convert to-hf --ckpt RUN_DIR``, with
``[optional]`` parts and ``a|b`` choices) must name an existing verb path, and every ``--flag``
they show must be one of that verb's options. Relative links must point at files in the repo.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from gptforge.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("bash", "sh", "shell", "console")  # plain fences hold pictures and output
_FENCE = re.compile(r"^```(\w*)\s*$")
_INLINE = re.compile(r"`(gptforge [^`]+)`")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _where(path: Path, lineno: int) -> str:
    return f"{path.relative_to(ROOT)}:{lineno}"


def block_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for each ``gptforge`` line of a shell code block."""
    found = []
    for doc in DOCS:
        fence: str | None = None
        pending = ""
        for i, raw in enumerate(doc.read_text().splitlines(), 1):
            m = _FENCE.match(raw.strip())
            if m:
                fence = m.group(1) if fence is None else None
                continue
            if fence not in SHELL_FENCES:
                continue
            line = pending + raw.strip().removeprefix("$ ")
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            code = line.split(" #")[0]
            for part in code.split(";"):
                if part.strip().startswith("gptforge "):
                    found.append((_where(doc, i), part.strip()))
    return found


def inline_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for each ``gptforge ...`` quoted inline."""
    found = []
    for doc in DOCS:
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            found += [(_where(doc, i), m.group(1)) for m in _INLINE.finditer(line)]
    return found


def resolve(words: list[str], group_ok: bool = False) -> tuple[list[str], Any, list[str]]:
    """Walk the command groups; returns the verb path, its click command and the rest.

    ``group_ok``: the words may stop at a group (prose names ``gptforge convert``).
    """
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(words)
    while hasattr(command, "commands"):  # a group (typer vendors click, so no isinstance)
        if group_ok and not rest:
            break
        assert rest, f"`gptforge {' '.join(path)}` needs a subcommand: {sorted(command.commands)}"
        name = rest.pop(0)
        assert name in command.commands, (
            f"no command {name!r} under `gptforge {' '.join(path)}`: {sorted(command.commands)}"
        )
        path.append(name)
        command = command.commands[name]
    return path, command, rest


def option_names(command: Any) -> set[str]:
    return {o for p in getattr(command, "params", []) for o in (*p.opts, *p.secondary_opts)}


def test_docs_quote_commands() -> None:
    assert len(block_commands()) > 20 and len(inline_commands()) > 10


@pytest.mark.parametrize(("where", "line"), block_commands(), ids=lambda v: str(v)[:60])
def test_code_block_command_parses(where: str, line: str) -> None:
    words = shlex.split(line)[1:]
    path, command, rest = resolve(words)
    try:
        command.make_context(" ".join(path), rest)
    except Exception as e:  # noqa: BLE001 - click's usage errors have several types
        pytest.fail(f"{where}: `{line}` does not parse: {e}")


@pytest.mark.parametrize(("where", "text"), inline_commands(), ids=lambda v: str(v)[:60])
def test_inline_command_names_a_verb_and_its_flags(where: str, text: str) -> None:
    words = re.sub(r"[\[\]]|\\\|", " ", text).split()[1:]
    path, command, rest = resolve(words, group_ok=True)
    known = option_names(command) | {"--help"}
    for flag in (w.split("=")[0] for w in rest if w.startswith("--")):
        assert flag in known, (
            f"{where}: `{text}`: {flag} is not an option of `gptforge {' '.join(path)}`: {sorted(known)}"
        )


def test_relative_links_point_at_files_in_the_repo() -> None:
    bad = []
    for doc in DOCS:
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            for target in _LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto: not files
                resolved = (doc.parent / target).resolve()
                if not resolved.is_relative_to(ROOT) or not resolved.exists():
                    bad.append(f"{_where(doc, i)}: {target}")
    assert not bad, bad
