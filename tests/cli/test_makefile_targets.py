"""The Makefile's pipeline targets call the real ``gptforge`` CLI with flags it accepts.

``make -n`` prints each recipe without running it; the ``gptforge ...`` line is then parsed by the
CLI's own click command (``make_context`` checks every option name, value type and required
option without running the command), so a renamed flag fails here, not on a user's machine.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from gptforge.cli.main import app

ROOT = Path(__file__).resolve().parents[2]

# target -> (make variables, the subcommand path it must call)
TARGETS = {
    "demo": ({}, ["demo"]),
    "demo ": ({"PRESET": "debug", "DATA": "corpus.txt", "STEPS": "5"}, ["demo"]),
    "train": ({"STEPS": "10"}, ["train"]),
    "finetune": ({"DATA": "tasks.jsonl", "STEPS": "3"}, ["finetune"]),
    "generate": ({"PROMPT": "Once upon"}, ["generate"]),
    "convert-hf": ({}, ["convert", "to-hf"]),
    "convert-gguf": ({}, ["convert", "to-gguf"]),
    "convert-arch": ({}, ["convert", "arch"]),
    "convert-arch ": ({"PRESET": "mmrec-tiny"}, ["convert", "arch"]),
    "serve-tokenizer": ({}, ["serve", "tokenizer"]),
    "serve-generation": ({"PORT": "6000"}, ["serve", "generation"]),
}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def gptforge_args(target: str, variables: dict[str, str]) -> list[str]:
    """The arguments after ``gptforge`` in ``make -n TARGET``'s recipe."""
    cmd = ["make", "-n", "-s", "-C", str(ROOT), target] + [f"{k}={v}" for k, v in variables.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "gptforge " in line and "uv sync" not in line]
    assert len(lines) == 1, f"`{' '.join(cmd)}` has {len(lines)} gptforge lines:\n{out}"
    words = shlex.split(lines[0])
    if target.startswith("serve-"):  # servers replace the recipe's shell: signals reach them
        assert words[:2] == ["exec", ".venv/bin/gptforge"], lines[0]
        return words[2:]
    assert words[:4] == ["python3", "-m", "uv", "run"], lines[0]  # every recipe goes through uv run
    return words[words.index("gptforge") + 1 :]


def parse(args: list[str]) -> tuple[list[str], Any]:
    """Walk the command groups like the CLI would and parse the leaf's options (click context)."""
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "commands"):  # a group (typer vendors click, so no isinstance)
        name = rest.pop(0)
        assert name in command.commands, (
            f"no command {name!r} under {path}: {sorted(command.commands)}"
        )
        path.append(name)
        command = command.commands[name]
    return path, command.make_context(" ".join(path), rest)


@pytest.mark.parametrize("target", list(TARGETS))
def test_make_target_calls_the_cli_with_valid_flags(target: str) -> None:
    variables, want_path = TARGETS[target]
    args = gptforge_args(target.strip(), variables)
    path, ctx = parse(args)
    assert path == want_path
    for key, value in variables.items():  # each variable reaches the command
        if key in ("PRESET",) and target.strip() == "convert-arch":
            assert ctx.params["preset"] == value
        elif key == "STEPS":
            assert value in args
        else:
            assert any(value in a for a in args), (key, value, args)


def test_make_demo_passes_data_and_steps_only_when_given() -> None:
    assert gptforge_args("demo", {}) == ["demo", "--run-dir", "runs/demo", "--preset", "tiny"]
    args = gptforge_args("demo", {"DATA": "my corpus", "STEPS": "7", "RUN_DIR": "runs/x"})
    _, ctx = parse(args)
    assert ctx.params["data"] == "my corpus"
    assert ctx.params["steps"] == 7 and str(ctx.params["run_dir"]) == "runs/x"


def test_make_convert_arch_matches_the_source_unless_an_mmrec_preset_is_given() -> None:
    assert "--preset" not in gptforge_args("convert-arch", {})  # PRESET=tiny is a GPT preset
    assert "--preset" not in gptforge_args("convert-arch", {"PRESET": "debug"})
