"""FSDP2 helpers in one gloo process: block discovery, tie preservation, full state dicts."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from gptforge.modeling import build_model, get_config
from gptforge.training import fsdp
from gptforge.training.config import TrainConfig


def test_parallel_choice_is_validated():
    assert TrainConfig(parallel="fsdp").parallel == "fsdp"
    with pytest.raises(ValueError, match=r"parallel='zero3'.*\['ddp', 'fsdp'\]"):
        TrainConfig(parallel="zero3")


def test_model_without_block_list_is_refused():
    with pytest.raises(ValueError, match="transformer blocks.*--parallel ddp"):
        fsdp.shard_model(torch.nn.Linear(2, 2))


@pytest.fixture
def one_rank_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_sharding_keeps_tie_and_full_state_matches(one_rank_group):
    torch.manual_seed(0)
    export = build_model(get_config("debug"))  # rank 0's whole model, as pretrain builds it
    assert export.lm_head.weight is export.wte.weight  # the debug preset ties
    before = {k: v.clone() for k, v in export.state_dict().items()}
    assert len(fsdp.transformer_blocks(export)) == len(export.h)
    # Built on the meta device, sharded, then filled from rank 0's model.
    model = fsdp.shard_from_rank0(export, export.config, torch.device("cpu"))
    assert model.lm_head.weight is model.wte.weight  # one parameter in the root group
    assert type(model.h[0]).__name__.startswith("FSDP")
    full = fsdp.full_model_state(model)
    assert sorted(full) == sorted(before)
    for key, value in before.items():
        torch.testing.assert_close(full[key], value, atol=0, rtol=0)
    export.load_state_dict(full)
    assert export.lm_head.weight is export.wte.weight  # the copy stays tied after loading
    x = torch.randint(0, model.config.vocab_size, (2, 8))  # (B, T)
    _, loss = model(x, x)
    loss.backward()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.step()
    state = fsdp.full_optimizer_state(model, opt)
    assert all(isinstance(k, str) for k in state["state"])  # keyed by name, not index
    fsdp.load_full_optimizer_state(model, opt, state)
    with pytest.raises(ValueError, match="keyed by parameter index"):
        fsdp.load_full_optimizer_state(model, opt, {"state": {0: {}}, "param_groups": []})


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "mmrec-debug"])
def test_every_architecture_shards_and_trains(one_rank_group, preset):
    torch.manual_seed(0)
    reference = build_model(get_config(preset))
    model = fsdp.shard_from_rank0(reference, reference.config, torch.device("cpu"))
    x = torch.randint(0, 50, (2, 8))  # (B, T)
    _, loss = model(x, x)
    _, expected = reference(x, x)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)  # one rank: same numbers
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_float16_under_fsdp_is_refused_with_the_fix(tmp_path):
    from gptforge.training.distributed import DistInfo
    from gptforge.training.loop import train_loop

    cfg = TrainConfig(parallel="fsdp", dtype="float16", out=str(tmp_path))
    with pytest.raises(ValueError, match="float16 with --parallel fsdp.*--dtype bfloat16"):
        train_loop(
            cfg, build_model(get_config("debug")), None, None,  # type: ignore[arg-type]
            info=DistInfo(rank=0, world_size=2, local_rank=0), device=torch.device("cpu"),
            resume=False, save_model=lambda m, d: None,
        )  # fmt: skip
