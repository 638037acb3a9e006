"""GPT-2: learned positions, pre-LN blocks, fused QKV attention, GELU MLP, tied LM head.

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` without the ``transformer.`` prefix
(``wte``, ``wpe``, ``h.{i}.ln_1``, ``h.{i}.attn.c_attn``, ``h.{i}.attn.c_proj``, ``h.{i}.ln_2``,
``h.{i}.mlp.c_fc``, ``h.{i}.mlp.c_proj``, ``ln_f``, ``lm_head``). Weights use the ``nn.Linear``
layout ``(out, in)``; HF's ``Conv1D`` stores ``(in, out)``, so conversion transposes the four
projection matrices of each block and nothing else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gptforge.modeling.base import CausalLM, _dropout
from gptforge.modeling.config import GPTConfig
from gptforge.modeling.kv_cache import KVCache, KVCacheMixin, causal_attention
from gptforge.modeling.linear import Linear
from gptforge.modeling.loss import head_and_loss
from torch import Tensor, nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.c_attn = Linear(C, 3 * C, bias=config.qkv_bias)
        self.c_proj = Linear(C, C, bias=config.bias)
        self.resid_dropout = _dropout(config.dropout)
        self.n_head = self.n_kv_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.attention_impl = config.attention_impl
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: Tensor,
        input_pos: Tensor | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if input_pos is not None:
            assert self.kv_cache is not None, "checked by KVCacheMixin.cache_inputs"
            k, v = self.kv_cache.update(input_pos, k, v, rows)  # (B, nh, S, hs)
        y = causal_attention(
            q, k, v, input_pos, mask, impl=self.attention_impl,
            dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = _dropout(config.dropout)
        self.approximate = config.gelu_approximate

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.c_fc(x), approximate=self.approximate)  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C, eps = config.n_embd, config.norm_eps
        self.ln_1 = nn.LayerNorm(C, eps=eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(C, eps=eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        input_pos: Tensor | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), input_pos, mask, rows)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(KVCacheMixin, CausalLM):
    """GPT-2 language model.

    Args:
        config: the model's shape and options.

    >>> from gptforge.modeling import GPT, GPTConfig
    >>> model = GPT(GPTConfig.from_name("debug"))
    >>> logits, loss = model(torch.zeros(1, 8, dtype=torch.long))
    >>> tuple(logits.shape), loss
    ((1, 8, 512), None)
    """

    token_embedding_name = "wte"
    position_embedding_name = "wpe"

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        Vp, C = config.padded_vocab_size, config.n_embd
        self.wte = nn.Embedding(Vp, C)
        self.wpe = nn.Embedding(config.block_size, C)
        self.drop = _dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, eps=config.norm_eps, bias=config.bias)
        # A plain nn.Linear: training runs the head inside linear_cross_entropy (on oneDNN).
        self.lm_head = nn.Linear(C, Vp, bias=False)
        self.tie_weights()
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth (two residual additions per block).
        std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        input_pos: Tensor | int | None = None,
        *,
        rows: Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits for every position and, with ``targets``, the mean cross-entropy.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids; ``-100`` positions are ignored.
            input_pos: (T,) or per-row (B, T) absolute positions of ``idx`` for cached decoding
                (needs :meth:`setup_caches`; an int ``p`` means ``arange(p, p + T)``); None
                processes ``idx`` as a whole sequence from position 0 without the caches.
            rows: (B,) cache rows the batch reads and writes (continuous batching); None
                means rows 0..B-1.
            return_logits: with ``targets``, False skips the (B, T, V) logits (returned as
                None) and fuses the head into the loss: less memory, same loss and gradients.

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size), loss a scalar or None.
        """
        input_pos, mask = self.cache_inputs(idx, input_pos, rows)  # (None, None): no caches
        pos = torch.arange(idx.size(1), device=idx.device) if input_pos is None else input_pos
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.h:
            x = block(x, input_pos, mask, rows)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        return head_and_loss(x, self.lm_head, targets, self.config.vocab_size, return_logits)
