"""Configuration of MM-Rec (importable without torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from gptforge.modeling.config import _PresetMixin

__all__ = ["MMRecConfig", "MMREC_PRESETS"]

NormKind = Literal["layernorm", "rmsnorm"]
FFNKind = Literal["gelu", "swiglu"]
_NORMS = ("layernorm", "rmsnorm")
_FFNS = ("gelu", "swiglu")


@dataclass
class MMRecConfig(_PresetMixin):
    """Shape and options of an MM-Rec model.

    Args:
        block_size: training context length (the recurrence itself has no length limit).
        vocab_size: number of real tokens; the embedding is padded to ``padded_vocab_size``.
        n_layer: number of blocks.
        n_head: heads of MultiMemoryAttention.
        n_embd: model width D (also the width of the recurrent state).
        n_memory: learned memory slots M per layer (HDS level 0).
        n_memory_levels: HDS levels; level i average-pools level 0 by ``memory_pool ** i``.
        memory_pool: pooling factor between consecutive levels.
        decay_hidden: hidden width of the decay MLP.
        decay_init_min: smallest initial decay (sigmoid of the decay MLP's output bias).
        decay_init_max: largest initial decay; channels are spread evenly in between.
        chunk_size: chunk length of the training scan (memory ~ B * T * chunk * D).
        norm: ``"layernorm"`` or ``"rmsnorm"`` (block norms, state norm and final norm).
        ffn: ``"gelu"`` (GPT-2 MLP) or ``"swiglu"`` (LLaMA MLP).
        ffn_hidden: FFN hidden width; None means 4 * n_embd for GELU and the LLaMA rule
            (2/3 of 4 * n_embd rounded up to a multiple of 64) for SwiGLU.
        gelu_approximate: ``"tanh"`` (GPT-2's ``gelu_new``) or ``"none"`` (exact erf).
        bias: biases in linear layers and LayerNorm.
        dropout: dropout on embeddings and residual branches.
        tie_embeddings: share the token embedding with the LM head.
        norm_eps: epsilon of the norms.
        pad_vocab_multiple: pad the embedding rows to a multiple of this (padding never returned).
    """

    arch: ClassVar[str] = "mmrec"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    block_size: int = 256
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_memory: int = 64
    n_memory_levels: int = 3
    memory_pool: int = 4
    decay_hidden: int = 64
    decay_init_min: float = 0.9
    decay_init_max: float = 0.99
    chunk_size: int = 64
    norm: NormKind = "layernorm"
    ffn: FFNKind = "gelu"
    ffn_hidden: int | None = None
    gelu_approximate: Literal["tanh", "none"] = "tanh"
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    pad_vocab_multiple: int = 64

    def __post_init__(self) -> None:
        for name in (
            "block_size",
            "vocab_size",
            "n_layer",
            "n_head",
            "n_embd",
            "n_memory",
            "n_memory_levels",
            "memory_pool",
            "decay_hidden",
            "chunk_size",
            "pad_vocab_multiple",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MMRecConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd!r} must be divisible by n_head={self.n_head!r}; "
                "pick n_head among the divisors of n_embd"
            )
        smallest = self.memory_pool ** (self.n_memory_levels - 1)
        if self.n_memory % smallest:
            raise ValueError(
                f"n_memory={self.n_memory!r} must be divisible by memory_pool ** "
                f"(n_memory_levels - 1) = {smallest!r} so every HDS level pools whole groups; "
                "lower n_memory_levels or use a multiple of it"
            )
        if not 0.0 < self.decay_init_min <= self.decay_init_max < 1.0:
            raise ValueError(
                "need 0 < decay_init_min <= decay_init_max < 1, got "
                f"{self.decay_init_min!r} and {self.decay_init_max!r}"
            )
        if self.norm not in _NORMS:
            raise ValueError(f"norm={self.norm!r} is not supported; use one of {_NORMS!r}")
        if self.ffn not in _FFNS:
            raise ValueError(f"ffn={self.ffn!r} is not supported; use one of {_FFNS!r}")
        if self.gelu_approximate not in ("tanh", "none"):
            raise ValueError(
                f"gelu_approximate={self.gelu_approximate!r} is not one of ('tanh', 'none')"
            )
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise ValueError(f"ffn_hidden must be a positive int or None, got {self.ffn_hidden!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def ffn_hidden_size(self) -> int:
        """The FFN hidden width actually used."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.ffn == "gelu":
            return 4 * self.n_embd
        return -(-int(2 * 4 * self.n_embd / 3) // 64) * 64

    @property
    def memory_level_sizes(self) -> list[int]:
        """Slots per HDS level, e.g. [64, 16, 4]."""
        return [self.n_memory // self.memory_pool**i for i in range(self.n_memory_levels)]

    def to_dict(self) -> dict[str, Any]:
        """Plain fields plus ``"arch"``, JSON-serialisable."""
        return {"arch": self.arch, **dataclasses.asdict(self)}


MMREC_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: a few thousand parameters, exercises every level of the HDS and several chunks.
    "mmrec-debug": dict(
        block_size=64,
        vocab_size=256,
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_memory=16,
        n_memory_levels=3,
        memory_pool=2,
        decay_hidden=16,
        chunk_size=16,
    ),
    # CPU training, comparable to the GPT `tiny` preset (4 layers, 4 heads, 256 context).
    "mmrec-tiny": dict(
        block_size=256,
        vocab_size=8192,  # a placeholder, like GPT `tiny`: the trainer uses the tokenizer's
        n_layer=4,
        n_head=4,
        n_embd=256,
        n_memory=64,
        n_memory_levels=3,
        memory_pool=4,
        decay_hidden=64,
        chunk_size=16,  # the scan's (B, T, L, D) weights: 16 was fastest on CPU at T=256
        # 2.5x instead of 4x keeps the non-embedding parameters within ~6% of GPT `tiny`
        # (the mixer has 7 D x D matrices where attention has 4).
        ffn_hidden=640,
    ),
}
MMRecConfig.PRESETS = MMREC_PRESETS
