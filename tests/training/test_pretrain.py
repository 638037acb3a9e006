"""Pre-training on the debug preset: run directory layout, metrics, plots, failure modes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from gptforge.training.data import DataError
from gptforge.training.loop import TrainingDiverged
from gptforge.training.metrics import read_metrics
from gptforge.training.pretrain import pretrain

from tests.training.helpers import StopRun, debug_config, stop_at


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    cfg = debug_config(
        data_dir, out, max_steps=12, lr=3e-3, eval_interval=6, checkpoint_interval=4, keep_last=1
    )
    return cfg, pretrain(cfg)


def test_run_dir_is_a_loadable_model_dir(run):
    from gptforge.modeling.io import load_model_dir
    from gptforge.tokenizer import Tokenizer

    cfg, result = run
    model = load_model_dir(cfg.out)
    tok = Tokenizer.from_dir(f"{cfg.out}/tokenizer")
    assert model.config.vocab_size == tok.n_vocab and model.config.block_size == 32
    with torch.no_grad():
        logits, _ = model(torch.tensor([tok.encode("apple river")]))
    assert logits.shape[-1] == tok.n_vocab
    saved = json.loads((result.run_dir / "train_config.json").read_text())
    assert saved["kind"] == "pretrain" and saved["config"]["max_steps"] == 12


def test_metrics_plots_and_retention(run):
    cfg, result = run
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert {"loss", "ppl", "lr", "grad_norm", "tokens", "tok_per_s"} <= set(train[0])
    assert train[-1]["tokens"] == 12 * 4 * 32
    assert math.isclose(train[0]["ppl"], math.exp(train[0]["loss"]), rel_tol=1e-6)
    assert [r["step"] for r in evals] == [0, 6, 12]  # step 0: the untrained model
    assert all(r["train_loss"] > 0 and "epoch" in r for r in evals)
    assert train[-1]["epoch"] == pytest.approx(12 * 4 / len_windows(cfg), abs=1e-4)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.5
    assert train[-1]["loss"] < train[0]["loss"]  # it learns
    for name in ("loss.png", "perplexity.png"):
        assert (result.run_dir / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = sorted(p.name for p in (result.run_dir / "checkpoints").glob("step_*"))
    best = min(evals, key=lambda r: r["val_loss"])["step"]
    assert steps == sorted({"step_000012", f"step_{best:06d}"})
    finished = [r for r in rows if r.get("event") == "finished"]
    assert finished and 0 <= finished[0]["overhead_fraction"] < 1


def len_windows(cfg):
    from gptforge.training.data import TokenShards, TokenWindows

    return len(TokenWindows(TokenShards(cfg.data, "train"), 32, None))


def test_best_and_last_checkpoints_are_model_dirs(run):
    from gptforge.conversion.loading import load_any

    cfg, result = run
    evals = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    best = min((r for r in evals if r["step"]), key=lambda r: r["val_loss"])["step"]
    ckpts = result.run_dir / "checkpoints"
    assert (ckpts / "best").resolve().name == f"step_{best:06d}"
    assert (ckpts / "last").resolve().name == "step_000012"
    model, tok, _ = load_any(ckpts / "best")
    assert tok is not None and model.config.vocab_size == tok.n_vocab
    top = load_any(result.run_dir)[0]
    last = load_any(ckpts / "last")[0]
    for a, b in zip(top.state_dict().values(), last.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_fresh_run_over_checkpoints_is_refused(run, data_dir):
    cfg, _ = run
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(debug_config(data_dir, cfg.out))


def test_mismatched_tokenizer_fingerprint_is_refused(tmp_path, data_dir, texts):
    from gptforge.tokenizer import Tokenizer

    other = Tokenizer.train(texts=texts[:50], vocab_size=300, show_progress=False)
    other.save(tmp_path / "other")
    with pytest.raises(DataError, match="prepared with tokenizer fingerprint"):
        pretrain(debug_config(data_dir, tmp_path / "r", tokenizer=str(tmp_path / "other")))


def test_wrong_arch_for_preset_names_the_fix(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"is a .gpt. model, not --arch .llama.; drop --arch"):
        pretrain(debug_config(data_dir, tmp_path / "r", arch="llama"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    def poison(step, model, row):
        if step == 4:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    cfg = debug_config(data_dir, tmp_path / "r", max_steps=10, checkpoint_interval=3)
    with pytest.raises(TrainingDiverged, match=r"loss became nan .* at step 5 .*step_000003.*--lr"):
        pretrain(cfg, callbacks=[poison])
    steps = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step_*"))
    assert steps[-1] == "step_000003"
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert rows[-1]["event"] == "diverged"


def test_llama_preset_trains(tmp_path, data_dir):
    cfg = debug_config(
        data_dir, tmp_path / "r", arch="llama", preset="llama-debug", max_steps=2, eval_interval=0
    )
    result = pretrain(cfg)
    assert result.step == 2 and math.isfinite(result.train_loss)


def test_bf16_autocast_on_cpu_trains(tmp_path, data_dir):
    cfg = debug_config(data_dir, tmp_path / "r", max_steps=2, dtype="bfloat16", eval_interval=0)
    assert math.isfinite(pretrain(cfg).train_loss)


def test_float16_scales_the_loss_learns_and_resumes_exactly(tmp_path, data_dir):
    kw = dict(max_steps=8, checkpoint_interval=2, dtype="float16", lr=3e-3)
    pretrain(debug_config(data_dir, tmp_path / "ref", **kw))
    ref = [r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if r["kind"] == "train"]
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.3, [r["loss"] for r in ref]
    cfg = debug_config(data_dir, tmp_path / "run", **kw)
    with pytest.raises(StopRun):
        pretrain(cfg, callbacks=[stop_at(5)])  # the last checkpoint is step 4
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "step_000004" / "state.pt", weights_only=True
    )
    assert state["scaler"]["scale"] > 1.0  # a GradScaler scaled the fp16 loss
    pretrain(cfg, resume=True)
    run = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["step"], r["loss"]) for r in run] == [(r["step"], r["loss"]) for r in ref]


def test_a_float32_checkpoint_resumes_in_float16(tmp_path, data_dir):
    cfg = debug_config(data_dir, tmp_path / "r", max_steps=6, checkpoint_interval=2)
    with pytest.raises(StopRun):
        pretrain(cfg, callbacks=[stop_at(3)])
    half = debug_config(data_dir, tmp_path / "r", max_steps=6, dtype="float16")
    assert pretrain(half, resume=True).step == 6


def test_a_gpu_index_under_torchrun_is_refused():
    from gptforge.training.distributed import DistInfo
    from gptforge.training.loop import resolve_device

    with pytest.raises(ValueError, match="every rank on one GPU.*--device cuda"):
        resolve_device("cuda:1", DistInfo(rank=0, world_size=2, local_rank=0))


def test_out_of_memory_suggests_smaller_batch_with_accumulation(tmp_path):
    from gptforge.training.config import LoopConfig
    from gptforge.training.data import SlidingWindowDataset
    from gptforge.training.distributed import DistInfo
    from gptforge.training.loop import train_loop

    class Hungry(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, y, return_logits=True):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cfg = LoopConfig(out=str(tmp_path / "r"), max_steps=1, batch_size=4, progress=False)
    data = SlidingWindowDataset(list(range(50)), max_length=8, stride=8)
    with pytest.raises(RuntimeError, match=r"lower --batch-size \(and raise --grad-accum"):
        train_loop(
            cfg,
            Hungry(),
            data,
            None,
            info=DistInfo(),
            device=torch.device("cpu"),
            resume=False,
            save_model=lambda m, d: None,
        )
