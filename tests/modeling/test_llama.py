"""LLaMA family: parity with transformers' LlamaForCausalLM, GQA, RoPE, counts."""

from __future__ import annotations

import pytest
import torch
from gptforge.modeling import Llama, LlamaConfig, get_config
from gptforge.modeling.config import llama_intermediate_size
from gptforge.modeling.introspect import count_params
from gptforge.modeling.llama import rope_inv_freq

from ._modeling_hf import hf_llama, hf_num_params, llama_from_hf

SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=16)  # fmt: skip


def _cfg(**kw) -> LlamaConfig:
    return get_config("llama-debug", **{"vocab_size": 500, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        {},  # GQA (4 query heads, 2 kv heads), untied
        {"n_kv_head": 4, "tie_embeddings": True},  # MHA, tied
        {"n_kv_head": 1, "rope_theta": 500000.0, "rope_scaling": SCALING},  # MQA, llama3 RoPE
        {"attention_bias": True},
    ],
    ids=["gqa", "mha-tied", "mqa-llama3-rope", "attention-bias"],
)
def test_against_hf_llama(kw):
    cfg = _cfg(**kw)
    torch.manual_seed(2)
    hf = hf_llama(cfg).eval()
    ours = llama_from_hf(hf, cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 40))
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = ours(idx, targets)
    assert logits.shape == (2, 40, cfg.vocab_size)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_param_count_equals_transformers(tie):
    for cfg in (
        _cfg(tie_embeddings=tie),
        _cfg(n_kv_head=1, n_embd=96, n_head=6, tie_embeddings=tie),
    ):
        assert count_params(cfg) == hf_num_params(hf_llama(cfg))


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "llama-3.2-1b", "llama-2-7b"])
def test_released_shapes_match_transformers_on_meta(name):
    cfg = get_config(name)
    with torch.device("meta"):
        hf = hf_llama(cfg)
    assert count_params(cfg) == hf_num_params(hf)


def test_published_parameter_counts():
    assert count_params(get_config("llama-2-7b")) == 6_738_415_616
    assert count_params(get_config("tinyllama-1.1b")) == 1_100_048_384
    assert count_params(get_config("llama-3.2-1b")) == 1_235_814_400


def test_llama3_rope_scaling_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = get_config("llama-3.2-1b")
    hf_cfg = hf_llama.__globals__["HFLlamaConfig"](
        hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head, rope_theta=cfg.rope_theta,
        rope_scaling=cfg.rope_scaling, max_position_embeddings=cfg.block_size,
    )  # fmt: skip
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    torch.testing.assert_close(rope_inv_freq(cfg), ref.float())


def test_sdpa_and_math_attention_agree_with_gqa():
    a = Llama(_cfg()).eval()
    b = Llama(_cfg(attention_impl="math")).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 500, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=1e-5, rtol=1e-5)


def test_hf_parameter_names():
    names = set(Llama(_cfg()).state_dict())
    for n in ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight",
              "layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight",
              "layers.0.self_attn.o_proj.weight", "layers.1.mlp.gate_proj.weight",
              "layers.1.mlp.up_proj.weight", "layers.1.mlp.down_proj.weight",
              "layers.1.input_layernorm.weight", "layers.1.post_attention_layernorm.weight",
              "norm.weight", "lm_head.weight"):  # fmt: skip
        assert n in names, n
    assert not any("rope" in n or "cache" in n for n in names)


def test_intermediate_size_rule_and_validation():
    assert llama_intermediate_size(4096) == 11008
    assert LlamaConfig(n_embd=4096, n_head=32, n_kv_head=32).ffn_hidden == 11008
    with pytest.raises(ValueError, match="multiple of n_kv_head=3"):
        LlamaConfig(n_head=32, n_kv_head=3)
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        LlamaConfig(rope_scaling={"type": "linear", "factor": 2.0})


def test_padding_rows_untouched_by_loss():
    model = Llama(_cfg())
    idx = torch.randint(0, 500, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert model.lm_head.weight.grad[500:].abs().sum() == 0
    assert model.embed_tokens.weight.grad[500:].abs().sum() == 0
