"""KV caches: prefill + token-by-token decode reproduces the full forward; limits are enforced."""

from __future__ import annotations

import pytest
import torch
from gptforge.modeling import CacheOverflowError, KVCache, build_model, get_config

FAMILIES = ["debug", "llama-debug"]


def _model(preset: str, **kw):
    torch.manual_seed(0)
    return build_model(get_config(preset, **kw)).eval()


@pytest.mark.parametrize("static", [False, True], ids=["sliced", "static-shape"])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("preset", FAMILIES)
def test_prefill_then_decode_equals_full_forward(preset, batch, impl, static, monkeypatch):
    if static:  # the path torch.compile / GPU take: attend over the whole masked cache
        monkeypatch.setattr("gptforge.modeling.kv_cache._compiling", lambda: True)
    model = _model(preset, attention_impl=impl)
    T, prompt = 20, 7
    idx = torch.randint(0, model.config.vocab_size, (batch, T))
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V)
        model.setup_caches(max_batch_size=batch, max_seq_len=T)
        steps = [model(idx[:, :prompt], input_pos=torch.arange(prompt))[0]]
        for t in range(prompt, T):
            steps.append(model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", FAMILIES)
def test_smaller_batch_than_cache_and_reset(preset):
    model = _model(preset)
    idx = torch.randint(0, model.config.vocab_size, (2, 6))
    model.setup_caches(max_batch_size=4, max_seq_len=16)
    with torch.no_grad():
        full, _ = model(idx)
        a, _ = model(idx, input_pos=torch.arange(6))
        model(torch.randint(0, 100, (2, 3)), input_pos=torch.arange(6, 9))
        model.reset_caches()
        b, _ = model(idx, input_pos=torch.arange(6))
    torch.testing.assert_close(a, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, a)


@pytest.mark.parametrize("preset", FAMILIES)
def test_cache_overflow_raises_clear_error(preset):
    model = _model(preset)
    model.setup_caches(max_batch_size=1, max_seq_len=8)
    layer_caches = [m for m in model.modules() if isinstance(m, KVCache)]
    assert len(layer_caches) == model.config.n_layer
    assert all(c.k_cache.shape[2] == 8 for c in layer_caches)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), input_pos=torch.arange(8))
        with pytest.raises(CacheOverflowError, match=r"\[8, 8\].*max_seq_len=8"):
            model(torch.zeros(1, 1, dtype=torch.long), input_pos=torch.tensor([8]))
        with pytest.raises(CacheOverflowError, match="max_batch_size=1"):
            model(torch.zeros(2, 1, dtype=torch.long), input_pos=torch.tensor([0]))
    assert all(c.k_cache.shape[2] == 8 for c in layer_caches)  # never grew


@pytest.mark.parametrize("preset", FAMILIES)
def test_cache_errors_without_setup_or_past_block_size(preset):
    model = _model(preset)
    with pytest.raises(RuntimeError, match="setup_caches"):
        model(torch.zeros(1, 1, dtype=torch.long), input_pos=torch.tensor([0]))
    with pytest.raises(ValueError, match="block_size=64"):
        model.setup_caches(1, 65)
    model.setup_caches(1, 4)
    with pytest.raises(ValueError, match=r"shape \(T,\)=\(2,\)"):
        model(torch.zeros(1, 2, dtype=torch.long), input_pos=torch.tensor([0]))


@pytest.mark.parametrize("preset", FAMILIES)
def test_caches_stay_out_of_state_dict_and_follow_dtype(preset):
    model = _model(preset)
    keys = set(model.state_dict())
    model.to(torch.bfloat16).setup_caches(2, 16)
    assert set(model.state_dict()) == keys
    cache = next(m for m in model.modules() if isinstance(m, KVCache))
    assert cache.k_cache.dtype == torch.bfloat16 and cache.k_cache.shape[0] == 2
    with torch.no_grad():
        logits, _ = model(torch.zeros(2, 3, dtype=torch.long), input_pos=torch.arange(3))
    assert logits.dtype == torch.bfloat16
    model.remove_caches()
    assert not model.has_caches


