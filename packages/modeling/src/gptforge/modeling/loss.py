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
from gptforge.modeling.linear import onednn_linear, onednn_operands
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: Target value that does not count in the loss (prompt tokens, padding).
IGNORE_INDEX = -100

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


#: Logit rows per chunk of :func:`linear_cross_entropy`: 16 MiB of fp32 logits measured best on
#: a 2-core AVX-512 CPU (tiny, V=8192: 512 rows). Below 32 MiB glibc serves the buffer from the
#: heap instead of fresh mmap pages, which cost about 10 ms per 64 MiB in page faults.
LCE_CHUNK_BYTES = 16 << 20
#: The same on an accelerator: bigger chunks mean fewer kernel launches (an H100 has the
#: memory; not measured on one yet).
LCE_CHUNK_BYTES_GPU = 128 << 20
#: Below this probability ``-log p`` loses digits (fp32 denormals); such rows use logsumexp.
_TINY_PROB = 1e-30
#: Fewer rows than this starve the matmuls (measured: 64-row chunks run at half speed).
LCE_MIN_ROWS = 256


def _host_reads_are_cheap(device: torch.device) -> bool:
    """On a CPU reading a value back costs nothing; on a GPU it waits for the queue to drain."""
    return device.type == "cpu"


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and both gradients of ``cross_entropy(x @ weight[:V].T, targets)`` in one pass.

    The forward pass walks the rows in chunks: logits of a chunk are computed into a reused
    buffer, their softmax into a second one, which gives the loss and, turned in place into
    ``softmax - one_hot``, is multiplied straight into the input and weight gradients. The (N, V) logits never exist, so there is
    neither their memory nor a second pass over them; the backward pass only scales the saved
    gradients by the incoming one, or hands them over when it is 1 (Liger's fused linear
    cross-entropy, on CPU and GPU). On x86 CPUs the two (n, V)-sized products run on oneDNN
    (:mod:`gptforge.modeling.linear`).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, vocab_size: int
    ) -> Tensor:
        N, C = x.shape
        V = vocab_size
        device_type = x.device.type
        compute = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else x.dtype
        )
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = targets != ignore_index  # (N,)
        safe = targets.masked_fill(~valid, 0)  # (N,)
        any_ignored = bool((~valid).any())
        with torch.autocast(device_type, enabled=False):
            xc, wc = x.to(compute), weight[:V].to(compute)  # (N, C), (V, C): no padding rows
            on_cpu = _host_reads_are_cheap(x.device)
            chunk_bytes = LCE_CHUNK_BYTES if on_cpu else LCE_CHUNK_BYTES_GPU
            rows = min(N, max(LCE_MIN_ROWS, chunk_bytes // (V * 4)))
            acc = torch.promote_types(compute, torch.float32)  # softmax and sums: >= fp32
            exact = acc == compute  # no casts between the matmuls and the softmax
            dnn = exact and onednn_operands(xc, wc)  # the two (n, V)-sized products on oneDNN
            count = valid.sum()
            # 1/count folded into the gradient products; a Python float (one sync, like the
            # underflow check below).
            inv = 1.0 / max(int(count), 1)
            buf = torch.empty(rows, V, dtype=acc, device=x.device)  # logits of a chunk
            probs = torch.empty_like(buf)  # their softmax, then the gradient
            total = torch.zeros((), dtype=acc, device=x.device)
            # In fp32 at least: scaled by 1/N, half-precision entries would underflow (fp16),
            # before a loss scale arriving in backward could lift them.
            grad_x = torch.empty(xc.shape, dtype=acc, device=x.device) if need_grad else None
            grad_w = (
                torch.zeros(weight.shape, dtype=acc, device=x.device) if need_grad else None
            )  # (Vp, C)
            for s in range(0, N, rows):
                xs, ts = xc[s : s + rows], safe[s : s + rows, None]  # (n, C), (n, 1)
                n = xs.size(0)
                lg, g = buf[:n], probs[:n]  # (n, V) each
                if dnn:
                    lg = onednn_linear(xs, wc)
                elif exact:
                    torch.mm(xs, wc.t(), out=lg)
                else:
                    lg.copy_(xs @ wc.t())  # half-precision matmul, fp32 softmax
                # One fused softmax kernel is 4x faster on CPU than logsumexp + sub + exp; the
                # loss is -log p[target], exact unless p[target] underflows (checked below).
                torch.softmax(lg, dim=-1, out=g)
                p_t = g.gather(1, ts).squeeze(1)  # (n,)
                nll = -p_t.log()
                tiny = p_t < _TINY_PROB
                if not on_cpu:  # no host read per chunk: the log-sum-exp of every row instead
                    by_lse = torch.logsumexp(lg, -1) - lg.gather(1, ts).squeeze(1)
                    nll = torch.where(tiny, by_lse, nll)
                elif bool(tiny.any()):  # a target far below the max logit: use the log-sum-exp
                    rows_t = lg[tiny]
                    nll[tiny] = torch.logsumexp(rows_t, -1) - rows_t.gather(1, ts[tiny]).squeeze(1)
                vs = valid[s : s + rows]
                total += nll.masked_fill(~vs, 0.0).sum() if any_ignored else nll.sum()
                if grad_x is None or grad_w is None:
                    continue
                g.scatter_add_(1, ts, g.new_full(ts.shape, -1.0))  # softmax - one_hot
                if any_ignored:
                    g.mul_(vs[:, None])  # ignored rows: no gradient
                gc = g if exact else g.to(compute)
                gx = onednn_linear(gc, wc.t()) if dnn else gc @ wc  # (n, C)
                torch.mul(gx.to(acc), inv, out=grad_x[s : s + rows])
                if exact:
                    grad_w[:V].addmm_(gc.t(), xs, alpha=inv)  # (V, C)
                else:
                    grad_w[:V].add_((gc.t() @ xs).to(acc), alpha=inv)
        loss = total / count  # NaN when no target counts, like F.cross_entropy
        if grad_x is not None and grad_w is not None:
            ctx.save_for_backward(grad_x, grad_w)  # in ``acc``: cast after the scaling
            ctx.dtypes = x.dtype, weight.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_out: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        grad_x, grad_w = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        if grad_out.numel() == 1 and float(grad_out) == 1.0:  # loss.backward(): hand them over
            gx, gw = grad_x, grad_w
        else:  # a loss scale or a weight: applied in fp32, then cast
            gx, gw = grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out.to(grad_w.dtype)
        gx, gw = gx.to(x_dtype), gw.to(w_dtype)
        return (
            gx if ctx.needs_input_grad[0] else None,
            gw if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    vocab_size: int | None = None,
) -> Tensor:
    """Mean cross-entropy of the LM head's logits ``x @ weight[:vocab_size].T``, never building them.

    Same value and gradients as ``F.cross_entropy(F.linear(x, weight)[:, :vocab_size],
    targets, ignore_index=ignore_index)``, computed chunk by chunk (see
    :class:`_LinearCrossEntropy`): peak memory drops by the (N, V) logits and their gradient,
    and the softmax work happens while each chunk is in cache. The gradients are computed in
    the forward pass when ``x`` or ``weight`` requires them; under ``torch.no_grad`` only the loss
    is. Half-precision (or autocast) matmuls keep the softmax in fp32. Not twice differentiable.

    Args:
        x: (N, C) final hidden states.
        weight: (Vp, C) LM head weight; rows past ``vocab_size`` (padding) get zero gradient.
        targets: (N,) class ids in ``[0, vocab_size)``, or ``ignore_index``.
        ignore_index: the target value to skip.
        vocab_size: real vocabulary size (default: all rows of ``weight``).

    >>> x, w = torch.randn(6, 4, requires_grad=True), torch.randn(10, 4)
    >>> t = torch.tensor([1, 2, 3, -100, 5, 6])
    >>> ref = torch.nn.functional.cross_entropy(x @ w.T, t)
    >>> torch.allclose(linear_cross_entropy(x, w, t), ref)
    True
    """
    V = weight.size(0) if vocab_size is None else vocab_size
    if x.dim() != 2 or weight.dim() != 2 or x.size(1) != weight.size(1):
        raise ValueError(
            f"linear_cross_entropy needs (N, C) inputs and a (V, C) weight, got {tuple(x.shape)} "
            f"and {tuple(weight.shape)}; flatten the batch and time dims first"
        )
    if targets.shape != x.shape[:1]:
        raise ValueError(f"targets must have shape ({x.size(0)},), got {tuple(targets.shape)}")
    if not 1 <= V <= weight.size(0):
        raise ValueError(f"vocab_size={V} must be in [1, {weight.size(0)}] (the weight's rows)")
    return _LinearCrossEntropy.apply(x, weight, targets, ignore_index, V)


def head_and_loss(
    x: Tensor,
    lm_head: nn.Linear,
    targets: Tensor | None,
    vocab_size: int,
    return_logits: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """The LM head over a padded vocabulary and the loss; padding columns never reach the caller.

    Args:
        x: (B, T, C) final hidden states.
        lm_head: the head, with ``padded_vocab_size >= vocab_size`` rows.
        targets: (B, T) next-token ids or ``IGNORE_INDEX``; None for no loss.
        vocab_size: the real vocabulary size.
        return_logits: False (with targets) fuses the head into the loss: no (B, T, V) logits
            are built and ``None`` is returned in their place (the training path).

    Returns:
        ``(logits, loss)``: logits (B, T, vocab_size) or None, loss a scalar or None.
    """
    V, Vp = vocab_size, lm_head.weight.size(0)
    if targets is not None and not return_logits:
        fused = linear_cross_entropy(
            x.flatten(0, 1), lm_head.weight, targets.flatten(), IGNORE_INDEX, V
        )
        return None, fused
    logits = lm_head(x)  # (B, T, Vp)
    if Vp != V:
        # -inf padding columns get zero probability, so the loss over the padded tensor
        # equals the loss over the real vocabulary, with no (B, T, V) copy.
        logits[..., V:] = float("-inf")
    loss = None
    if targets is not None:
        # Chunked: same value and gradient as F.cross_entropy, far less memory traffic.
        loss = cross_entropy(logits.flatten(0, 1), targets.flatten(), IGNORE_INDEX)
    return (logits[..., :V] if Vp != V else logits), loss


__all__ = ["IGNORE_INDEX", "cross_entropy", "head_and_loss", "linear_cross_entropy"]
