"""`gptforge data prepare`, `train`, `finetune`, `chat` and `python -m gptforge.cli` (torchrun)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from gptforge.cli.main import app
from gptforge.training.config import FinetuneConfig, TrainConfig
from typer.testing import CliRunner

runner = CliRunner()


@pytest.mark.parametrize(("command", "cls"), [("train", TrainConfig), ("finetune", FinetuneConfig)])
def test_flags_are_the_config_fields(command, cls):
    import re

    result = runner.invoke(app, [command, "--help"], terminal_width=240)
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    for f in dataclasses.fields(cls):
        flag = "--from" if f.name == "from_run" else "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "--resume" in text


def test_module_entry_for_torchrun_is_the_same_command():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "gptforge.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--resume" in proc.stdout and "--parallel" in proc.stdout


def test_prepare_train_resume_and_errors(tmp_path, tokenizer_dir, texts):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts[:80]))
    data = tmp_path / "data"
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--input",
            str(corpus),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(data),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "val tokens (uint16)" in result.output
    run = tmp_path / "run"
    common = [
        "--no-progress",
        "--eval-interval",
        "0",
        "--context-length",
        "32",
        "--batch-size",
        "4",
    ]
    result = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "debug",
            "--data",
            str(data),
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--n-layer",
            "1",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "done: step 2" in result.output
    assert json.loads((run / "config.json").read_text())["n_layer"] == 1
    # A changed model or setting on resume is named, as one line, before anything runs.
    result = runner.invoke(app, ["train", "--resume", str(run), "--block-size", "64"])
    assert result.exit_code == 1 and "--context-length 32 -> 64" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--resume", str(run), "--lr", "0.01"])
    assert result.exit_code == 1 and "add --override" in result.output
    result = runner.invoke(
        app, ["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "done: step 3" in result.output
    saved = json.loads((run / "train_config.json").read_text())["config"]
    assert saved["max_steps"] == 3 and saved["context_length"] == 32
    # Errors are one line with the fix, not a traceback.
    result = runner.invoke(
        app, ["train", "--preset", "debug", "--data", str(tmp_path), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1 and "gptforge data prepare" in result.output
    result = runner.invoke(
        app, ["train", "--preset", "debug", "--data", str(data), "--out", str(run)]
    )
    assert result.exit_code == 1 and "--resume" in result.output


def test_data_prepare_shards_and_merge(tmp_path, tokenizer_dir, texts):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts[:60]))
    base = ["data", "prepare", "--input", str(corpus), "--tokenizer", str(tokenizer_dir)]
    base += ["--paragraphs", "--no-progress"]
    for index in range(2):
        out = str(tmp_path / f"p{index}")
        result = runner.invoke(app, [*base, "--out", out, "--shard", f"{index}/2"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "whole")])
    assert result.exit_code == 0 and "60 documents" in result.output, result.output
    merged = tmp_path / "merged"
    result = runner.invoke(
        app, ["data", "merge", str(tmp_path / "p1"), str(tmp_path / "p0"), "--out", str(merged)]
    )
    assert result.exit_code == 0 and "60 documents" in result.output, result.output
    whole = json.loads((tmp_path / "whole" / "meta.json").read_text())
    assert json.loads((merged / "meta.json").read_text())["checksum"] == whole["checksum"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "x"), "--shard", "2/2"])
    assert result.exit_code == 1 and "INDEX must be in [0, COUNT)" in result.output
    assert "Traceback" not in result.output
