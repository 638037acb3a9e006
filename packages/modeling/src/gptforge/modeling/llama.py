"""LLaMA family: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention.

Parameter names are Hugging Face ``LlamaForCausalLM``'s without the ``model.`` prefix
(``embed_tokens``, ``layers.{i}.self_attn.{q,k,v,o}_proj``, ``layers.{i}.mlp.{gate,up,down}_proj``,
``layers.{i}.input_layernorm``, ``layers.{i}.post_attention_layernorm``, ``norm``, ``lm_head``).
RoPE uses HF's ``rotate_half`` convention (the two halves of a head are the real and imaginary
parts), so HF checkpoints convert with a name map; Meta's original checkpoints interleave the
pairs instead and need the q/k row permutation documented in the conversion package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gptforge.modeling.base import CausalLM, _dropout
from gptforge.modeling.config import LlamaConfig
from gptforge.modeling.kv_cache import KVCache, KVCacheMixin, causal_attention
from gptforge.modeling.linear import Linear
from gptforge.modeling.loss import head_and_loss
from torch import Tensor, nn


def rope_inv_freq(config: LlamaConfig, device: torch.device | None = None) -> Tensor:
    """Inverse frequencies (head_dim // 2,), with llama3 long-context scaling if configured."""
    hd = config.head_dim
    exponents = torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd
    inv_freq = 1.0 / (config.rope_theta**exponents)  # (hd/2,)
    rs = config.rope_scaling
    if rs is None:
        return inv_freq
    # Llama 3.1+: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between.
    factor, old_ctx = float(rs["factor"]), float(rs["original_max_position_embeddings"])
    low_wavelen = old_ctx / float(rs["low_freq_factor"])
    high_wavelen = old_ctx / float(rs["high_freq_factor"])
    wavelen = 2 * math.pi / inv_freq  # (hd/2,)
    smooth = (old_ctx / wavelen - float(rs["low_freq_factor"])) / (
        float(rs["high_freq_factor"]) - float(rs["low_freq_factor"])
    )
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, out)


def rope_cos_sin(inv_freq: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Cos and sin tables (T, head_dim) in fp32 for the given positions (T,)."""
    freqs = positions.float()[..., None] * inv_freq  # ([B,] T, hd/2); (B, T) per-row positions
    emb = torch.cat((freqs, freqs), dim=-1)  # ([B,] T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, nh, T, hs) by the angles in ``cos``/``sin`` (T, hs); HF ``rotate_half`` form."""
    if cos.dim() == 3:  # per-row positions: (B, T, hs) -> (B, 1, T, hs)
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, nh, T, hs/2)
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, nh, T, hs)
    return (x * cos + rotated * sin).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm; normalises in fp32 like HF so bf16 models match."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., C)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention with rotary positions."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        C, hd, bias = config.n_embd, config.head_dim, config.attention_bias
        self.q_proj = Linear(C, config.n_head * hd, bias=bias)
        self.k_proj = Linear(C, config.n_kv_head * hd, bias=bias)
        self.v_proj = Linear(C, config.n_kv_head * hd, bias=bias)
        self.o_proj = Linear(config.n_head * hd, C, bias=bias)
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.dropout = config.dropout
        self.attention_impl = config.attention_impl
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        input_pos: Tensor | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if input_pos is not None:
            assert self.kv_cache is not None, "checked by KVCacheMixin.cache_inputs"
            k, v = self.kv_cache.update(input_pos, k, v, rows)  # (B, nkv, S, hs)
        y = causal_attention(
            q, k, v, input_pos, mask, impl=self.attention_impl,
            dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hd)  # (B, T, nh*hs)
        return self.o_proj(y)  # (B, T, C)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        C, H = config.n_embd, config.ffn_hidden
        assert H is not None, "filled in by LlamaConfig.__post_init__"
        self.gate_proj = Linear(C, H, bias=False)
        self.up_proj = Linear(C, H, bias=False)
        self.down_proj = Linear(H, C, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)
        self.resid_dropout = _dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        input_pos: Tensor | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, input_pos, mask, rows)
        x = x + self.resid_dropout(h)  # (B, T, C)
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))  # (B, T, C)


class Llama(KVCacheMixin, CausalLM):
    """LLaMA-style language model.

    Args:
        config: the model's shape and options.

    >>> from gptforge.modeling import Llama, LlamaConfig
    >>> model = Llama(LlamaConfig.from_name("llama-debug"))
    >>> tuple(model(torch.zeros(2, 5, dtype=torch.long))[0].shape)
    (2, 5, 512)
    """

    token_embedding_name = "embed_tokens"
    position_embedding_name = None
    rope_cos: Tensor | None
    rope_sin: Tensor | None

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"Llama needs a LlamaConfig, got {type(config).__name__}")
        self.config = config
        # RoPE tables over the cache positions, built by setup_caches (none while training).
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)
        Vp, C = config.padded_vocab_size, config.n_embd
        self.embed_tokens = nn.Embedding(Vp, C)
        self.drop = _dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(C, config.norm_eps)
        # A plain nn.Linear: training runs the head inside linear_cross_entropy (on oneDNN).
        self.lm_head = nn.Linear(C, Vp, bias=False)
        self.tie_weights()
        self.apply(self._init_weights)
        # Same depth scaling of the residual projections as GPT-2 (HF uses a flat 0.02).
        std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=std)

    def build_position_tables(self, max_seq_len: int, device: torch.device) -> None:
        """RoPE cos/sin for every cache position, (max_seq_len, hs) each in fp32: a decode step
        looks its rows up instead of computing them."""
        positions = torch.arange(max_seq_len, device=device)
        self.rope_cos, self.rope_sin = rope_cos_sin(rope_inv_freq(self.config, device), positions)

    def rope(self, idx: Tensor, input_pos: Tensor | None) -> tuple[Tensor, Tensor]:
        """Cos and sin for the positions of ``idx``: (T, hs), or (B, T, hs) per row."""
        if input_pos is None or self.rope_cos is None or self.rope_sin is None:
            pos = torch.arange(idx.size(1), device=idx.device)
            return rope_cos_sin(rope_inv_freq(self.config, idx.device), pos)
        return self.rope_cos[input_pos], self.rope_sin[input_pos]

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        input_pos: Tensor | int | None = None,
        *,
        rows: Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits and loss; the arguments are those of :meth:`GPT.forward <gptforge.modeling.GPT.forward>`."""
        input_pos, mask = self.cache_inputs(idx, input_pos, rows)  # (None, None): no caches
        cos, sin = self.rope(idx, input_pos)  # (T, hs) or per-row (B, T, hs), each
        x = self.drop(self.embed_tokens(idx))  # (B, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, mask, rows)  # (B, T, C)
        x = self.norm(x)  # (B, T, C)
        return head_and_loss(x, self.lm_head, targets, self.config.vocab_size, return_logits)
