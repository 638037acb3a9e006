"""LoRA fine-tuning: only adapters train, resume is exact, --merge writes a plain model."""

from __future__ import annotations

import json

import pytest
import torch
from gptforge.sampling.templates import SPECIAL_TOKENS
from gptforge.tokenizer import Tokenizer
from safetensors.torch import load_file

from tests.training.helpers import StopRun, debug_config, stop_at


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data_dir):
    from gptforge.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("base")
    pretrain(debug_config(data_dir, out, max_steps=10, context_length=64, eval_interval=0))
    return out


def _cfg(base_run, out, **overrides):
    from gptforge.training.config import FinetuneConfig

    values = dict(
        from_run=str(base_run),
        out=str(out),
        max_steps=6,
        batch_size=4,
        num_examples=60,
        eval_examples=4,
        max_length=65,
        progress=False,
        eval_interval=0,
        checkpoint_interval=3,
        lora_rank=4,
        lora_dropout=0.1,
        device="cpu",
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def test_lora_trains_only_adapters_and_writes_a_peft_dir(tmp_path, base_run):
    from gptforge.training.finetune import finetune

    finetune(_cfg(base_run, tmp_path / "sft"))
    run = tmp_path / "sft"
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "LORA"
    adapter = load_file(run / "adapter_model.safetensors")
    assert any(k.endswith("lm_head.lora_B.weight") for k in adapter)
    rows = adapter.pop("base_model.model.transformer.wte.token_adapter.trainable_tokens_delta")
    assert all(k.startswith("base_model.model.transformer.h.") or "lm_head" in k for k in adapter)
    # the template's special tokens' rows trained, listed for PEFT by their ids
    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    ids = [tokenizer.special_tokens[t] for t in SPECIAL_TOKENS]
    assert config["trainable_token_indices"] == {"wte": ids}
    base = load_file(run / "base" / "model.safetensors")
    base_rows = base.get("wte.weight", base.get("lm_head.weight"))[ids]  # a tied pair: one name
    assert rows.shape == base_rows.shape and not torch.allclose(rows, base_rows)
    assert not (run / "model.safetensors").exists()  # no merged copy without --merge
    # the frozen base in the checkpoint equals the saved base: nothing but adapters moved
    base = load_file(run / "base" / "model.safetensors")
    ckpt = load_file(next((run / "checkpoints").glob("step_*")) / "model.safetensors")
    aliases = {"wte.weight": "lm_head.weight"}  # a tied pair is saved once, under either name
    for key, value in base.items():
        assert torch.equal(ckpt.get(key, ckpt.get(aliases.get(key, ""))), value), key
    assert any(torch.count_nonzero(v) for k, v in adapter.items() if "lora_B" in k)


def test_unmerged_lora_run_chats_and_merges_from_the_cli(tmp_path, base_run):
    from gptforge.cli.main import app
    from gptforge.conversion.peft_adapter import load_adapted
    from gptforge.modeling.io import load_model_dir
    from gptforge.sampling.chat import ChatModel
    from gptforge.training.finetune import finetune
    from typer.testing import CliRunner

    run = tmp_path / "sft"
    finetune(_cfg(base_run, run, max_steps=2, lora_dropout=0.0))
    assert isinstance(ChatModel(run).respond("Last word.", "a b", max_new_tokens=2), str)
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        app, ["convert", "merge-lora", "--run", str(run), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "chat.json").is_file()
    idx = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_adapted(run)(idx)[0]
        torch.testing.assert_close(load_model_dir(out).eval()(idx)[0], want)
    again = CliRunner().invoke(app, ["convert", "merge-lora", "--run", str(run), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_lora_resume_is_exact(tmp_path, base_run):
    from gptforge.training.finetune import finetune

    finetune(_cfg(base_run, tmp_path / "ref"))
    with pytest.raises(StopRun):
        finetune(_cfg(base_run, tmp_path / "run"), callbacks=[stop_at(4)])
    finetune(_cfg(base_run, tmp_path / "run"), resume=True)
    ref = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    got = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_lora_merge_writes_a_model_with_the_adapted_logits(tmp_path, base_run):
    from gptforge.conversion.peft_adapter import load_adapter
    from gptforge.modeling.io import load_model_dir
    from gptforge.training.finetune import finetune

    run = tmp_path / "sft"
    finetune(_cfg(base_run, run, merge=True, max_steps=3, lora_targets="attn,mlp"))
    merged = load_model_dir(run).eval()
    adapted = load_adapter(load_model_dir(run / "base"), run).eval()
    idx = torch.randint(
        0, merged.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(idx)[0], adapted(idx)[0], atol=1e-5, rtol=1e-5)
        plain = load_model_dir(run / "base").eval()(idx)[0]
    assert (plain - merged(idx)[0]).abs().max() > 0


def test_lora_flags_are_checked():
    from gptforge.training.config import FinetuneConfig

    with pytest.raises(ValueError, match="--merge folds LoRA adapters"):
        FinetuneConfig(from_run="x", merge=True)
    with pytest.raises(ValueError, match="choose from \\['attn', 'mlp', 'head'\\]"):
        FinetuneConfig(from_run="x", lora_rank=8, lora_targets="attn,ffn")
    assert FinetuneConfig(from_run="x", lora_rank=8).lora_config().alpha == 16.0


def test_lora_checkpoint_loads_as_a_model(tmp_path, base_run, monkeypatch):
    """A LoRA run's checkpoints/last is loadable: the run's base plus that step's adapters;
    the generation service's pre-bind check accepts the run and its checkpoints."""
    from gptforge.conversion import load_any
    from gptforge.services.generation import server
    from gptforge.training.finetune import finetune

    finetune(_cfg(base_run, tmp_path / "sft"))
    model, tok, info = load_any(tmp_path / "sft" / "checkpoints" / "last")
    assert info.layout == "lora" and tok is not None and "<INST>" in tok.special_tokens
    assert not any("lora" in k for k in model.state_dict())
    served = []
    monkeypatch.setattr(server, "serve_model", lambda load, *a, **k: served.append(load))
    server.serve(str(tmp_path / "sft"))
    server.serve(str(tmp_path / "sft" / "checkpoints" / "best"))
    assert len(served) == 2


def test_full_finetune_starts_from_a_hugging_face_export(tmp_path, base_run):
    from gptforge.conversion import export_hf
    from gptforge.training.finetune import finetune

    export_hf(base_run, tmp_path / "hf")  # weights + tokenizer files, no tokenizer/ folder
    finetune(_cfg(tmp_path / "hf", tmp_path / "sft", lora_rank=0, lora_dropout=0.0))
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    assert (tmp_path / "sft" / "tokenizer").is_dir()


def test_token_rows_need_a_head_that_can_learn_them(tmp_path):
    from gptforge.modeling import build_model, get_config
    from gptforge.training.finetune import _check_lora_model, _trains_token_rows

    untied = build_model(get_config("llama-debug"))
    cfg = _cfg(tmp_path, tmp_path / "sft", lora_targets="attn,mlp")
    with pytest.raises(ValueError, match="untied head frozen"):
        _check_lora_model(cfg, untied)
    _check_lora_model(_cfg(tmp_path, tmp_path / "sft"), untied)  # head in the targets
    _check_lora_model(
        _cfg(tmp_path, tmp_path / "a", lora_targets="attn", template="alpaca"), untied
    )
    _check_lora_model(cfg, build_model(get_config("debug")))  # a tied head reads the rows
    with pytest.raises(ValueError, match="gpt and llama families"):
        _check_lora_model(_cfg(tmp_path, tmp_path / "m"), build_model(get_config("mmrec-debug")))
    assert _trains_token_rows(cfg, resume=False)
    assert not _trains_token_rows(_cfg(tmp_path, tmp_path / "a", template="alpaca"), resume=False)


def test_resuming_a_run_of_adapters_alone_keeps_them_alone(tmp_path):
    from gptforge.training.finetune import _trains_token_rows
    from safetensors.torch import save_file

    cfg = _cfg(tmp_path, tmp_path / "sft")
    assert _trains_token_rows(cfg, resume=True)  # no checkpoint yet: as a new run
    for step, keys in ((3, ["wte.token_rows", "wte.weight"]), (6, ["wte.weight"])):
        ckpt = tmp_path / "sft" / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "manifest.json").write_text(json.dumps({"step": step}))
        save_file({k: torch.zeros(2) for k in keys}, ckpt / "model.safetensors")
    assert not _trains_token_rows(cfg, resume=True)  # the newest one decides
    (ckpt / "model.safetensors").write_bytes(b"damaged")
    assert _trains_token_rows(cfg, resume=True)  # past a damaged one, as resume goes
    assert _trains_token_rows(cfg, resume=False)


def test_token_rows_are_not_decayed():
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.lora import LoraConfig, add_trainable_tokens, apply_lora
    from gptforge.training.optim import param_groups

    model = build_model(get_config("debug"))
    apply_lora(model, LoraConfig(rank=4))
    rows = add_trainable_tokens(model, [1, 2]).token_rows
    decayed, plain = param_groups(model, weight_decay=0.1)
    assert any(p is rows for p in plain["params"])
    assert not any(p is rows for p in decayed["params"]) and decayed["params"]


def test_trainable_token_rows_embed_and_learn_like_the_merged_matrix():
    from gptforge.modeling.lora import TrainableTokens

    base = torch.nn.Embedding(50, 8).requires_grad_(False)  # as apply_lora leaves it
    tokens = TrainableTokens(base, [7, 3, 49])
    with torch.no_grad():
        tokens.token_rows.normal_()
    idx = torch.tensor([[3, 1, 49, 7, 7, 0]])
    got = tokens(idx)
    want = torch.nn.functional.embedding(idx, tokens.merged_weight())
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    (got * torch.arange(8.0)).sum().backward()
    grad = tokens.token_rows.grad
    assert torch.equal(grad[0], 2 * torch.arange(8.0)) and torch.equal(grad[1], torch.arange(8.0))
    assert torch.equal(grad[2], torch.arange(8.0)) and base.weight.grad is None