def test_full_forward_ignores_caches_when_no_input_pos():
    model = _model("debug")
    idx = torch.randint(0, 500, (1, 10))
    with torch.no_grad():
        ref, _ = model(idx)
        model.setup_caches(1, 32)
        again, _ = model(idx)
    torch.testing.assert_close(again, ref)


@pytest.mark.parametrize("preset", FAMILIES)
def test_int_input_pos_means_a_contiguous_range(preset):
    model = _model(preset)
    idx = torch.randint(0, model.config.vocab_size, (1, 9))
    model.setup_caches(1, 16)
    with torch.no_grad():
        full, _ = model(idx)
        a, _ = model(idx[:, :5], input_pos=0)
        b, _ = model(idx[:, 5:], input_pos=5)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", FAMILIES)
def test_per_row_positions_decode_each_row_at_its_own_position(preset):
    """(B, T) input_pos (continuous batching): row 0 continues at 6, row 1 rewinds to 3."""
    model = _model(preset)
    V = model.config.vocab_size
    idx = torch.randint(0, V, (2, 6))
    new = torch.randint(0, V, (2, 1))
    model.setup_caches(max_batch_size=2, max_seq_len=16)
    with torch.no_grad():
        model(idx, input_pos=torch.arange(6))
        got, _ = model(new, input_pos=torch.tensor([[6], [3]]))
        row0, _ = model(torch.cat([idx[0], new[0]])[None])
        row1, _ = model(torch.cat([idx[1, :3], new[1]])[None])
    torch.testing.assert_close(got[0, -1], row0[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, -1], row1[0, -1], atol=1e-5, rtol=1e-5)


def _reference_attention(q, k, v, input_pos):
    """Masked softmax over the whole cache: query at position p sees keys 0..p."""
    S = k.size(2)
    mask = torch.arange(S)[None, :] <= input_pos[..., None]  # ([B,] T, S)
    if mask.dim() == 3:
        mask = mask[:, None]  # (B, 1, T, S)
    att = (q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5  # (B, nh, T, S)
    return att.masked_fill(~mask, float("-inf")).softmax(-1) @ v  # (B, nh, T, hs)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
@pytest.mark.parametrize(
    "input_pos",
    [torch.tensor([9]), torch.tensor([3, 4, 5]), torch.tensor([[2, 3], [7, 8]]),
     torch.tensor([[5], [1]])],
    ids=["decode", "chunk", "per-row-chunk", "per-row-decode"],
)  # fmt: skip
def test_cached_attention_equals_masked_softmax_over_the_whole_cache(input_pos, impl, monkeypatch):
    from gptforge.modeling import kv_cache
    from gptforge.modeling.kv_cache import causal_attention, decode_mask

    torch.manual_seed(0)
    B, T, S = 2, input_pos.size(-1), 12
    q = torch.randn(B, 4, T, 8)  # (B, nh, T, hs)
    k, v = torch.randn(B, 4, S, 8), torch.randn(B, 4, S, 8)  # (B, nh, S, hs)
    seen = []
    sdpa = kv_cache.F.scaled_dot_product_attention
    monkeypatch.setattr(
        kv_cache.F, "scaled_dot_product_attention",
        lambda q, k, *a, attn_mask=None, **kw: seen.append((k.size(2), attn_mask))
        or sdpa(q, k, *a, attn_mask=attn_mask, **kw),
    )  # fmt: skip
    ref = _reference_attention(q, k, v, input_pos)
    for mask in (None, decode_mask(torch.arange(S), input_pos)):
        out = causal_attention(q, k, v, input_pos, mask, impl=impl)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if impl == "sdpa":  # eager CPU decoding reads only the filled prefix of the cache
        assert {kv_len for kv_len, _ in seen} == {int(input_pos.max()) + 1}
        if input_pos.dim() == 1 and T == 1:
            assert all(m is None for _, m in seen), "a shared single-token decode needs no mask"


def test_model_builds_one_decode_mask_per_forward(monkeypatch):
    from gptforge.modeling import kv_cache

    calls = []
    real = kv_cache.decode_mask
    monkeypatch.setattr(kv_cache, "decode_mask", lambda *a: calls.append(a) or real(*a))
    model = _model("debug")
    model.setup_caches(1, 16)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), input_pos=0)
        model(torch.zeros(1, 1, dtype=torch.long), input_pos=4)
    assert len(calls) == 2, f"expected one mask per forward, got {len(calls)} for 2 forwards"


