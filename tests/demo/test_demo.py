"""``gptforge demo`` end to end with the ``debug`` preset and a handful of steps.

One run (about 20-25 s of CPU: tokenizer, data, pre-training, fine-tuning, HF and
GGUF export with read-back, both gRPC services as subprocesses) feeds the checks; a second run
over the same folder must skip every stage.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from gptforge.cli.main import app
from gptforge.demo.pipeline import DemoError, PipelineReport
from gptforge.demo.report import SUMMARY_FILE, demo_command, run_demo
from gptforge.demo.stages import DemoSettings
from gptforge.training import TrainConfig
from gptforge.training.tasks import WORDS
from rich.console import Console
from typer.testing import CliRunner

STAGES = ["tokenizer", "pretrain", "finetune", "export", "serve"]


def write_corpus(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A small deterministic corpus with the instruction-task words, digits and capitals."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 50)))
        lines.append(
            f"Note {i}: {words}. {i % 10} + {i % 7} = {i % 10 + i % 7}. {words.upper()[:30]}"
        )
    path.write_text("\n\n".join(lines), encoding="utf-8")
    return path


def settings_for(run_dir: Path, corpus: Path, **overrides: Any) -> DemoSettings:
    values: dict[str, Any] = dict(
        run_dir=run_dir,
        preset="debug",
        data=str(corpus),
        steps=8,
        finetune_steps=4,
        eval_examples=6,
        device="cpu",
    )
    values.update(overrides)
    return DemoSettings(**values)


def run_captured(settings: DemoSettings, **kwargs: Any) -> tuple[PipelineReport, str]:
    out = io.StringIO()
    report = run_demo(settings, console=Console(file=out, width=200), **kwargs)
    return report, out.getvalue()


def test_demo_end_to_end_then_a_second_run_skips_completed_stages(tmp_path: Path) -> None:
    """One demo run feeds every check (a single test, so pytest-xdist never runs it twice)."""
    settings = settings_for(tmp_path / "run", write_corpus(tmp_path / "corpus.txt"))
    umask = os.umask(0o022)
    try:
        report, text = run_captured(settings)
    finally:
        os.umask(umask)
    check_every_stage_left_its_outputs_in_one_folder(settings, report)
    check_files_are_readable_by_others(settings)
    check_stage_results_hold_the_checked_numbers(settings, report)
    check_printed_summaries_and_commands_to_continue(settings, text)
    check_second_run_skips_every_completed_stage(settings)
    check_changed_steps_are_refused_with_the_fix(settings)


def check_every_stage_left_its_outputs_in_one_folder(
    settings: DemoSettings, report: PipelineReport
) -> None:
    run = settings.run_dir
    assert [(r.name, r.status) for r in report.records] == [(s, "ran") for s in STAGES]
    for rel in (
        "tokenizer/tokenizer.json",
        "data/meta.json",
        "pretrain/config.json",
        "pretrain/model.safetensors",
        "pretrain/plots/loss.png",
        "pretrain/metrics.jsonl",
        "finetune/model.safetensors",
        "finetune/chat.json",
        "finetune/tokenizer/tokenizer.json",
        "export/hf/config.json",
        "export/gguf/model.gguf",
        "serve/tokenizer.log",
        "serve/generation.log",
        SUMMARY_FILE,
    ):
        assert (run / rel).is_file(), rel
    markers = sorted(p.name for p in (run / "stages").glob("*.json"))
    assert markers == [f"{i:02d}-{s}.json" for i, s in enumerate(STAGES, start=1)]
    assert (run / "pretrain" / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_files_are_readable_by_others(settings: DemoSettings) -> None:
    """Under umask 022 every file is 0644 and every folder 0755, as any other tool writes them."""
    wrong = []
    for path in [settings.run_dir, *settings.run_dir.rglob("*")]:
        want = 0o755 if path.is_dir() else 0o644
        if stat.S_IMODE(path.stat().st_mode) != want:
            wrong.append(f"{path.relative_to(settings.run_dir)}: {oct(path.stat().st_mode)}")
    assert not wrong, wrong


def check_stage_results_hold_the_checked_numbers(
    settings: DemoSettings, report: PipelineReport
) -> None:
    tok = report.result("tokenizer")
    assert (
        256 < tok["n_vocab"] <= 512 and tok["sample_tokens"] > 0
    )  # the corpus may run out of merges
    pre = report.result("pretrain")
    batch = TrainConfig().batch_size  # the default recipe's
    assert pre["steps"] == 8 and pre["tokens_seen"] == 8 * batch * pre["context"]
    assert pre["context"] == 64 and pre["val_tokens"] > 0 and pre["vocab_size"] >= tok["n_vocab"]
    assert pre["train_loss"] < pre["uniform_loss"] + 0.5  # not diverged
    assert pre["sample"].startswith("The")
    fine = report.result("finetune")
    assert fine["steps"] == 4 and fine["held_out"] == 6
    assert 0.0 <= fine["accuracy_before"] <= 1.0 and 0.0 <= fine["accuracy_after"] <= 1.0
    chat = json.loads((settings.run_dir / "finetune" / "chat.json").read_text())
    assert chat["after"]["accuracy"] == fine["accuracy_after"]
    exp = report.result("export")
    assert exp["hf_class"] == "GPT2LMHeadModel" and exp["max_logit_diff"] <= 1e-3
    assert exp["gguf_arch"] == "gpt2" and exp["gguf_embd_max_diff"] <= 2e-3
    srv = report.result("serve")
    assert srv["tokenizer_exit_code"] == 0 and srv["generation_exit_code"] == 0
    assert srv["completion_tokens"] >= 1 and srv["stream_messages"] >= 1
    assert srv["tokenizer_target"] != srv["generation_target"]


def check_printed_summaries_and_commands_to_continue(settings: DemoSettings, text: str) -> None:
    run = settings.run_dir
    for heading in ("1/6 Tokenizer", "2/6 Pre-training", "3/6 Instruction fine-tuning",
                    "4/6 Export", "5/6 gRPC services", "6/6 Summary"):  # fmt: skip
        assert heading in text
    assert str(run / "pretrain" / "plots" / "loss.png") in text
    assert "held-out accuracy" in text and "before ->" in text
    assert f"gptforge chat --ckpt {run}/finetune" in text
    assert f"gptforge serve generation --ckpt {run}/finetune" in text
    assert f"gptforge train --resume {run}/pretrain" in text
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert summary["settings"]["preset"] == "debug"
    assert any(n["command"].startswith("gptforge chat") for n in summary["next"])


def check_second_run_skips_every_completed_stage(settings: DemoSettings) -> None:
    weights = settings.run_dir / "finetune" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    report, text = run_captured(settings)
    assert [r.status for r in report.records] == ["skipped"] * len(STAGES)
    assert text.count("skipped") >= len(STAGES) and "--redo pretrain" in text
    assert weights.stat().st_mtime_ns == before
    # the stored results are printed again, so the summary is complete
    assert report.result("finetune")["held_out"] == 6
    assert "held-out accuracy" in text


def check_changed_steps_are_refused_with_the_fix(settings: DemoSettings) -> None:
    changed = settings_for(settings.run_dir, Path(settings.data), steps=9)
    with pytest.raises(DemoError, match=r"steps: 8 -> 9.*--redo pretrain"):
        run_captured(changed)


def test_demo_command_reproduces_the_settings(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "r un", tmp_path / "c.txt")
    command = demo_command(settings)
    assert command.startswith(f"gptforge demo --run-dir '{tmp_path}/r un' --preset debug --data ")
    assert "--steps 8 --finetune-steps 4" in command and "--eval-examples 6 --device cpu" in command


def test_cli_unknown_preset_fails_with_the_valid_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--run-dir", str(tmp_path / "r"), "--preset", "huge"])
    assert result.exit_code == 1
    assert "unknown model preset 'huge'" in result.output and "tiny" in result.output
    assert not (tmp_path / "r").exists()


def test_cli_failed_stage_says_which_and_how_to_continue(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus.txt"
    result = CliRunner().invoke(
        app, ["demo", "--run-dir", str(tmp_path / "r"), "--preset", "debug", "--data", str(missing)]
    )
    assert result.exit_code == 1
    assert "stage 1/5 'tokenizer' failed" in result.output
    assert f"gptforge demo --run-dir {tmp_path}/r --preset debug --data {missing}" in result.output
