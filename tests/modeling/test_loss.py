"""Chunked cross-entropy: same value and gradient as ``F.cross_entropy``, in and out of the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gptforge.modeling import loss as loss_mod
from gptforge.modeling.loss import cross_entropy

from ._loss_batch import model_with_masked_batch


def _logits(N: int, V: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(N * V)
    logits = torch.randn(N, V, generator=g, dtype=dtype) * 3  # (N, V)
    logits[:, V - 3 :] = float("-inf")  # a padded vocabulary's columns
    targets = torch.randint(0, V - 3, (N,), generator=g)  # (N,)
    targets[::4] = -100
    return logits.requires_grad_(), targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("N", "V"), [(2, 7), (37, 50), (300, 1000)])
def test_matches_torch_value_and_gradient(N, V, dtype, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 4096)  # several chunks, a ragged last one
    logits, targets = _logits(N, V, dtype)
    ours = cross_entropy(logits, targets)
    (g_ours,) = torch.autograd.grad(ours * 0.7, logits)
    ref = F.cross_entropy(logits, targets)
    (g_ref,) = torch.autograd.grad(ref * 0.7, logits)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(g_ours, g_ref, atol=tol, rtol=tol)
    assert torch.all(g_ours[:, V - 3 :] == 0), "padding columns must get no gradient"
    assert torch.all(g_ours[::4] == 0), "ignored rows must get no gradient"


def test_half_precision_logits_are_reduced_in_fp32():
    logits, targets = _logits(64, 300, torch.float32)
    half = logits.detach().bfloat16().requires_grad_()
    ours = cross_entropy(half, targets)
    ours.backward()
    ref = F.cross_entropy(half.detach().float(), targets)
    assert ours.dtype == torch.float32 and half.grad is not None
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_no_counted_target_gives_nan_like_torch():
    logits = torch.randn(3, 5, requires_grad=True)
    targets = torch.full((3,), -100)
    assert torch.isnan(cross_entropy(logits, targets))
    assert torch.isnan(F.cross_entropy(logits, targets))


def test_rejects_unflattened_inputs():
    with pytest.raises(ValueError, match=r"\(N, V\) logits and \(N,\) targets"):
        cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_model_loss_and_gradients_match_torch_cross_entropy(preset):
    model, idx, targets = model_with_masked_batch(preset)
    logits, loss = model(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
