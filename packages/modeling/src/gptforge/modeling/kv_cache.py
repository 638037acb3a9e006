"""Static key/value cache (gpt-fast style) and the causal attention both families share.

The cache is preallocated once by ``model.setup_caches(max_batch_size, max_seq_len)``. Its
buffers are non-persistent, so they never appear in a ``state_dict`` or a saved model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CacheOverflowError(ValueError):
    """A position past ``max_seq_len`` (or a batch past ``max_batch_size``) hit a KV cache."""


def reusable_buffer(
    buf: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> bool:
    """Whether a cache buffer already has this shape, dtype and device and may be zeroed in
    place (``setup_caches`` then keeps it: CUDA graphs recorded over it stay valid). Buffers
    made under ``inference_mode`` (generation) cannot be written outside it."""
    return (
        buf is not None
        and tuple(buf.shape) == shape
        and buf.dtype == dtype
        and buf.device.type == device.type
        and device.index in (None, buf.device.index)
        and (torch.is_inference_mode_enabled() or not buf.is_inference())
    )


class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer.

    Args:
        max_batch_size: largest batch the cache serves (smaller batches use the first rows).
        max_seq_len: positions 0 .. max_seq_len - 1 can be stored.
        n_kv_head: key/value heads.
        head_dim: width of one head.
        dtype: storage dtype (match the model's activations).
        device: where the buffers live (default: the current default device).
    """

    k_cache: Tensor
    v_cache: Tensor

    def __init__(
        self,
        max_batch_size: int,
        max_seq_len: int,
        n_kv_head: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (max_batch_size, n_kv_head, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), False)
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len

    def check(self, input_pos: Tensor, batch_size: int) -> None:
        """Raise :class:`CacheOverflowError` if ``input_pos`` or the batch does not fit.

        Reads ``input_pos`` on the host, so it is skipped while ``torch.compile`` traces.
        """
        if batch_size > self.max_batch_size:
            raise CacheOverflowError(
                f"batch size {batch_size} exceeds the KV cache's max_batch_size="
                f"{self.max_batch_size}; call setup_caches(max_batch_size={batch_size}, ...)"
            )
        if input_pos.numel() == 0:
            return
        lo, hi = int(input_pos.min()), int(input_pos.max())
        if lo < 0 or hi >= self.max_seq_len:
            raise CacheOverflowError(
                f"input_pos spans [{lo}, {hi}] but the KV cache holds positions "
                f"0..{self.max_seq_len - 1} (max_seq_len={self.max_seq_len}); call "
                "setup_caches with a larger max_seq_len (at most the model's block_size) "
                "or stop generating earlier"
            )

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``/``v`` at ``input_pos`` and return the cache rows of this batch.

        Args:
            input_pos: (T,) absolute positions of the new tokens, or (B, T) per row.
            k: (B, n_kv_head, T, head_dim) new keys.
            v: (B, n_kv_head, T, head_dim) new values.

        Returns:
            Keys and values, each (B, n_kv_head, max_seq_len, head_dim).
        """
        B = k.size(0)
        k_out = self.k_cache[:B]  # (B, nkv, S, hs)
        v_out = self.v_cache[:B]  # (B, nkv, S, hs)
        if input_pos.dim() == 2:  # per-row positions (B, T): each row writes its own slots
            rows = torch.arange(B, device=k.device)[:, None]  # (B, 1)
            k_out[rows, :, input_pos] = k.transpose(1, 2).to(k_out.dtype)  # (B, T, nkv, hs)
            v_out[rows, :, input_pos] = v.transpose(1, 2).to(v_out.dtype)  # (B, T, nkv, hs)
            return k_out, v_out
        # index_copy_ along the sequence dim: a third of index_put's cost per decode step.
        k_out.index_copy_(2, input_pos, k.to(k_out.dtype))
        v_out.index_copy_(2, input_pos, v.to(v_out.dtype))
        return k_out, v_out

    def reset(self) -> None:
        """Zero the stored keys and values."""
        self.k_cache.zero_()
        self.v_cache.zero_()


def _compiling() -> bool:
    return torch.compiler.is_compiling()


@dataclass(frozen=True)
class AttentionPlan:
    """What every attention layer of one forward shares, worked out once per forward.

    Building the mask and reading the filled length of the cache in every layer cost about 3%
    of a batch-1 decode step; the model builds this once and hands it to each layer.

    Attributes:
        kv_len: read only the first ``kv_len`` cache positions; None reads the whole cache.
        mask: boolean ``(T, S)`` or per-row ``(B, 1, T, S)`` mask (True = may attend), or None.
        is_causal: with no mask, whether the plain lower-triangular mask applies (S == T).
    """

    kv_len: int | None
    mask: Tensor | None
    is_causal: bool


def attention_plan(input_pos: Tensor | None, max_seq_len: int) -> AttentionPlan:
    """The :class:`AttentionPlan` for queries at ``input_pos`` over a cache of ``max_seq_len``.

    Args:
        input_pos: (T,) shared or (B, T) per-row query positions; None for a whole sequence
            without a cache (plain causal attention).
        max_seq_len: positions the cache holds (its size along the sequence dim).
    """
    if input_pos is None:
        return AttentionPlan(kv_len=None, mask=None, is_causal=True)
    kv_len = None
    S = max_seq_len
    if input_pos.device.type == "cpu" and not _compiling():
        # Eager CPU decoding: attend over the filled prefix only instead of the whole static
        # cache (reading the position is free on the host; on GPU it would be a sync).
        kv_len = S = int(input_pos.max()) + 1
        if input_pos.dim() == 1 and input_pos.numel() == 1:
            # One shared query at the last filled position sees every key 0..p: no mask.
            return AttentionPlan(kv_len=kv_len, mask=None, is_causal=False)
    # Query at position p sees keys 0..p; empty cache slots (> p) are masked out.
    mask = torch.arange(S, device=input_pos.device)[None, :] <= input_pos[..., None]  # ([B,] T, S)
    if mask.dim() == 3:  # per-row positions: one mask per row, shared by the heads
        mask = mask[:, None]  # (B, 1, T, S)
    return AttentionPlan(kv_len=kv_len, mask=mask, is_causal=False)


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    input_pos: Tensor | None,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
    plan: AttentionPlan | None = None,
) -> Tensor:
    """Causal (grouped-query) attention, through SDPA or an explicit masked softmax.

    Args:
        q: (B, nh, T, hs) queries at positions ``input_pos`` (or 0..T-1 when None).
        k: (B, nkv, S, hs) keys; nh must be a multiple of nkv.
        v: (B, nkv, S, hs) values.
        input_pos: (T,) query positions for cached decoding; None means S == T and positions
            0..T-1 (plain causal attention).
        dropout_p: attention dropout (pass 0.0 in eval).
        impl: ``"sdpa"`` or ``"math"``; both compute the same function.
        plan: the forward's shared :func:`attention_plan` (built here from ``input_pos`` when
            None, which costs a mask per call).

    Returns:
        (B, nh, T, hs) attention output.
    """
    if plan is None:
        plan = attention_plan(input_pos, k.size(2))
    if plan.kv_len is not None:
        k = k[:, :, : plan.kv_len]  # (B, nkv, S', hs)
        v = v[:, :, : plan.kv_len]  # (B, nkv, S', hs)
    mask, T, S = plan.mask, q.size(2), k.size(2)
    groups = q.size(1) // k.size(1)
    if impl == "sdpa":
        # enable_gqa lets the kernel share each K/V head across its query group (no copy).
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=plan.is_causal,
            enable_gqa=groups > 1,
        )  # fmt: skip
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, nh, S, hs)
        v = v.repeat_interleave(groups, dim=1)  # (B, nh, S, hs)
    if mask is None and plan.is_causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # (T, S)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, S)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att.float(), dim=-1).to(q.dtype)  # fp32 softmax keeps bf16 stable
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, T, hs)
