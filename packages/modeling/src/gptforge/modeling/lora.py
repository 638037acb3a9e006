"""LoRA: low-rank adapters on a model's ``nn.Linear`` layers, found by name.

``apply_lora(model, LoraConfig(rank=8, targets=("attn", "mlp")))`` swaps every targeted linear
layer for a :class:`LoRALinear` that keeps the layer's own ``weight`` and ``bias`` Parameters
(ties survive, state-dict names do not change) and adds ``lora_A`` (rank x in) and ``lora_B``
(out x rank): ``y = x W^T + b + (alpha / rank) * B A dropout(x)``, PEFT's formula and names.
Everything else is frozen. ``B`` starts at zero, so the adapted model starts equal to the base.

:func:`add_trainable_tokens` lets chosen rows of the token embedding train too (PEFT's
``trainable_token_indices``): a chat template's new special tokens have rows the base never
learned, and no adapter on a linear layer can move them.

Layers are chosen by the last components of their module names, so any model whose
projections are ``nn.Linear`` modules with the Hugging Face names of :data:`TARGET_GROUPS` is
covered without the model file knowing about adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gptforge.modeling.linear import linear
from torch import Tensor, nn
from torch.nn import functional as F

#: Target groups -> module-name suffixes, per the Hugging Face names our families use.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": (
        "attn.c_attn",
        "attn.c_proj",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    ),
    "mlp": ("mlp.c_fc", "mlp.c_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "head": ("lm_head",),
}
DEFAULT_TARGETS = ("attn", "mlp", "head")


def parse_targets(text: str) -> tuple[str, ...]:
    """``"attn,mlp"`` -> ``("attn", "mlp")``, each checked against :data:`TARGET_GROUPS`."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in TARGET_GROUPS]
    if unknown or not names:
        raise ValueError(
            f"lora targets {text!r} name unknown groups {unknown}; choose from "
            f"{list(TARGET_GROUPS)}, comma-separated (e.g. --lora-targets attn,mlp)"
        )
    return names


@dataclass(frozen=True)
class LoraConfig:
    """Shape of the adapters.

    Args:
        rank: Inner dimension ``r`` of each adapter.
        alpha: Scale numerator: the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the adapter's input while training.
        targets: Groups of :data:`TARGET_GROUPS` to adapt.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank!r}; pass --lora-rank 16")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha!r}; pass --lora-alpha 32")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        parse_targets(",".join(self.targets))

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """A linear layer plus a trainable low-rank update; the base weight stays as it was.

    Args:
        base: The layer to adapt; its ``weight`` and ``bias`` Parameters are taken over as they
            are (not copied).
        cfg: Rank, alpha and dropout.
    """

    def __init__(self, base: nn.Linear, cfg: LoraConfig) -> None:
        nn.Module.__init__(self)  # take over base's tensors instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        # Adapters train in float32 even over a bf16/fp16 base.
        kw = {"device": base.weight.device, "dtype": torch.float32}
        self.lora_A = nn.Linear(self.in_features, cfg.rank, bias=False, **kw)  # type: ignore[arg-type]
        self.lora_B = nn.Linear(cfg.rank, self.out_features, bias=False, **kw)  # type: ignore[arg-type]
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's initialisation
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.scaling = cfg.scaling
        self.base_class = type(base)  # what merge_lora puts back
        # A head tied to a TrainableTokens embedding reads its rows (a list, so the embedding
        # is not registered twice as a submodule).
        self.tied_tokens: list[TrainableTokens] = []

    def base_weight(self) -> Tensor:
        """``weight``, with the trainable token rows of a tied embedding in place."""
        return self.tied_tokens[0].merged_weight() if self.tied_tokens else self.weight

    def delta_weight(self) -> Tensor:
        """``scaling * B A`` as a (out, in) float32 matrix."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged_weight(self) -> Tensor:
        """The weight the layer computes with (differentiable in the adapters): the model's
        fused head-and-loss reads this instead of ``weight`` (no adapter dropout there)."""
        return self.base_weight() + self.delta_weight().to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.base_weight(), self.bias)  # (..., out)
        a = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # (..., r)
        return y + (self.lora_B(a) * self.scaling).to(y.dtype)  # (..., out)


class TrainableTokens(nn.Embedding):
    """A token embedding whose rows ``token_ids`` train while the rest stays frozen.

    The trained rows live in ``token_rows`` and replace the base rows in the forward, as PEFT's
    trainable tokens do (its ``trainable_tokens_delta`` holds the rows themselves, not a
    difference); ``weight`` stays the base's Parameter, so ties survive.
    """

    token_ids: Tensor  # (n,) the rows that train, a buffer that moves with the module
    slots: Tensor  # (vocab,)

    def __init__(self, base: nn.Embedding, token_ids: Sequence[int]) -> None:
        nn.Module.__init__(self)  # take over base's weight instead of allocating a new one
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self.weight = base.weight
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=base.weight.device)
        self.register_buffer("token_ids", ids, persistent=False)
        # token id -> its row in token_rows, -1 for a frozen one: the forward gathers through
        # it instead of copying the whole (vocab, C) matrix, which a large vocabulary cannot afford
        slots = torch.full((self.num_embeddings,), -1, dtype=torch.long, device=ids.device)
        slots[ids] = torch.arange(len(ids), device=ids.device)
        self.register_buffer("slots", slots, persistent=False)
        self.token_rows = nn.Parameter(base.weight.detach()[ids].float().clone())

    def merged_weight(self) -> Tensor:
        """The embedding matrix with the trained rows in place (differentiable in them)."""
        return self.weight.index_copy(0, self.token_ids, self.token_rows.to(self.weight.dtype))

    def forward(self, idx: Tensor) -> Tensor:
        frozen = F.embedding(idx, self.weight)  # (B, T, C)
        slot = self.slots[idx]  # (B, T)
        trained = self.token_rows.to(frozen.dtype)[slot.clamp(min=0)]  # (B, T, C)
        return torch.where((slot >= 0).unsqueeze(-1), trained, frozen)


