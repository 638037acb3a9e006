"""Fused LM head + cross-entropy: the loss and both gradients equal the unfused computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gptforge.modeling import linear as linear_mod
from gptforge.modeling import loss as loss_mod
from gptforge.modeling.loss import linear_cross_entropy

from ._loss_batch import model_with_masked_batch


def _inputs(N: int, C: int, Vp: int, V: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(N * C + Vp)
    x = torch.randn(N, C, generator=g, dtype=dtype).requires_grad_()  # (N, C)
    w = (torch.randn(Vp, C, generator=g, dtype=dtype) * 0.5).requires_grad_()  # (Vp, C)
    targets = torch.randint(0, V, (N,), generator=g)  # (N,)
    targets[::5] = -100
    return x, w, targets


def _reference(x, w, targets, V):
    loss = F.cross_entropy(F.linear(x, w)[:, :V], targets)
    return (loss, *torch.autograd.grad(loss * 0.7, (x, w)))


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("N", "C", "Vp", "V"), [(3, 4, 10, 10), (37, 8, 64, 50), (700, 16, 320, 300)]
)
def test_matches_unfused_value_and_gradients(N, C, Vp, V, dtype, onednn, monkeypatch):
    if onednn and not linear_mod.onednn_linear_available():
        pytest.skip("oneDNN linear needs an x86 CPU torch with oneDNN")
    if not onednn:
        monkeypatch.setattr(linear_mod, "onednn_linear_available", lambda: False)
    monkeypatch.setattr(loss_mod, "LCE_MIN_ROWS", 16)  # several chunks, a ragged last one
    monkeypatch.setattr(loss_mod, "LCE_CHUNK_BYTES", 16 * V * 4)
    x, w, targets = _inputs(N, C, Vp, V, dtype)
    ref, gx_ref, gw_ref = _reference(x, w, targets, V)
    ours = linear_cross_entropy(x, w, targets, vocab_size=V)
    gx, gw = torch.autograd.grad(ours * 0.7, (x, w))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(gx, gx_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(gw, gw_ref, atol=tol, rtol=tol)
    assert torch.all(gw[V:] == 0), "padding rows of the head must get no gradient"
    assert torch.all(gx[::5] == 0), "ignored rows must get no gradient"


def test_plain_backward_hands_over_gradients_and_retain_graph_stays_exact():
    # loss.backward() (incoming gradient 1) passes the saved gradients on without a copy; a
    # retained graph must still give the same gradients on the second pass.
    x, w, targets = _inputs(50, 8, 40, 40, torch.float32)
    _, gx_ref, gw_ref = _reference(x, w, targets, 40)
    loss = linear_cross_entropy(x, w, targets)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, gx_ref / 0.7)
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * gx_ref / 0.7)
    torch.testing.assert_close(w.grad, 2 * gw_ref / 0.7)


@pytest.mark.parametrize("host_reads", [True, False], ids=["cpu-path", "gpu-path"])
def test_underflowing_target_probability_keeps_the_exact_loss(host_reads, monkeypatch):
    # Target logits 200 below the max: softmax gives p = 0 in fp32, the loss must still be 200.
    # The GPU path (no host read per chunk) is forced here to run on the CPU.
    monkeypatch.setattr(loss_mod, "_host_reads_are_cheap", lambda device: host_reads)
    x = torch.tensor([[1.0, 0.0]] * 4, requires_grad=True)
    w = torch.tensor([[200.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([1, 2, 0, 1])
    ours = linear_cross_entropy(x, w, targets)
    ref = F.cross_entropy(x @ w.T, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref)


def test_autocast_bf16_is_close_and_grads_keep_parameter_dtypes():
    x, w, targets = _inputs(64, 32, 128, 128, torch.float32)
    ref, gx_ref, gw_ref = _reference(x, w, targets, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(x, w, targets)
    gx, gw = torch.autograd.grad(ours * 0.7, (x, w))
    assert ours.dtype == torch.float32 and gx.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(gw, gw_ref, atol=5e-3, rtol=5e-2)


def test_no_grad_gives_the_loss_only():
    x, w, targets = _inputs(40, 8, 30, 30, torch.float32)
    with torch.no_grad():
        ours = linear_cross_entropy(x, w, targets)
    assert not ours.requires_grad
    torch.testing.assert_close(ours, F.cross_entropy(x @ w.T, targets))


def test_no_counted_target_gives_nan_like_torch():
    x, w, _ = _inputs(3, 4, 5, 5, torch.float32)
    assert torch.isnan(linear_cross_entropy(x, w, torch.full((3,), -100)))


def test_rejects_bad_shapes_with_the_fix():
    x, w, targets = _inputs(4, 8, 10, 10, torch.float32)
    with pytest.raises(ValueError, match="flatten the batch and time dims"):
        linear_cross_entropy(x[None], w, targets)
    with pytest.raises(ValueError, match=r"targets must have shape \(4,\)"):
        linear_cross_entropy(x, w, targets[:3])
    with pytest.raises(ValueError, match=r"vocab_size=11 must be in \[1, 10\]"):
        linear_cross_entropy(x, w, targets, vocab_size=11)


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "mmrec-debug"])
def test_model_training_path_equals_the_logits_path(preset):
    """``return_logits=False`` gives the same loss and parameter gradients, and no logits."""
    model, idx, targets = model_with_masked_batch(preset)
    params = [p for p in model.parameters() if p.requires_grad]
    _, ref = model(idx, targets)
    ref_grads = torch.autograd.grad(ref, params)
    logits, loss = model(idx, targets, return_logits=False)
    grads = torch.autograd.grad(loss, params)
    assert logits is None
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_float16_input_gradient_does_not_underflow():
    # Scaled by 1/N, fp16 gradient entries of a large batch fall below fp16's range; they are
    # kept in fp32 until the (loss-scaled) backward pass casts them.
    torch.manual_seed(0)
    N, C, V = 4096, 32, 2048
    x = torch.randn(N, C, requires_grad=True)
    w = torch.randn(V, C) * 0.05
    t = torch.randint(0, V, (N,))
    ref = torch.autograd.grad(F.cross_entropy(x @ w.t(), t), x)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        loss = linear_cross_entropy(x, w, t)
    (ours,) = torch.autograd.grad(loss * 1024.0, x)  # as a GradScaler scales it
    ours = ours / 1024.0
    assert ours.dtype == torch.float32
    assert int((ours == 0).sum()) == int((ref == 0).sum()) == 0
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=2e-2)
