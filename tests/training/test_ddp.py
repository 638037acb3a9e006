"""DDP and FSDP2 through torchrun with gloo on CPU: 2 processes match 1 process.

Both compare against a single process with the same global batch. Tolerance: per-step training
loss within 1e-4 absolute and final weights within 1e-4; the runs differ only in the order of
floating-point reductions (all-reduce or reduce-scatter of gradients vs one batch).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from gptforge.training.metrics import read_metrics
from safetensors.torch import load_file

from tests.training.helpers import PYTHON, child_env

pytestmark = pytest.mark.slow  # torchrun jobs: ~15 s of CPU each

STEPS = 4


def _run(out, data_dir, nproc: int, batch_size: int, *extra: str, steps: int = STEPS) -> None:
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "gptforge.cli",
        "train",
        "--preset",
        "debug",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
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
        *extra,
    ]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _assert_same_run(one_dir, two_dir) -> None:
    one = [r for r in read_metrics(one_dir / "metrics.jsonl") if r["kind"] == "train"]
    two = [r for r in read_metrics(two_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
    w1 = load_file(one_dir / "model.safetensors")
    w2 = load_file(two_dir / "model.safetensors")
    assert sorted(w1) == sorted(w2)
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-4, rtol=0)


def test_fsdp_two_gloo_ranks_match_one_process_and_resume(tmp_path, data_dir):
    _run(tmp_path / "one", data_dir, 1, 4)
    _run(tmp_path / "fsdp", data_dir, 2, 2, "--parallel", "fsdp")
    _assert_same_run(tmp_path / "one", tmp_path / "fsdp")
    # Same files as a plain run: a tied debug model stores its shared weight once.
    one_files = sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir())
    fsdp_files = sorted(p.name for p in (tmp_path / "fsdp" / "checkpoints").iterdir())
    assert one_files == fsdp_files
    state = torch.load(
        tmp_path / "fsdp" / "checkpoints" / fsdp_files[-1] / "state.pt", weights_only=True
    )
    assert all(isinstance(k, str) for k in state["optimizer"]["state"])  # FSDP's by-name format
    # Resume an FSDP run from its step-2 checkpoint: it must end where the uninterrupted one did.
    _run(tmp_path / "cut", data_dir, 2, 2, "--parallel", "fsdp", steps=2)
    resume = [
        PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "gptforge.cli", "train", "--resume", str(tmp_path / "cut"),
        "--max-steps", str(STEPS),
    ]  # fmt: skip
    proc = subprocess.run(resume, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    w_full = load_file(tmp_path / "fsdp" / "model.safetensors")
    w_cut = load_file(tmp_path / "cut" / "model.safetensors")
    for key in w_full:
        torch.testing.assert_close(w_full[key], w_cut[key], atol=1e-6, rtol=0)


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


def _resume(out, steps: int) -> None:
    cmd = [
        PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "gptforge.cli", "train", "--resume", str(out), "--max-steps", str(steps),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_ddp_resume_with_dropout_restores_every_ranks_generator(tmp_path, data_dir):
    # Each rank draws its own dropout masks; a resumed rank must continue its own stream.
    _run(tmp_path / "full", data_dir, 2, 2, "--dropout", "0.1")
    _run(tmp_path / "cut", data_dir, 2, 2, "--dropout", "0.1", steps=2)
    state = torch.load(
        tmp_path / "cut" / "checkpoints" / "step_000002" / "state.pt", weights_only=True
    )
    assert len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])
    _resume(tmp_path / "cut", STEPS)
    w_full = load_file(tmp_path / "full" / "model.safetensors")
    w_cut = load_file(tmp_path / "cut" / "model.safetensors")
    for key in w_full:
        torch.testing.assert_close(w_full[key], w_cut[key], atol=1e-6, rtol=0)


def _pretrained(tmp_path, data_dir):
    from gptforge.training.pretrain import pretrain

    from tests.training.helpers import debug_config

    base = tmp_path / "base"
    pretrain(debug_config(data_dir, base, max_steps=4, context_length=64, eval_interval=0))
    return base


def _finetune(base, out, nproc: int, batch: int, *extra: str) -> None:
    cmd = [
        PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "gptforge.cli", "finetune", "--from-run", str(base), "--out", str(out),
        "--max-steps", "3", "--batch-size", str(batch), "--num-examples", "60",
        "--eval-examples", "4", "--eval-interval", "0", "--max-length", "65",
        "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _assert_same_tensors(one, two) -> None:
    w1, w2 = load_file(one), load_file(two)
    assert sorted(w1) == sorted(w2)
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-4, rtol=0)


def test_fsdp_finetune_matches_one_process(tmp_path, data_dir):
    # Rank 0 loads the base model on the CPU, rank 1 only describes it on the meta device;
    # the sharded fine-tune must end where one process with the same global batch does (the
    # response-only loss is weighted by each rank's share of the counted tokens).
    base = _pretrained(tmp_path, data_dir)
    _finetune(base, tmp_path / "one", 1, 4)
    _finetune(base, tmp_path / "fsdp", 2, 2, "--parallel", "fsdp")
    assert (tmp_path / "fsdp" / "chat.json").is_file()
    _assert_same_tensors(
        tmp_path / "one" / "model.safetensors", tmp_path / "fsdp" / "model.safetensors"
    )


def test_ddp_lora_finetune_matches_one_process(tmp_path, data_dir):
    # DDP replicates the frozen base; only the adapters' and token rows' gradients are reduced.
    base = _pretrained(tmp_path, data_dir)
    lora = ("--lora-rank", "4", "--lr", "1e-2", "--warmup-steps", "1")
    _finetune(base, tmp_path / "one", 1, 4, *lora)
    _finetune(base, tmp_path / "ddp", 2, 2, *lora, "--parallel", "ddp")
    adapter = "adapter_model.safetensors"
    _assert_same_tensors(tmp_path / "one" / adapter, tmp_path / "ddp" / adapter)
    # and both trained: the adapters and the token rows moved well past the tolerance
    trained = load_file(tmp_path / "ddp" / adapter)
    assert min(v.abs().max() for k, v in trained.items() if "lora_B" in k) > 1e-2
    rows = trained["base_model.model.transformer.wte.token_adapter.trainable_tokens_delta"]
    ids = json.loads((tmp_path / "ddp" / "adapter_config.json").read_text())
    start = load_file(tmp_path / "ddp" / "base" / "model.safetensors")
    start_rows = start.get("wte.weight", start.get("lm_head.weight"))[
        ids["trainable_token_indices"]["wte"]
    ]
    assert (rows - start_rows).abs().max() > 1e-2
