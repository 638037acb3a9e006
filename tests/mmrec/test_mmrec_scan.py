"""The chunked associative scan against the sequential loop (the oracle)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gptforge.modeling.mmrec_scan import mdi_scan, mdi_scan_sequential


def _inputs(seq_len: int, dtype: torch.dtype, seed: int = 0, gamma_bias: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(2, seq_len, 5, generator=gen, dtype=torch.float64)
    pre = torch.randn(2, seq_len, 5, generator=gen, dtype=torch.float64) + gamma_bias
    h0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    return b.to(dtype), F.logsigmoid(pre).to(dtype), h0.to(dtype)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"]
)
@pytest.mark.parametrize("seq_len", [1, 7, 16, 37, 100])
def test_chunked_scan_equals_sequential_loop(dtype, tol, seq_len):
    b, log_gamma, h0 = _inputs(seq_len, dtype)
    ref, ref_last = mdi_scan_sequential(b, log_gamma.exp(), h0)
    for chunk in (1, 8, 16, 64):  # lengths 7, 37, 100 divide none of 8, 16, 64
        got, got_last = mdi_scan(b, log_gamma, h0, chunk_size=chunk)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, atol=tol, rtol=0)
        torch.testing.assert_close(got_last, ref_last, atol=tol, rtol=0)


def test_initial_state_is_used_and_carried():
    b, log_gamma, h0 = _inputs(37, torch.float64)
    with_h0, _ = mdi_scan(b, log_gamma, h0, chunk_size=8)
    without, _ = mdi_scan(b, log_gamma, None, chunk_size=8)
    # The difference is exactly the decayed initial state: prod_{s<=t} gamma_s * h0.
    expected = log_gamma.cumsum(1).exp() * h0[:, None]
    torch.testing.assert_close(with_h0 - without, expected, atol=1e-12, rtol=0)
    assert (with_h0 - without)[:, -1].abs().max() > 1e-6  # h0 still visible past 4 chunks


def test_scan_split_in_two_with_carried_state_equals_whole():
    b, log_gamma, h0 = _inputs(50, torch.float64, seed=3)
    whole, whole_last = mdi_scan(b, log_gamma, h0, chunk_size=16)
    first, mid = mdi_scan(b[:, :21], log_gamma[:, :21], h0, chunk_size=16)
    second, last = mdi_scan(b[:, 21:], log_gamma[:, 21:], mid, chunk_size=16)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(last, whole_last, atol=1e-12, rtol=0)


def test_scan_stays_finite_with_extreme_decays():
    # gamma near 0 (log gamma -> -large) and near 1 over a long sequence: no overflow, no NaN.
    b, _, h0 = _inputs(2048, torch.float32)
    log_gamma = torch.empty_like(b)
    log_gamma[..., :2] = -80.0
    log_gamma[..., 2:] = torch.log(torch.tensor(0.9999))
    h, last = mdi_scan(b, log_gamma, h0, chunk_size=64)
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    torch.testing.assert_close(h[..., :2], b[..., :2], atol=1e-6, rtol=0)  # no memory at all


def test_scan_gradients_match_sequential_loop():
    b, log_gamma, h0 = _inputs(23, torch.float64, seed=5)
    args = [t.clone().requires_grad_() for t in (b, log_gamma, h0)]
    mdi_scan(args[0], args[1], args[2], chunk_size=8)[0].square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (b, log_gamma, h0)]
    mdi_scan_sequential(ref[0], ref[1].exp(), ref[2])[0].square().sum().backward()
    for got, want in zip(args, ref, strict=True):
        assert torch.isfinite(got.grad).all()
        torch.testing.assert_close(got.grad, want.grad, atol=1e-10, rtol=0)


def test_scan_rejects_bad_shapes():
    b, log_gamma, h0 = _inputs(4, torch.float32)
    with pytest.raises(ValueError, match="log_gamma must have the shape of b"):
        mdi_scan(b, log_gamma[:, :3])
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, D\)"):
        mdi_scan(b, log_gamma, h0[:1])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        mdi_scan(b, log_gamma, chunk_size=0)
