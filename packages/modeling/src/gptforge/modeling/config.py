"""Model configurations: one dataclass per architecture, with presets. Imports without torch.

A config holds the *shape* of a model and nothing about training. Each config class has an
``arch`` class variable (its key in :data:`gptforge.modeling.ARCHITECTURES`), a ``PRESETS`` dict
and an exact-match ``from_name``. ``dataclasses.replace(cfg, ...)`` re-runs validation.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

AttentionImpl = Literal["sdpa", "math"]
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "math")


def pad_to_multiple(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple`` (``multiple=1`` leaves it unchanged).

    >>> pad_to_multiple(50257, 64)
    50304
    """
    return ((n + multiple - 1) // multiple) * multiple


def _check_positive(cfg: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{type(cfg).__name__}.{name} must be a positive int, got {value!r}; "
                f"pass e.g. {name}=1 or larger"
            )


def _check_common(cfg: Any) -> None:
    _check_positive(cfg, ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"))
    _check_positive(cfg, ("pad_vocab_multiple",))
    if cfg.n_embd % cfg.n_head:
        raise ValueError(
            f"{type(cfg).__name__}: n_embd={cfg.n_embd!r} is not divisible by "
            f"n_head={cfg.n_head!r}; choose n_embd as a multiple of n_head"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    if cfg.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"attention_impl={cfg.attention_impl!r} is not one of {ATTENTION_IMPLS}; "
            "'sdpa' uses F.scaled_dot_product_attention, 'math' the explicit masked softmax"
        )


class _PresetMixin:
    """``from_name`` over a class-level ``PRESETS`` dict (exact match, helpful error)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]]
    #: Fields renamed since config.json files were first written: old name -> new name.
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build from the fields of a config.json (without ``arch``); renamed fields are read
        under their old names too, unknown keys are an error naming them."""
        d = dict(d)
        for old, new in cls.RENAMED_FIELDS.items():
            if old in d:
                value = d.pop(old)
                d.setdefault(new, value)
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s) {unknown}; allowed keys: {sorted(fields)}"
            )
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Any:
        """Build the preset ``name`` (exact match), optionally overriding fields.

        Args:
            name: a key of ``PRESETS``.
            **overrides: field values replacing the preset's.
        """
        if name not in cls.PRESETS:
            raise ValueError(
                f"unknown {cls.__name__} preset {name!r}; valid names: {sorted(cls.PRESETS)}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {unknown}; allowed fields: {sorted(fields)}"
            )
        return cls(**{**copy.deepcopy(cls.PRESETS[name]), **overrides})

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding / LM head: ``vocab_size`` rounded up to ``pad_vocab_multiple``.

        The extra rows exist only so matmuls get friendly shapes; they are never returned in
        logits, never sampled and never counted in the loss or in ``num_params``.
        """
        return pad_to_multiple(self.vocab_size, self.pad_vocab_multiple)  # type: ignore[attr-defined]

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head  # type: ignore[attr-defined]


@dataclass
class GPTConfig(_PresetMixin):
    """GPT-2 family: learned positions, pre-LN blocks, fused QKV, GELU MLP.

    Args:
        block_size: context length (rows of ``wpe``).
        vocab_size: real vocabulary size; logits have this many columns.
        n_layer: transformer blocks.
        n_head: attention heads.
        n_embd: model width.
        dropout: embedding, attention and residual dropout probability.
        bias: biases in Linear layers and LayerNorms (nanoGPT's ``bias``).
        qkv_bias: bias of the fused QKV projection (``c_attn``); off for the 163M figure of the LLMs-from-scratch book's GPT_CONFIG_124M.
        tie_embeddings: share ``wte`` and ``lm_head`` weights (GPT-2 does).
        gelu_approximate: ``"tanh"`` (GPT-2's ``gelu_new``) or ``"none"`` (exact erf).
        norm_eps: LayerNorm epsilon (``layer_norm_eps`` in older config.json files).
        pad_vocab_multiple: pad the embedding rows to this multiple (1 disables).
        attention_impl: ``"sdpa"`` (fused kernels) or ``"math"`` (explicit masked softmax).
    """

    arch: ClassVar[str] = "gpt"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"layer_norm_eps": "norm_eps"}

    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    qkv_bias: bool = True
    tie_embeddings: bool = True
    gelu_approximate: Literal["tanh", "none"] = "tanh"
    norm_eps: float = 1e-5
    pad_vocab_multiple: int = 64
    attention_impl: AttentionImpl = "sdpa"

    def __post_init__(self) -> None:
        _check_common(self)
        if self.gelu_approximate not in ("tanh", "none"):
            raise ValueError(
                f"gelu_approximate={self.gelu_approximate!r} is not one of ('tanh', 'none')"
            )


_GPT2 = dict(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
GPTConfig.PRESETS = {
    # Tests: small enough that a forward is a few ms on one core.
    "debug": dict(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=64),
    # CPU training. vocab_size is a placeholder: the trainer overrides it with the tokenizer's.
    "tiny": dict(block_size=256, vocab_size=8192, n_layer=4, n_head=4, n_embd=256),
    "gpt2": _GPT2,
    "gpt2-ctx256": {**_GPT2, "block_size": 256},
    "gpt2-medium": {**_GPT2, "n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {**_GPT2, "n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {**_GPT2, "n_layer": 48, "n_head": 25, "n_embd": 1600},
}


def llama_intermediate_size(n_embd: int, multiple_of: int = 256) -> int:
    """Meta's SwiGLU width rule: 2/3 of 4 * n_embd, rounded up to ``multiple_of``.

    >>> llama_intermediate_size(4096)
    11008
    """
    return pad_to_multiple(int(2 * 4 * n_embd / 3), multiple_of)


@dataclass
class LlamaConfig(_PresetMixin):
    """LLaMA family: RMSNorm, RoPE, SwiGLU, grouped-query attention.

    Args:
        block_size: context length (``max_position_embeddings``).
        vocab_size: real vocabulary size; logits have this many columns.
        n_layer: transformer blocks.
        n_head: query heads.
        n_kv_head: key/value heads (``n_head`` = MHA, 1 = MQA, in between = GQA).
        n_embd: model width.
        ffn_hidden: SwiGLU hidden width; ``None`` applies Meta's 2/3 * 4d rule
            (``intermediate_size`` in older config.json files).
        rope_theta: RoPE base.
        rope_scaling: ``None`` or HF's llama3 scaling dict (``rope_type="llama3"``, ``factor``,
            ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``).
        norm_eps: RMSNorm epsilon.
        tie_embeddings: share ``embed_tokens`` and ``lm_head`` weights.
        attention_bias: biases on q/k/v/o projections (HF ``attention_bias``).
        dropout: attention and residual dropout probability (0 in real LLaMAs).
        pad_vocab_multiple: pad the embedding rows to this multiple (1 disables).
        attention_impl: ``"sdpa"`` or ``"math"``.
    """

    arch: ClassVar[str] = "llama"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"intermediate_size": "ffn_hidden"}

    block_size: int = 2048
    vocab_size: int = 32000
    n_layer: int = 22
    n_head: int = 32
    n_kv_head: int = 4
    n_embd: int = 2048
    ffn_hidden: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    dropout: float = 0.0
    pad_vocab_multiple: int = 64
    attention_impl: AttentionImpl = "sdpa"

    def __post_init__(self) -> None:
        _check_common(self)
        _check_positive(self, ("n_kv_head",))
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head!r} must be a multiple of n_kv_head={self.n_kv_head!r} "
                "(each key/value head serves n_head // n_kv_head query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim!r}")
        if self.ffn_hidden is None:
            self.ffn_hidden = llama_intermediate_size(self.n_embd)
        _check_positive(self, ("ffn_hidden",))
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            need = {"factor", "low_freq_factor", "high_freq_factor"}
            need.add("original_max_position_embeddings")
            missing = sorted(need - set(self.rope_scaling))
            if kind != "llama3" or missing:
                raise ValueError(
                    f"unsupported rope_scaling {self.rope_scaling!r}: only rope_type='llama3' "
                    f"with keys {sorted(need)} is implemented (missing {missing})"
                )

    @property
    def n_query_groups(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_kv_head


_LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=32.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)
LlamaConfig.PRESETS = {
    "llama-debug": dict(
        block_size=64, vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
        ffn_hidden=176,
    ),
    "llama-tiny": dict(
        block_size=256, vocab_size=8192, n_layer=4, n_head=4, n_kv_head=2, n_embd=256,
        ffn_hidden=704,
    ),
    # Shape-only presets of released models (build them on the meta device to inspect).
    "tinyllama-1.1b": dict(
        block_size=2048, vocab_size=32000, n_layer=22, n_head=32, n_kv_head=4, n_embd=2048,
        ffn_hidden=5632,
    ),
    "llama-3.2-1b": dict(
        block_size=131072, vocab_size=128256, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048,
        ffn_hidden=8192, rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING,
        tie_embeddings=True,
    ),
    "llama-2-7b": dict(
        block_size=4096, vocab_size=32000, n_layer=32, n_head=32, n_kv_head=32, n_embd=4096,
        ffn_hidden=11008,
    ),
}  # fmt: skip
