"""DDP through torchrun with gloo on CPU: 2 processes match 1 process with the same global batch.

Tolerance: per-step training loss within 1e-4 absolute and final weights within 1e-4 — the two
runs differ only in the order of floating-point reductions (gradient all-reduce vs one batch).
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from gptforge.training.metrics import read_metrics
from safetensors.torch import load_file

from tests.training.helpers import PYTHON, child_env

pytestmark = pytest.mark.slow  # two torchrun jobs: ~30 s of CPU

STEPS = 4


def _run(out, data_dir, nproc: int, batch_size: int) -> None:
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "gptforge.training",
        "train",
        "--preset",
        "debug",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--max-steps",
        str(STEPS),
        "--batch-size",
        str(batch_size),
        "--grad-accum",
        "2",
        "--context-length",
        "32",
        "--eval-interval",
        "2",
        "--eval-batches",
        "2",
        "--checkpoint-interval",
        "2",
        "--log-interval",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_two_gloo_ranks_match_one_process(tmp_path, data_dir):
    _run(tmp_path / "one", data_dir, nproc=1, batch_size=4)
    _run(tmp_path / "two", data_dir, nproc=2, batch_size=2)
    one = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "train"]
    two = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-4, rtol=0)
