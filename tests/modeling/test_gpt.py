"""GPT-2 family: parity with transformers, padding, attention paths, init, loss."""

from __future__ import annotations

import math

import pytest
import torch
from gptforge.modeling import GPT, GPTConfig, get_config
from gptforge.modeling.introspect import count_params

from ._modeling_hf import gpt_from_hf, hf_gpt2, hf_num_params

torch.manual_seed(0)


def _cfg(**kw) -> GPTConfig:
    return get_config("debug", **{"vocab_size": 500, **kw})  # 500 pads to 512


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("gelu", ["tanh", "none"])
def test_against_hf_gpt2(tie, gelu):
    cfg = _cfg(tie_embeddings=tie, gelu_approximate=gelu)
    torch.manual_seed(1)
    hf = hf_gpt2(cfg).eval()
    ours = gpt_from_hf(hf, cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 24))
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = ours(idx, targets)
    assert logits.shape == (2, 24, cfg.vocab_size)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_param_count_equals_transformers(tie):
    for cfg in (_cfg(tie_embeddings=tie), _cfg(n_layer=3, n_embd=96, n_head=3, tie_embeddings=tie)):
        assert count_params(cfg) == hf_num_params(hf_gpt2(cfg))
    with torch.device("meta"):
        hf = hf_gpt2(get_config("gpt2", tie_embeddings=tie))
    assert count_params(get_config("gpt2", tie_embeddings=tie)) == hf_num_params(hf)


def test_teaching_figure_gpt2_untied_without_qkv_bias():
    cfg = get_config("gpt2", tie_embeddings=False, qkv_bias=False)
    assert count_params(cfg) == 163_009_536
    assert count_params(get_config("gpt2")) == 124_439_808


def test_padded_vocab_is_never_returned_or_trained():
    cfg = _cfg()
    assert cfg.padded_vocab_size == 512
    model = GPT(cfg)
    assert model.wte.weight.shape == (512, cfg.n_embd)
    with torch.no_grad():  # make the padding rows win if they leaked into the softmax
        model.wte.weight[cfg.vocab_size :] = 100.0
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape[-1] == cfg.vocab_size
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert model.wte.weight.grad[cfg.vocab_size :].abs().sum() == 0  # no gradient into padding


def test_ignore_index_masks_positions():
    model = GPT(_cfg()).eval()
    idx = torch.randint(0, 500, (1, 10))
    targets = idx.clone()
    targets[:, 5:] = -100
    _, loss_masked = model(idx, targets)
    logits, _ = model(idx)
    ref = torch.nn.functional.cross_entropy(logits[0, :5], idx[0, :5])
    torch.testing.assert_close(loss_masked, ref)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_sdpa_and_math_attention_agree(dropout):
    cfg = _cfg(dropout=dropout)
    a = GPT(cfg).eval()
    b = GPT(get_config("debug", vocab_size=500, dropout=dropout, attention_impl="math")).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 500, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=1e-5, rtol=1e-5)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = get_config("tiny", n_layer=8)
    model = GPT(cfg)
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert model.h[0].attn.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.h[3].mlp.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.h[0].attn.c_attn.bias.abs().sum() == 0
    assert model.lm_head.weight is model.wte.weight


def test_bias_switches_remove_parameters():
    names = {n for n, _ in GPT(_cfg(bias=False, qkv_bias=False)).named_parameters()}
    assert not any(n.endswith("bias") for n in names)
    names = {n for n, _ in GPT(_cfg(qkv_bias=False)).named_parameters()}
    assert "h.0.attn.c_attn.bias" not in names and "h.0.attn.c_proj.bias" in names


def test_hf_parameter_names():
    names = set(GPT(_cfg(tie_embeddings=False)).state_dict())
    for n in ("wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
              "h.0.attn.c_proj.weight", "h.1.ln_2.bias", "h.1.mlp.c_fc.weight",
              "h.1.mlp.c_proj.bias", "ln_f.weight", "lm_head.weight"):  # fmt: skip
        assert n in names, n


def test_too_long_input_is_refused():
    model = GPT(_cfg())
    with pytest.raises(ValueError, match="block_size=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_resize_token_embeddings_mean_init_and_ties():
    model = GPT(_cfg())
    old = model.wte.weight[:500].clone()
    model.resize_token_embeddings(520)
    assert model.config.vocab_size == 520 and model.wte.weight.shape == (576, model.config.n_embd)
    assert model.lm_head.weight is model.wte.weight
    torch.testing.assert_close(model.wte.weight[:500], old)
    torch.testing.assert_close(model.wte.weight[510], old.mean(0))
    logits, _ = model(torch.tensor([[519, 3]]))
    assert logits.shape == (1, 2, 520)
    model.resize_token_embeddings(300)
    torch.testing.assert_close(model.wte.weight[:300], old[:300])
    assert model(torch.tensor([[299]]))[0].shape == (1, 1, 300)


def test_resize_untied_resizes_head_too():
    model = GPT(_cfg(tie_embeddings=False))
    head = model.lm_head.weight[:500].clone()
    model.resize_token_embeddings(501)
    assert model.lm_head.weight is not model.wte.weight
    torch.testing.assert_close(model.lm_head.weight[500], head.mean(0))
    assert model.num_params() == count_params(model.config)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="attention_impl='flash'.*'sdpa'"):
        GPTConfig(attention_impl="flash")
    with pytest.raises(ValueError, match="valid names: .*'gpt2-xl'"):
        GPTConfig.from_name("gpt-2")
