"""Static key/value cache (gpt-fast style) and the causal attention both families share.

The cache is preallocated once by ``model.setup_caches(max_batch_size, max_seq_len)``
(:class:`KVCacheMixin`, shared by GPT and LLaMA). Its buffers are non-persistent, so they never
appear in a ``state_dict`` or a saved model. Continuous batching passes explicit cache ``rows``:
each sequence owns one row of every cache for its lifetime.
"""

from __future__ import annotations

import math
from typing import Any

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

    def check(self, input_pos: Tensor, batch_size: int, rows: Tensor | None = None) -> None:
        """Raise :class:`CacheOverflowError` if ``input_pos``, ``rows`` or the batch do not fit.

        Reads ``input_pos`` and ``rows`` on the host, so it is skipped while ``torch.compile``
        traces.
        """
        if rows is None and batch_size > self.max_batch_size:
            raise CacheOverflowError(
                f"batch size {batch_size} exceeds the KV cache's max_batch_size="
                f"{self.max_batch_size}; call setup_caches(max_batch_size={batch_size}, ...)"
            )
        if (
            rows is not None
            and rows.numel()
            and not 0 <= int(rows.min()) <= int(rows.max()) < self.max_batch_size
        ):
            raise CacheOverflowError(
                f"rows {rows.tolist()!r} are outside the KV cache's rows 0.."
                f"{self.max_batch_size - 1}; call setup_caches with a larger max_batch_size"
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

    def update(
        self, input_pos: Tensor, k: Tensor, v: Tensor, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Write ``k``/``v`` at ``input_pos`` into the cache rows of this batch and return them.

        Args:
            input_pos: (T,) absolute positions of the new tokens, or (B, T) per row.
            k: (B, n_kv_head, T, head_dim) new keys.
            v: (B, n_kv_head, T, head_dim) new values.
            rows: (B,) cache rows the batch owns (continuous batching: a new sequence is
                prefilled into its own row while other rows hold live ones); None means rows
                0..B-1.

        Returns:
            Keys and values of those rows, each (B, n_kv_head, max_seq_len, head_dim).
        """
        B, T = k.size(0), k.size(2)
        if rows is not None:
            pos = input_pos.expand(B, T)  # (B, T)
            self.k_cache[rows[:, None], :, pos] = k.transpose(1, 2).to(self.k_cache.dtype)
            self.v_cache[rows[:, None], :, pos] = v.transpose(1, 2).to(self.v_cache.dtype)
            return self.k_cache[rows], self.v_cache[rows]  # (B, nkv, S, hs) each, gathered
        k_out = self.k_cache[:B]  # (B, nkv, S, hs)
        v_out = self.v_cache[:B]  # (B, nkv, S, hs)
        if input_pos.dim() == 2:  # per-row positions (B, T): each row writes its own slots
            r = torch.arange(B, device=k.device)[:, None]  # (B, 1)
            k_out[r, :, input_pos] = k.transpose(1, 2).to(k_out.dtype)  # (B, T, nkv, hs)
            v_out[r, :, input_pos] = v.transpose(1, 2).to(v_out.dtype)  # (B, T, nkv, hs)
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


def decode_mask(cache_positions: Tensor, input_pos: Tensor) -> Tensor:
    """Which cache positions each query may see: keys 0..p for a query at position p.

    Args:
        cache_positions: (S,) ``arange(max_seq_len)``, built once by ``setup_caches``.
        input_pos: (T,) shared or (B, T) per-row query positions.

    Returns:
        A boolean (T, S) mask, or (B, 1, T, S) for per-row positions (shared by the heads).
    """
    mask = cache_positions[None, :] <= input_pos[..., None]  # ([B,] T, S)
    return mask[:, None] if mask.dim() == 3 else mask


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    input_pos: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
) -> Tensor:
    """Causal (grouped-query) attention, through SDPA or an explicit masked softmax.

    Args:
        q: (B, nh, T, hs) queries at positions ``input_pos`` (or 0..T-1 when None).
        k: (B, nkv, S, hs) keys; nh must be a multiple of nkv.
        v: (B, nkv, S, hs) values.
        input_pos: (T,) or per-row (B, T) query positions for cached decoding; None means
            S == T and positions 0..T-1 (plain causal attention).
        mask: the forward's :func:`decode_mask` (built once per forward by the model, so the
            layers share it); built here from ``input_pos`` when None.
        dropout_p: attention dropout (pass 0.0 in eval).
        impl: ``"sdpa"`` or ``"math"``; both compute the same function.

    Returns:
        (B, nh, T, hs) attention output.
    """
    is_causal = input_pos is None
    if input_pos is not None:
        if mask is None:
            mask = decode_mask(torch.arange(k.size(2), device=q.device), input_pos)
        if input_pos.device.type == "cpu" and not _compiling():
            # Eager CPU decoding: attend over the filled prefix only instead of the whole
            # static cache (reading the position is free on the host; on a GPU it would
            # wait for the queue).
            kv_len = int(input_pos.max()) + 1
            k, v, mask = k[:, :, :kv_len], v[:, :, :kv_len], mask[..., :kv_len]
            if input_pos.dim() == 1 and input_pos.numel() == 1:
                mask = None  # one shared query at the last filled position sees every key
    T, S = q.size(2), k.size(2)
    groups = q.size(1) // k.size(1)
    if impl == "sdpa":
        # enable_gqa lets the kernel share each K/V head across its query group (no copy).
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
            enable_gqa=groups > 1,
        )  # fmt: skip
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, nh, S, hs)
        v = v.repeat_interleave(groups, dim=1)  # (B, nh, S, hs)
    if is_causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # (T, S)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, S)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att.float(), dim=-1).to(q.dtype)  # fp32 softmax keeps bf16 stable
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, T, hs)


class KVCacheMixin(nn.Module):
    """Cache methods of the transformer families: a :class:`KVCache` per attention layer.

    A family's attention layers carry ``kv_cache`` (None until :meth:`setup_caches`),
    ``n_kv_head`` and ``head_dim``; its ``forward`` calls :meth:`cache_inputs` once and hands
    the positions and the mask to every layer.
    """

    config: Any
    lm_head: nn.Linear
    cache_positions: Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache_positions", None, persistent=False)

    def _attention_layers(self) -> list[Any]:
        return [m for m in self.modules() if hasattr(m, "kv_cache") and hasattr(m, "n_kv_head")]

    def _first_cache(self) -> KVCache | None:
        """The first layer's cache (it answers for all); the layer is looked up once, since
        walking ``modules()`` every decode step costs as much as a small layer."""
        first = self.__dict__.get("_first_attention_layer")
        if first is None:
            layers = self._attention_layers()
            first = self.__dict__["_first_attention_layer"] = layers[0] if layers else None
        return None if first is None else first.kv_cache

    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Attach a :class:`KVCache` to every attention layer and build the position tables;
        caches of the same shape, dtype and device are kept and zeroed instead.

        Args:
            max_batch_size: cache rows (sequences decoded at once).
            max_seq_len: prompt + generated tokens; at most ``config.block_size``.
            dtype: cache dtype (default: the dtype of the model's parameters).
            device: cache device (default: the device of the model's parameters).
        """
        if not 1 <= max_seq_len <= self.config.block_size:
            raise ValueError(
                f"max_seq_len={max_seq_len!r} must be in [1, block_size={self.config.block_size}]"
                "; the model has no positions past its context length"
            )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        ref = self.lm_head.weight
        dtype = dtype or ref.dtype
        device = torch.device(device) if device is not None else ref.device
        layers = self._attention_layers()
        if layers and all(
            layer.kv_cache is not None
            and reusable_buffer(
                layer.kv_cache.k_cache,
                (max_batch_size, layer.n_kv_head, max_seq_len, layer.head_dim),
                dtype,
                device,
            )
            for layer in layers
        ):
            # Same shape: zero the buffers in place. Their addresses stay, so CUDA graphs
            # recorded over them replay instead of recording again.
            self.reset_caches()
            return
        for layer in layers:
            layer.kv_cache = KVCache(
                max_batch_size, max_seq_len, layer.n_kv_head, layer.head_dim, dtype, device
            )
        # Once per cache, not per forward: the positions a decode mask compares against (an
        # arange, not a (S, S) table, whose memory would grow with the square of the context).
        self.register_buffer("cache_positions", torch.arange(max_seq_len, device=device), False)
        self.build_position_tables(max_seq_len, device)

    def build_position_tables(self, max_seq_len: int, device: torch.device) -> None:
        """Per-position tables a family looks up while decoding (LLaMA: RoPE); none here."""

    def reset_caches(self) -> None:
        """Zero every layer's cache (keeps the allocation for the next prompt)."""
        for layer in self._attention_layers():
            if layer.kv_cache is not None:
                layer.kv_cache.reset()

    def remove_caches(self) -> None:
        """Drop the caches and free their memory."""
        for layer in self._attention_layers():
            layer.kv_cache = None
        self.cache_positions = None

    @property
    def max_context(self) -> int | None:
        """Most positions one sequence may span (prompt + generated): ``block_size``."""
        return int(self.config.block_size)

    @property
    def has_caches(self) -> bool:
        """Whether :meth:`setup_caches` has attached caches."""
        return self._first_cache() is not None

    def cache_inputs(
        self, idx: Tensor, input_pos: Tensor | int | None, rows: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Check one forward's inputs; return its positions and the mask its layers share.

        Args:
            idx: (B, T) token ids.
            input_pos: (T,) or per-row (B, T) positions on the caches (an int ``p`` means
                ``arange(p, p + T)``); None for a whole sequence from position 0.
            rows: (B,) cache rows of the batch (None: rows 0..B-1).

        Returns:
            ``(input_pos, mask)``: a long tensor on ``idx``'s device and the
            :func:`decode_mask`, or ``(None, None)`` without caches.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if input_pos is None:
            if self.config.block_size < T:
                raise ValueError(
                    f"sequence length {T} exceeds block_size={self.config.block_size}; "
                    "crop the input to the last block_size tokens"
                )
            return None, None
        if isinstance(input_pos, int):
            input_pos = torch.arange(input_pos, input_pos + T, device=idx.device)
        if input_pos.shape != (T,) and input_pos.shape != (B, T):
            raise ValueError(
                f"input_pos must have shape (T,)=({T},) or per-row (B, T)=({B}, {T}) "
                f"matching idx, got {tuple(input_pos.shape)}"
            )
        if rows is not None and rows.shape != (B,):
            raise ValueError(f"rows must have shape (B,)=({B},), got {tuple(rows.shape)}")
        cache = self._first_cache()
        if cache is None or self.cache_positions is None:
            raise RuntimeError(
                "forward(..., input_pos=...) needs KV caches; call "
                "model.setup_caches(max_batch_size, max_seq_len) first"
            )
        if input_pos.device != idx.device:  # positions given on the CPU for a GPU model
            input_pos = input_pos.to(idx.device)
        if not _compiling():
            cache.check(input_pos, B, rows)
        return input_pos, decode_mask(self.cache_positions, input_pos)
