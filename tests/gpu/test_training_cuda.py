"""Training on CUDA: bf16 autocast learns, a resumed run continues the same run, the results
load on the CPU and export to transformers."""

from __future__ import annotations

import pytest
import torch
import transformers
from gptforge.conversion import export_hf
from gptforge.modeling.io import load_model_dir
from gptforge.training.metrics import read_metrics
from gptforge.training.pretrain import pretrain

from tests.gpu.conftest import DEVICE, requires_cuda
from tests.training.helpers import StopRun, debug_config, stop_at

pytestmark = [pytest.mark.gpu, requires_cuda]


def _losses(run_dir):
    rows = read_metrics(run_dir / "metrics.jsonl")
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows if r["kind"] != "event"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_on_the_gpu_learns(tmp_path, data_dir, dtype):
    cfg = debug_config(
        data_dir, tmp_path / "run", max_steps=30, device=str(DEVICE), dtype=dtype, lr=3e-3
    )
    result = pretrain(cfg)
    train = [loss for _, loss, _ in _losses(tmp_path / "run") if loss is not None]
    assert result.step == 30
    assert train[-1] < 0.8 * train[0], train


def test_resume_on_the_gpu_continues_the_same_run(tmp_path, data_dir):
    # Dropout draws from the CUDA generator, whose state the checkpoint carries.
    common = dict(device=str(DEVICE), dtype="float32", checkpoint_interval=2, dropout=0.1)
    pretrain(debug_config(data_dir, tmp_path / "ref", max_steps=8, **common))
    cfg = debug_config(data_dir, tmp_path / "run", max_steps=8, **common)
    with pytest.raises(StopRun):
        pretrain(cfg, callbacks=[stop_at(5)])  # the last checkpoint is step 4
    pretrain(cfg, resume=True)
    ref, run = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert [r[0] for r in run] == [r[0] for r in ref]
    for (step, *a), (_, *b) in zip(run, ref, strict=True):
        # GPU kernels may reduce in another order from launch to launch: equal up to rounding.
        for x, y in zip(a, b, strict=True):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4), (step, a, b)


def test_a_gpu_run_loads_on_the_cpu_and_exports_to_transformers(tmp_path, data_dir):
    run = tmp_path / "run"
    pretrain(debug_config(data_dir, run, max_steps=4, device=str(DEVICE), dtype="float32"))
    ours = load_model_dir(run, device="cpu")
    export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, ours.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)