class TiedHead(nn.Linear):
    """An un-adapted head tied to a :class:`TrainableTokens` embedding: reads its rows too."""

    def __init__(self, base: nn.Linear, tokens: TrainableTokens) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.tied_tokens = [tokens]

    def merged_weight(self) -> Tensor:
        """The tied embedding's matrix, trained rows included."""
        return self.tied_tokens[0].merged_weight()

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.merged_weight(), self.bias)  # (..., vocab)


def add_trainable_tokens(model: nn.Module, token_ids: Sequence[int]) -> TrainableTokens:
    """Let rows ``token_ids`` of ``model``'s token embedding train (in place); a head tied to
    the embedding reads the same rows. Call after :func:`apply_lora`, which froze the rest.

    >>> from gptforge.modeling import GPT, GPTConfig
    >>> model = GPT(GPTConfig.from_name("debug"))
    >>> _ = apply_lora(model, LoraConfig(rank=4, targets=("attn",)))
    >>> tokens = add_trainable_tokens(model, [510, 511])
    >>> tokens.token_rows.shape, type(model.lm_head).__name__
    (torch.Size([2, 64]), 'TiedHead')
    """
    name = str(getattr(model, "token_embedding_name", "wte"))
    emb = model.get_submodule(name)
    if not isinstance(emb, nn.Embedding) or isinstance(emb, TrainableTokens):
        raise ValueError(f"{name!r} of {type(model).__name__} is not a plain token embedding")
    bad = [i for i in token_ids if not 0 <= i < emb.num_embeddings]
    if bad or not token_ids or len(set(token_ids)) < len(token_ids):
        raise ValueError(
            f"trainable token ids {bad or list(token_ids)} are not distinct rows of the "
            f"embedding ({emb.num_embeddings} rows)"
        )
    tokens = TrainableTokens(emb, token_ids)
    _set_module(model, name, tokens)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and head.weight is emb.weight:
        if isinstance(head, LoRALinear):
            head.tied_tokens = [tokens]
        else:
            _set_module(model, "lm_head", TiedHead(head, tokens))
    return tokens


def trainable_tokens(model: nn.Module) -> dict[str, TrainableTokens]:
    """The embeddings of ``model`` with trainable rows, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TrainableTokens)}


def target_names(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that ``targets`` select."""
    suffixes = tuple(s for t in parse_targets(",".join(targets)) for s in TARGET_GROUPS[t])
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not isinstance(module, LoRALinear)
        and any(name == s or name.endswith("." + s) for s in suffixes)
    ]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, cfg: LoraConfig, names: list[str] | None = None) -> list[str]:
    """Freeze ``model`` and wrap the targeted linear layers in :class:`LoRALinear` (in place).

    Args:
        model: Any module whose projections are ``nn.Linear`` layers.
        cfg: Rank, alpha, dropout and target groups.
        names: Exact module names to adapt instead of ``cfg.targets`` (loading saved adapters).

    Returns:
        The adapted module names.

    >>> from gptforge.modeling import GPT, GPTConfig
    >>> model = GPT(GPTConfig.from_name("debug"))
    >>> names = apply_lora(model, LoraConfig(rank=4, targets=("attn",)))
    >>> names[:2], sum(p.numel() for p in model.parameters() if p.requires_grad)
    (['h.0.attn.c_attn', 'h.0.attn.c_proj'], 3072)
    """
    if trainable_tokens(model):
        raise ValueError(
            "apply_lora must come before add_trainable_tokens (it freezes every parameter, "
            "the token rows included)"
        )
    names = target_names(model, cfg.targets) if names is None else names
    if not names:
        raise ValueError(
            f"no linear layer of {type(model).__name__} matches lora targets {list(cfg.targets)} "
            f"(module-name suffixes {[s for t in cfg.targets for s in TARGET_GROUPS[t]]})"
        )
    model.requires_grad_(False)
    for name in names:
        _set_module(model, name, LoRALinear(model.get_submodule(name), cfg))  # type: ignore[arg-type]
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain linear layers back (in place).

    Trainable token rows are written into the embedding (and so into a head tied to it). A
    head with an adapter that shares its weight with the token embedding gets a weight of its
    own (the update is the head's, not the embedding's), and ``config.tie_embeddings`` becomes
    False.
    """
    import dataclasses

    for name, m in list(model.named_modules()):
        if isinstance(m, TrainableTokens):
            m.weight[m.token_ids] = m.token_rows.to(m.weight.dtype)  # in place: ties see them
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim, device="meta")
            emb.weight = m.weight
            _set_module(model, name, emb)
        elif isinstance(m, TiedHead):
            head = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            head.weight, head.bias = m.weight, m.bias
            _set_module(model, name, head)
        elif isinstance(m, LoRALinear):
            m.tied_tokens = []  # the rows are in the weight now
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in [m.weight]}
    untied = False
    for name, m in lora_modules(model).items():
        plain = m.base_class(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        merged = m.merged_weight()
        if id(m.weight) in embeddings:
            plain.weight = nn.Parameter(merged, requires_grad=False)
            untied = True
        else:
            m.weight.copy_(merged)
            plain.weight = m.weight
        plain.bias = m.bias
        _set_module(model, name, plain)
    if untied and hasattr(model, "config"):
        config: Any = model.config
        model.config = dataclasses.replace(config, tie_embeddings=False)
    return model
