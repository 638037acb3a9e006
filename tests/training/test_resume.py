"""Exact resume: a run SIGKILLed at step k and resumed equals an uninterrupted run, bit for bit."""

from __future__ import annotations

import signal
import subprocess

import torch
from gptforge.training.metrics import read_metrics
from gptforge.training.pretrain import pretrain
from safetensors.torch import load_file

from tests.training.helpers import PYTHON, child_env, debug_config

KILL_AT = 5  # checkpoints every 2 steps: the resumed run restarts from step 4
STEPS = 8

CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from tests.training.helpers import debug_config
from gptforge.training.pretrain import pretrain

def kill(step, model, row):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

cfg = debug_config({data!r}, {out!r}, max_steps={steps}, checkpoint_interval=2, dropout=0.1)
pretrain(cfg, resume={resume}, callbacks=[kill])
"""


def _child(data_dir, out, resume: bool, kill_at: int) -> subprocess.CompletedProcess:
    code = CHILD.format(
        kill_at=kill_at, data=str(data_dir), out=str(out), steps=STEPS, resume=resume
    )
    return subprocess.run(
        [PYTHON, "-c", code], env=child_env(), capture_output=True, text=True, timeout=240
    )


def test_sigkill_then_resume_is_bit_exact(tmp_path, data_dir):
    torch.set_num_threads(1)
    reference = pretrain(
        debug_config(
            data_dir, tmp_path / "ref", max_steps=STEPS, checkpoint_interval=2, dropout=0.1
        )
    )

    killed = _child(data_dir, tmp_path / "run", resume=False, kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert steps[-1] == "step_000004"

    resumed = _child(data_dir, tmp_path / "run", resume=True, kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    ref_rows = [r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if r["kind"] != "event"]
    run_rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] != "event"]
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in run_rows] == [
        (r["step"], r.get("loss"), r.get("val_loss")) for r in ref_rows
    ]
    assert reference.step == STEPS
    ref_w = load_file(tmp_path / "ref" / "model.safetensors")
    run_w = load_file(tmp_path / "run" / "model.safetensors")
    assert ref_w.keys() == run_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], run_w[key]), key