@pytest.mark.parametrize("preset", [*FAMILIES, "mmrec-debug"])
def test_setting_up_the_same_caches_again_zeroes_them_in_place(preset):
    # CUDA graphs recorded over the cache buffers replay only while their addresses stay.
    model = _model(preset)
    model.setup_caches(2, 16)
    ptrs = {n: b.data_ptr() for n, b in model.named_buffers()}
    with torch.no_grad():
        model(torch.randint(0, 100, (2, 5)), input_pos=torch.arange(5))
    assert any(b.abs().sum() > 0 for b in model.buffers())
    model.setup_caches(2, 16)
    assert {n: b.data_ptr() for n, b in model.named_buffers()} == ptrs
    # The caches are zeroed; the position tables (cache_positions, RoPE) keep their values.
    caches = [b for n, b in model.named_buffers() if "cache." in n or n.startswith("caches.")]
    assert caches and all(b.abs().sum() == 0 for b in caches)
    model.setup_caches(3, 16)  # another shape: new buffers
    assert {n: b.data_ptr() for n, b in model.named_buffers()} != ptrs


@pytest.mark.parametrize("preset", [*FAMILIES, "mmrec-debug"])
def test_caches_made_for_generation_are_replaced_outside_inference_mode(preset):
    # Generation sets caches up under inference_mode; those cannot be zeroed outside it.
    model = _model(preset)
    with torch.inference_mode():
        model.setup_caches(2, 16)
        ptrs = {n: b.data_ptr() for n, b in model.named_buffers()}
        model.setup_caches(2, 16)  # inside: reused
        assert {n: b.data_ptr() for n, b in model.named_buffers()} == ptrs
    model.setup_caches(2, 16)  # outside: new, writable buffers
    assert not any(b.is_inference() for b in model.buffers())
    with torch.no_grad():
        model(torch.randint(0, 100, (2, 4)), input_pos=torch.arange(4))


@pytest.mark.parametrize("preset", [*FAMILIES, "mmrec-debug"])
def test_explicit_rows_prefill_one_sequence_beside_live_ones(preset):
    """Continuous batching: a sequence prefilled into cache row 2 while rows 0-1 hold others
    decodes like a sequence of its own, and rows 0-1 are untouched."""
    model = _model(preset)
    V = model.config.vocab_size
    a, b = torch.randint(0, V, (2, 7)), torch.randint(0, V, (1, 6))
    model.setup_caches(max_batch_size=3, max_seq_len=16)
    with torch.no_grad():
        full_a, _ = model(a)
        full_b, _ = model(b)
        model(a[:, :6], input_pos=torch.arange(6))  # rows 0 and 1
        first, _ = model(b[:, :5], input_pos=torch.arange(5), rows=torch.tensor([2]))
        step, _ = model(b[:, 5:], input_pos=torch.tensor([[5]]), rows=torch.tensor([2]))
        live, _ = model(a[:, 6:], input_pos=torch.tensor([6]))  # rows 0 and 1 again
    torch.testing.assert_close(first[0], full_b[0, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0, 0], full_b[0, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(live[:, 0], full_a[:, 6], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", [*FAMILIES, "mmrec-debug"])
def test_rows_outside_the_cache_are_refused(preset):
    model = _model(preset)
    model.setup_caches(max_batch_size=2, max_seq_len=8)
    with pytest.raises(CacheOverflowError, match="rows"):
        model(torch.zeros(1, 2, dtype=torch.long), input_pos=0, rows=torch.tensor([2]))
