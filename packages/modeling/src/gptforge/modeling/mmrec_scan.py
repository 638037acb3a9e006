"""The MDI recurrence of MM-Rec and its chunked associative scan.

The recurrence is ``h_t = b_t + gamma_t * h_{t-1}`` with ``b_t = g_t * z_t`` and every factor
computed from the input alone, so it is a first-order linear recurrence and the pairs
``(gamma_t, b_t)`` compose with the associative operator

    (a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2)

which is what makes a parallel scan possible at all (the original design's gate
``sigmoid(W_g h_{t-1})`` depended on the state and could not be scanned).

:func:`mdi_scan` evaluates the operator chunk by chunk. Inside a chunk every prefix product
``gamma_{s+1} ... gamma_t`` is ``exp(c_t - c_s)`` where ``c`` is the cumulative sum of
``log gamma``; since ``log gamma <= 0`` the differences for ``s <= t`` are never positive and the
exponentials never exceed 1, so nothing overflows however long the sequence or however close
gamma is to 0 or 1. Entries with ``s > t`` are masked to ``-inf`` before the exponential. Across
chunks the operator is applied to per-chunk summaries ``(prod gamma, h_end)``, carrying the state.
The work runs in fp32 (fp64 inputs stay fp64) and the result is cast back to the input dtype.

:func:`mdi_scan_sequential` is the plain loop, kept as the test oracle, and :func:`mdi_step` is
one decode step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mdi_scan", "mdi_scan_sequential", "mdi_step", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 64


def _check_inputs(b: Tensor, decay: Tensor, h0: Tensor | None, decay_name: str) -> None:
    if b.dim() != 3:
        raise ValueError(f"b must have shape (B, T, D), got {tuple(b.shape)!r}")
    if decay.shape != b.shape:
        raise ValueError(
            f"{decay_name} must have the shape of b {tuple(b.shape)!r}, got {tuple(decay.shape)!r}"
        )
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(
            f"h0 must have shape (B, D) = {(b.shape[0], b.shape[2])!r}, got {tuple(h0.shape)!r}"
        )


def mdi_scan(
    b: Tensor,
    log_gamma: Tensor,
    h0: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Run ``h_t = b_t + exp(log_gamma_t) * h_{t-1}`` over a whole sequence by a chunked scan.

    Args:
        b: the gated input ``g * z``, shape (B, T, D).
        log_gamma: the log of the decay, shape (B, T, D), every entry <= 0 (use
            ``F.logsigmoid`` to produce it without ever forming gamma).
        h0: the state before the first step, shape (B, D); zeros when None.
        chunk_size: chunk length L; the scan materialises (B, T/L, L, L, D) weights, so memory
            grows with L while the number of sequential chunk steps shrinks. T need not divide L.

    Returns:
        ``(h, h_last)``: every state, shape (B, T, D), and the final state, shape (B, D), both in
        the dtype of ``b``.

    >>> b, lg = torch.ones(1, 3, 1), torch.full((1, 3, 1), -0.6931471805599453)
    >>> mdi_scan(b, lg)[0].flatten().tolist()  # 1, 1 + 1/2, 1 + 3/4
    [1.0, 1.5, 1.75]
    """
    _check_inputs(b, log_gamma, h0, "log_gamma")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    bsz, seq_len, dim = b.shape
    out_dtype = b.dtype
    work = torch.promote_types(b.dtype, torch.float32)
    if seq_len == 0:
        last = h0 if h0 is not None else b.new_zeros(bsz, dim)
        return b, last.to(out_dtype)

    chunk = min(chunk_size, seq_len)
    pad = (-seq_len) % chunk
    x = b.to(work)
    lg = log_gamma.to(work)
    if pad:
        # Padded steps have b = 0 and gamma = 1: they leave the state unchanged, so the state
        # after the last padded step is the state after the last real step.
        x = F.pad(x, (0, 0, 0, pad))
        lg = F.pad(lg, (0, 0, 0, pad))
    n_chunks = (seq_len + pad) // chunk
    x = x.view(bsz, n_chunks, chunk, dim)  # (B, n, L, D)
    c = lg.view(bsz, n_chunks, chunk, dim).cumsum(dim=2)  # (B, n, L, D), non-increasing in L

    # Intra-chunk: h_t = sum_{s <= t} exp(c_t - c_s) b_s, the scan from a zero state.
    diff = c.unsqueeze(3) - c.unsqueeze(2)  # (B, n, L_t, L_s, D) = c_t - c_s
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=b.device).tril()
    diff = diff.masked_fill(~causal[:, :, None], float("-inf"))  # s > t never contributes
    intra = (diff.exp() * x.unsqueeze(2)).sum(dim=3)  # (B, n, L, D)

    # Inter-chunk: fold the chunk summaries (exp(c_end), intra_end) with the operator, in order.
    decay_in = c.exp()  # (B, n, L, D): product of gammas from the chunk start to t, <= 1
    state = h0.to(work) if h0 is not None else x.new_zeros(bsz, dim)  # (B, D)
    # Unbind the (B, n, D) chunk ends once: slicing inside the loop would make autograd
    # allocate a full-size gradient per chunk.
    chunk_decay = decay_in[:, :, -1].unbind(dim=1)  # n x (B, D)
    chunk_end = intra[:, :, -1].unbind(dim=1)  # n x (B, D)
    carried = []
    for a_k, e_k in zip(chunk_decay, chunk_end, strict=True):
        carried.append(state)
        state = a_k * state + e_k  # (B, D): (a, state) o (a_k, e_k)
    starts = torch.stack(carried, dim=1)  # (B, n, D): the state entering each chunk
    h = intra + decay_in * starts.unsqueeze(2)  # (B, n, L, D)
    h = h.reshape(bsz, n_chunks * chunk, dim)[:, :seq_len]  # (B, T, D)
    return h.to(out_dtype), state.to(out_dtype)


def mdi_scan_sequential(
    b: Tensor, gamma: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The plain loop ``h_t = b_t + gamma_t * h_{t-1}``: the reference :func:`mdi_scan` must match.

    Args:
        b: the gated input, shape (B, T, D).
        gamma: the decay in (0, 1], shape (B, T, D).
        h0: the initial state, shape (B, D); zeros when None.

    Returns:
        ``(h, h_last)`` as for :func:`mdi_scan`, in the dtype of ``b``.
    """
    _check_inputs(b, gamma, h0, "gamma")
    bsz, seq_len, dim = b.shape
    h = h0 if h0 is not None else b.new_zeros(bsz, dim)  # (B, D)
    states = []
    for t in range(seq_len):
        h = mdi_step(b[:, t], gamma[:, t], h)
        states.append(h)
    out = torch.stack(states, dim=1) if states else b.new_zeros(bsz, 0, dim)  # (B, T, D)
    return out, h


def mdi_step(b_t: Tensor, gamma_t: Tensor, h_prev: Tensor) -> Tensor:
    """One recurrence step ``h_t = b_t + gamma_t * h_{t-1}``; every tensor has shape (B, D)."""
    return b_t + gamma_t * h_prev
