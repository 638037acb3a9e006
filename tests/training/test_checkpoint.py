"""Checkpoint manager: atomic step directories, retention, corrupt fallback, weights_only."""

from __future__ import annotations

import pytest
import torch
from gptforge.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    rng_state,
    set_rng_state,
)
from torch import nn


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def _opt_state(model: nn.Module) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.emb.weight.sum().backward()
    opt.step()
    return opt.state_dict()


def test_roundtrip_keeps_weights_ties_and_state(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    state = {"optimizer": _opt_state(model), "step": 5, "rng": rng_state()}
    mgr.save(step=5, model=model, state=state, manifest={"val_loss": 1.5})
    fresh = Tied()
    info, loaded = mgr.load(fresh)
    assert info.step == 5 and info.val_loss == 1.5
    assert torch.equal(fresh.emb.weight, model.emb.weight)
    assert fresh.head.weight is fresh.emb.weight  # tie survives loading
    assert loaded["step"] == 5
    assert torch.equal(
        loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )


def test_keeps_last_k_and_the_best(tmp_path):
    model = Tied()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, None)]:
        mgr.save(step=step, model=model, state={"step": step}, manifest={"val_loss": val})
    assert [i.step for i in mgr.list()] == [2, 4, 5]
    assert mgr.best().step == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_truncated_checkpoint_is_reported_and_previous_used(tmp_path):
    model = Tied()
    warnings: list[str] = []
    mgr = CheckpointManager(tmp_path, keep_last=3, warn=warnings.append)
    mgr.save(step=1, model=model, state={"step": 1})
    with torch.no_grad():
        model.emb.weight.add_(1.0)
    last = mgr.save(step=2, model=model, state={"step": 2})
    weights = last / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    fresh = Tied()
    info, state = mgr.load(fresh)
    assert info.step == 1 and state["step"] == 1
    assert any("step_000002" in w and "truncated" in w for w in warnings)


def test_loading_never_unpickles_code(tmp_path):
    model = Tied()
    warnings: list[str] = []
    mgr = CheckpointManager(tmp_path, warn=warnings.append)
    path = mgr.save(step=1, model=model, state={"step": 1})
    # Replace state.pt by a pickle of an arbitrary object and fix the manifest so only the
    # weights_only loader can refuse it.
    import hashlib
    import json

    torch.save({"evil": Tied}, path / "state.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        mgr.load(Tied())
    assert any("step_000001" in w for w in warnings)


def test_no_checkpoint_error_says_how_to_fix(tmp_path):
    with pytest.raises(CheckpointError, match="without --resume"):
        CheckpointManager(tmp_path).load(Tied())


def test_rng_state_roundtrip():
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
