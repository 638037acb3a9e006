"""Cross-entropy over the LM head's logits, computed in cache-sized row chunks.

``F.cross_entropy`` materialises a full ``(N, V)`` log-softmax in the forward pass and, in the
backward pass, a zero-filled ``(N, V)`` gradient of the NLL plus the log-softmax backward: about
eight passes over the logits through main memory. On a CPU those passes cost as much as a
transformer layer at the ``tiny`` presets (8 x 256 tokens x 8192 vocab = 64 MiB per pass).

:func:`cross_entropy` computes the same value and gradient (``ignore_index`` honoured, mean over
the counted targets) but keeps only the per-row log-sum-exp ``(N,)`` between the passes and
builds the gradient ``softmax - one_hot`` chunk by chunk, so each chunk is read from memory once
and written once while it sits in cache. Logits stay untouched, so callers can still use them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Rows per chunk: 32 rows of an 8192-word vocabulary are 1 MiB of fp32, which stays in L2.
CHUNK_BYTES = 1 << 20


def _rows_per_chunk(V: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // (V * itemsize))


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        N, V = logits.shape  # fp32 or fp64, see cross_entropy
        valid = targets != ignore_index  # (N,)
        safe = targets.masked_fill(~valid, 0)  # (N,) in-range ids for the gather
        lse = torch.empty(N, dtype=logits.dtype, device=logits.device)  # (N,)
        step = _rows_per_chunk(V, logits.element_size())
        for s in range(0, N, step):
            lse[s : s + step] = torch.logsumexp(logits[s : s + step], dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1)  # (N,)
        count = valid.sum()
        loss = ((lse - picked) * valid).sum() / count  # NaN for zero targets, like F.cross_entropy
        ctx.save_for_backward(logits, lse, safe, valid, count)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        logits, lse, safe, valid, count = ctx.saved_tensors
        N, V = logits.shape
        scale = (grad_out / count) * valid  # (N,) d loss / d row, zero for ignored rows
        grad = torch.empty_like(logits)  # (N, V)
        step = _rows_per_chunk(V, logits.element_size())
        for s in range(0, N, step):
            g = grad[s : s + step]  # (n, V) view
            torch.sub(logits[s : s + step], lse[s : s + step, None], out=g)
            g.exp_().mul_(scale[s : s + step, None])  # softmax * scale
        grad.scatter_add_(1, safe[:, None], -scale[:, None])  # - one_hot * scale
        return grad, None, None


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of ``(N, V)`` logits against ``(N,)`` targets, chunked for CPU caches.

    Same value and gradient as ``F.cross_entropy(logits.float(), targets,
    ignore_index=ignore_index)`` (the log-sum-exp runs in fp32), with less memory traffic and
    no ``(N, V)`` log-softmax kept for the backward pass. Not twice differentiable.

    Args:
        logits: (N, V) scores (half precision is computed in fp32); ``-inf`` columns (a padded vocabulary) get zero probability.
        targets: (N,) class ids, or ``ignore_index`` for rows that do not count.
        ignore_index: the target value to skip.

    >>> logits = torch.randn(6, 10, requires_grad=True)
    >>> targets = torch.tensor([1, 2, 3, -100, 5, 6])
    >>> torch.allclose(cross_entropy(logits, targets),
    ...                torch.nn.functional.cross_entropy(logits, targets))
    True
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy needs (N, V) logits and (N,) targets, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}; flatten the batch and time dims first"
        )
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # (N, V) fp32: half-precision exp/sum loses the small terms
    return _ChunkedCrossEntropy.apply(logits, targets, ignore_index)


__all__ = ["cross_entropy"]
