"""MM-Rec model: decode/prefill/chunk equivalence, causality, gradients, stability, interface."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from gptforge.modeling.mmrec import MDIMixer, MMRec, init_decay_bias
from gptforge.modeling.mmrec_config import MMRecConfig


def _model(seed: int = 0, **overrides) -> MMRec:
    torch.manual_seed(seed)
    return MMRec(MMRecConfig.from_name("mmrec-debug", **overrides)).eval()


def _tokens(bsz: int, seq_len: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (bsz, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bsz", [1, 3])
def test_full_forward_equals_prefill_plus_decode(bsz):
    model = _model()
    idx = _tokens(bsz, 41)
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_caches(max_batch_size=4, max_seq_len=64)
        prefill = 13
        pieces = [model(idx[:, :prefill], input_pos=torch.arange(prefill))[0]]
        for t in range(prefill, idx.shape[1]):
            pieces.append(model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0])
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


def test_full_forward_equals_chunked_processing_with_carried_state():
    model = _model(chunk_size=8)
    idx = _tokens(2, 50)
    with torch.no_grad():
        full, _ = model(idx)
        states, pieces = None, []
        for lo, hi in [(0, 11), (11, 12), (12, 37), (37, 50)]:  # uneven, not chunk-aligned
            logits, states = model.forward_state(idx[:, lo:hi], states)
            pieces.append(logits)
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)
        # The same through the cache interface, chunks given as consecutive input_pos.
        model.setup_caches(2, 64)
        pieces = [
            model(idx[:, lo:hi], input_pos=torch.arange(lo, hi))[0]
            for lo, hi in [(0, 20), (20, 21), (21, 50)]
        ]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [0, 5, 16, 39])
def test_changing_token_k_leaves_earlier_logits_unchanged(k):
    model = _model()
    idx = _tokens(2, 40)
    changed = idx.clone()
    changed[:, k] = (changed[:, k] + 7) % 256
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.equal(a[:, :k], b[:, :k])
    assert not torch.allclose(a[:, k:], b[:, k:])  # the change is visible from k on


def test_every_parameter_receives_a_finite_nonzero_gradient():
    model = _model().train()
    idx = _tokens(2, 37)
    _, loss = model(idx, targets=torch.roll(idx, -1, dims=1))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name


def test_mixer_gradcheck_fp64():
    torch.manual_seed(0)
    cfg = MMRecConfig.from_name(
        "mmrec-debug", n_embd=8, n_head=2, n_memory=4, memory_pool=2, decay_hidden=4, chunk_size=3
    )
    mixer = MDIMixer(cfg).double()
    u = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    params = list(mixer.parameters())

    names = [n for n, _ in mixer.named_parameters()]

    def fn(u, h0, *flat):
        return torch.func.functional_call(mixer, dict(zip(names, flat, strict=True)), (u, h0))

    inputs = (u, h0, *[p.detach().clone().requires_grad_() for p in params])
    # fast_mode checks random projections of the full Jacobian: every input and parameter is
    # covered at a fraction of the cost of column-by-column finite differences.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_mixer_matches_the_formula_step_by_step():
    """An independent oracle: the mixer written as docs/mmrec.md's equations, one step at a time."""
    torch.manual_seed(0)
    cfg = MMRecConfig.from_name("mmrec-debug", chunk_size=4)
    mixer = MDIMixer(cfg).double()
    u = torch.randn(2, 9, cfg.n_embd, dtype=torch.float64)
    h = torch.randn(2, cfg.n_embd, dtype=torch.float64)
    got, got_last = mixer(u, h)

    slots = mixer.memory.slots
    levels = [slots] + [slots.view(-1, cfg.memory_pool**i, cfg.n_embd).mean(1) for i in range(1, 3)]
    mem = torch.cat(levels)  # (S, D)
    nh, hs = cfg.n_head, cfg.head_dim
    att = mixer.mem_attn
    k = att.k_proj(mem).view(-1, nh, hs)
    v = att.v_proj(mem).view(-1, nh, hs)
    outs = []
    for t in range(u.shape[1]):
        ut = u[:, t]
        g = torch.sigmoid(mixer.w_g(ut))
        gamma = torch.sigmoid(mixer.decay.fc2(F.silu(mixer.decay.fc1(ut))))
        h = g * mixer.w_z(ut) + gamma * h
        hn = mixer.norm_h(h)
        q = att.q_proj(hn).view(-1, nh, hs)
        w = torch.softmax(torch.einsum("bhd,shd->bhs", q, k) / math.sqrt(hs), dim=-1)
        read = att.o_proj(torch.einsum("bhs,shd->bhd", w, v).reshape(-1, cfg.n_embd))
        outs.append(mixer.w_out(hn + read))
    torch.testing.assert_close(got, torch.stack(outs, 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(got_last, h, atol=1e-10, rtol=0)


def test_eval_mode_is_deterministic_and_memory_is_not_written():
    model = _model(dropout=0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = _tokens(2, 30)
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(idx)
        model.setup_caches(2, 40)
        model(idx, input_pos=torch.arange(30))
    assert torch.equal(a, b)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed outside the optimizer"
    assert torch.equal(_model(dropout=0.2)(idx)[0], a)  # same seed, same model, same output


def test_initial_decays_lie_in_the_configured_range():
    model = _model()
    u = torch.randn(1, 5, model.config.n_embd)
    gamma = torch.sigmoid(model.h[0].mixer.decay(u))
    assert gamma.min() > 0.85 and gamma.max() < 0.995


def test_no_nan_or_inf_at_8192_tokens_with_decay_near_0999():
    model = _model().train()
    for block in model.h:
        init_decay_bias(block.mixer.decay.fc2.bias, 0.999, 0.999)
    idx = _tokens(1, 8192)
    logits, loss = model(idx, targets=idx)
    assert torch.isfinite(logits).all()
    loss.backward()
    for name, param in model.named_parameters():
        assert torch.isfinite(param.grad).all(), name


def test_generation_state_has_constant_size():
    model = _model()
    model.setup_caches(1, 100_000)
    shapes = {tuple(c.h.shape) for c in model.caches}
    with torch.no_grad():
        model(_tokens(1, 8), input_pos=torch.arange(8))
        for t in range(8, 40):
            model(_tokens(1, 1, seed=t), input_pos=torch.tensor([t]))
    assert {tuple(c.h.shape) for c in model.caches} == shapes == {(1, model.config.n_embd)}


def test_input_pos_must_be_consecutive_and_continue():
    model = _model()
    idx = _tokens(1, 6)
    with pytest.raises(RuntimeError, match="call model.setup_caches"):
        model(idx, input_pos=torch.arange(6))
    model.setup_caches(2, 16)
    with pytest.raises(ValueError, match="must be consecutive"):
        model(idx, input_pos=torch.tensor([0, 1, 2, 4, 5, 6]))
    model(idx, input_pos=torch.arange(6))
    with pytest.raises(ValueError, match="must continue at position 6"):
        model(idx[:, :1], input_pos=torch.tensor([3]))
    with pytest.raises(ValueError, match="exceed max_seq_len=16"):
        model(_tokens(1, 11), input_pos=torch.arange(6, 17))
    with pytest.raises(ValueError, match="exceeds the max_batch_size 2"):
        model(_tokens(3, 2), input_pos=torch.arange(2))
    # Restarting at 0 starts a fresh sequence: same logits as the first time.
    with torch.no_grad():
        first = model(idx, input_pos=torch.arange(6))[0]
        again = model(idx, input_pos=torch.arange(6))[0]
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_loss_ignores_minus_100_and_padded_vocab_is_hidden():
    model = _model(vocab_size=200)
    assert model.wte.weight.shape[0] == 256
    idx = _tokens(2, 10) % 200
    targets = idx.clone()
    targets[:, :4] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 10, 200)
    want = F.cross_entropy(logits[:, 4:].reshape(-1, 200), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("tie", [True, False])
def test_resize_token_embeddings_keeps_rows_and_ties(tie):
    model = _model(tie_embeddings=tie)
    old = model.wte.weight[:256].detach().clone()
    model.resize_token_embeddings(300)
    assert model.config.vocab_size == 300 and model.wte.weight.shape[0] == 320
    torch.testing.assert_close(model.wte.weight[:256], old)
    torch.testing.assert_close(model.wte.weight[256:300], old.mean(0).expand(44, -1))
    assert (model.lm_head.weight is model.wte.weight) == tie
    assert model(_tokens(1, 3))[0].shape == (1, 3, 300)


def test_swiglu_rmsnorm_variant_runs_and_matches_decode():
    model = _model(ffn="swiglu", norm="rmsnorm", bias=False)
    assert hasattr(model.h[0].mlp, "gate_proj")
    idx = _tokens(1, 20)
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_caches(1, 20)
        pieces = [model(idx[:, :5], input_pos=torch.arange(5))[0]]
        pieces += [model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0] for t in range(5, 20)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"valid names: \['mmrec-debug', 'mmrec-tiny'\]"):
        MMRecConfig.from_name("mmrec-huge")
    with pytest.raises(ValueError, match="divisible by n_head"):
        MMRecConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_memory=10"):
        MMRecConfig(n_memory=10, memory_pool=4, n_memory_levels=3)
    with pytest.raises(ValueError, match="norm='batchnorm'"):
        MMRecConfig(norm="batchnorm")  # type: ignore[arg-type]


def test_rows_at_different_positions_decode_like_separate_sequences():
    """Per-row (B, T) positions: continuous batching where every row is at its own position."""
    model = _model()
    a, b = _tokens(1, 12, seed=4), _tokens(1, 7, seed=5)
    with torch.no_grad():
        full_a, full_b = model(a)[0], model(b)[0]
        model.setup_caches(2, 32)
        # Prefill each sequence into its own cache row, as the engine does.
        model(a[:, :10], input_pos=torch.arange(10), rows=torch.tensor([0]))
        model(b[:, :5], input_pos=torch.arange(5), rows=torch.tensor([1]))
        pos = torch.tensor([[10], [5]])
        step1 = model(torch.stack([a[0, 10:11], b[0, 5:6]]), input_pos=pos)[0]
        step2 = model(torch.stack([a[0, 11:12], b[0, 6:7]]), input_pos=pos + 1)[0]
        with pytest.raises(ValueError, match=r"continue at position 12 .* \(batch row 0\)"):
            model(torch.stack([a[0, :1], b[0, :1]]), input_pos=torch.tensor([[5], [7]]))
    torch.testing.assert_close(step1[0, 0], full_a[0, 10], atol=1e-5, rtol=0)
    torch.testing.assert_close(step1[1, 0], full_b[0, 5], atol=1e-5, rtol=0)
    torch.testing.assert_close(step2[0, 0], full_a[0, 11], atol=1e-5, rtol=0)
    torch.testing.assert_close(step2[1, 0], full_b[0, 6], atol=1e-5, rtol=0)
