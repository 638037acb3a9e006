"""Reduced-precision weight modes: logits checked against fp32, generation still works."""

from __future__ import annotations

import copy

import pytest
import torch
from gptforge.modeling.linear import HAS_ONEDNN_LINEAR
from gptforge.sampling import SamplingParams, generate, generate_batch
from gptforge.sampling.precision import MODES, apply_weight_precision, check_logits


@pytest.fixture
def idx(debug_model):
    return torch.randint(
        0, debug_model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize(
    ("mode", "min_top1", "max_kl"),
    [
        ("float32", 1.0, 1e-9),
        ("float16", 0.98, 1e-4),
        ("bfloat16", 0.9, 1e-3),
        ("int8-dynamic", 0.8, 5e-3),
    ],
)
def test_reduced_precision_logits_stay_close_to_fp32(debug_model, idx, mode, min_top1, max_kl):
    reduced = apply_weight_precision(copy.deepcopy(debug_model), mode)
    check = check_logits(debug_model, reduced, idx)
    assert check.top1_agreement >= min_top1 and check.kl_divergence <= max_kl, check


@pytest.mark.parametrize("mode", ["float16", "int8-dynamic"])
def test_generation_runs_in_reduced_precision(debug_model, mode):
    reduced = apply_weight_precision(copy.deepcopy(debug_model), mode)
    out = generate(reduced, [1, 2, 3], 8, temperature=0.0)
    assert out.shape == (11,)
    (c,) = generate_batch(
        reduced,
        [
            [4, 5],
        ],
        SamplingParams(max_new_tokens=5, temperature=0.0),
    )
    assert len(c.token_ids) == 5


def test_check_logits_flags_a_broken_model(debug_model, idx):
    broken = copy.deepcopy(debug_model)
    with torch.no_grad():
        broken.lm_head.weight.mul_(-1)  # tied: flips every logit
    assert not check_logits(debug_model, broken, idx).ok()


def test_unknown_mode_lists_the_modes(debug_model):
    with pytest.raises(ValueError, match="int4") as err:
        apply_weight_precision(debug_model, "int4")
    assert all(m in str(err.value) for m in MODES)


@pytest.mark.parametrize("packed", [True, False], ids=["onednn-packed", "transposed"])
@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_float32_decode_layout_generates_the_same_greedy_tokens(
    tokenizer, preset, packed, monkeypatch
):
    from gptforge.modeling import build_model, get_config
    from gptforge.sampling import precision

    if packed and not HAS_ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(precision, "_can_pack", lambda model: packed)
    torch.manual_seed(0)
    model = build_model(get_config(preset, vocab_size=tokenizer.n_vocab)).eval()
    fast = apply_weight_precision(copy.deepcopy(model), "float32")
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    if packed:  # every projection and the head run on oneDNN with packed weights
        assert not linears
        assert isinstance(fast.lm_head, precision._PackedLinear)
        embedding = getattr(fast, fast.token_embedding_name)
        assert fast.lm_head.weight is embedding.weight or not model.config.tie_embeddings
    else:
        # Widening projections (and the head) get the (in, out) layout; narrowing ones keep
        # nn.Linear's (out, in), which MKL's single-row GEMV reads faster.
        assert linears and all(m.out_features < m.in_features for m in linears)
    idx = torch.arange(12)[None]  # (1, 12)
    torch.testing.assert_close(fast(idx)[0], model(idx)[0], atol=1e-5, rtol=1e-5)
    a = generate(model, [5, 6, 7], 16, temperature=0.0)
    b = generate(fast, [5, 6, 7], 16, temperature=0.0)
    assert torch.equal(a, b)


def test_only_weights_too_large_for_the_caches_are_packed(monkeypatch):
    from gptforge.sampling import precision

    if not HAS_ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))  # 16 KiB of weights
    assert not precision._can_pack(model)
    monkeypatch.setattr(precision, "PACK_MIN_BYTES", 16 << 10)
    assert precision._can_pack(model)
