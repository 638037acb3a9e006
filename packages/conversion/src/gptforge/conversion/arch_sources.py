"""Reading a transformer checkpoint as *roles* for cross-architecture transfer.

A source is one of our GPT / LLaMA model directories, a HF ``GPT2LMHeadModel`` or
``LlamaForCausalLM`` directory, a Meta ``consolidated.*.pth`` + ``params.json`` directory, or a
single ``.pt``/``.pth``/``.bin``/``.safetensors`` file. Its layout is detected from
``config.json`` / ``params.json`` when present and otherwise from exact telltale key names
(``transformer.h.0.attn.c_attn.weight``, ``model.layers.0.self_attn.q_proj.weight``,
``layers.0.attention.wq.weight``, ...), never from substrings. Head counts come from the config;
without one they are reported as unknown rather than guessed from weight shapes.

Each layout has a module-level map from a *role* (``embed``, ``{}.q.weight``, ``{}.fc.bias``, ...)
to its key template; the reshapes that make a source tensor match a role (the Conv1D transpose
of HF GPT-2, the split of the fused ``c_attn``) are small named functions, and every role
remembers which source key it came from and how.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.hf_gpt2 import conv1d_to_linear
from gptforge.conversion.weights import load_state_dict

__all__ = [
    "FAMILY",
    "LAYOUT_MAPS",
    "Role",
    "SourceAnalysis",
    "detect_layout",
    "load_source",
    "source_roles",
    "split_qkv",
]

Layout = Literal["gpt", "hf-gpt2", "llama", "hf-llama", "meta-llama"]
Compat = Literal["exact", "transposed", "split", "partial", "none"]

_GPT_LAYER = {
    "norm1.weight": "h.{}.ln_1.weight",
    "norm1.bias": "h.{}.ln_1.bias",
    "qkv.weight": "h.{}.attn.c_attn.weight",
    "qkv.bias": "h.{}.attn.c_attn.bias",
    "o.weight": "h.{}.attn.c_proj.weight",
    "o.bias": "h.{}.attn.c_proj.bias",
    "norm2.weight": "h.{}.ln_2.weight",
    "norm2.bias": "h.{}.ln_2.bias",
    "fc.weight": "h.{}.mlp.c_fc.weight",
    "fc.bias": "h.{}.mlp.c_fc.bias",
    "proj.weight": "h.{}.mlp.c_proj.weight",
    "proj.bias": "h.{}.mlp.c_proj.bias",
}
_GPT_GLOBAL = {
    "embed": "wte.weight",
    "pos_embed": "wpe.weight",
    "head": "lm_head.weight",
    "final_norm.weight": "ln_f.weight",
    "final_norm.bias": "ln_f.bias",
}
_LLAMA_LAYER = {
    "norm1.weight": "layers.{}.input_layernorm.weight",
    "q.weight": "layers.{}.self_attn.q_proj.weight",
    "q.bias": "layers.{}.self_attn.q_proj.bias",
    "k.weight": "layers.{}.self_attn.k_proj.weight",
    "k.bias": "layers.{}.self_attn.k_proj.bias",
    "v.weight": "layers.{}.self_attn.v_proj.weight",
    "v.bias": "layers.{}.self_attn.v_proj.bias",
    "o.weight": "layers.{}.self_attn.o_proj.weight",
    "o.bias": "layers.{}.self_attn.o_proj.bias",
    "norm2.weight": "layers.{}.post_attention_layernorm.weight",
    "gate.weight": "layers.{}.mlp.gate_proj.weight",
    "up.weight": "layers.{}.mlp.up_proj.weight",
    "down.weight": "layers.{}.mlp.down_proj.weight",
}
_LLAMA_GLOBAL = {
    "embed": "embed_tokens.weight",
    "head": "lm_head.weight",
    "final_norm.weight": "norm.weight",
}
_META_LAYER = {
    "norm1.weight": "layers.{}.attention_norm.weight",
    "q.weight": "layers.{}.attention.wq.weight",
    "k.weight": "layers.{}.attention.wk.weight",
    "v.weight": "layers.{}.attention.wv.weight",
    "o.weight": "layers.{}.attention.wo.weight",
    "norm2.weight": "layers.{}.ffn_norm.weight",
    "gate.weight": "layers.{}.feed_forward.w1.weight",
    "up.weight": "layers.{}.feed_forward.w3.weight",
    "down.weight": "layers.{}.feed_forward.w2.weight",
}
_META_GLOBAL = {
    "embed": "tok_embeddings.weight",
    "head": "output.weight",
    "final_norm.weight": "norm.weight",
}


def _prefixed(table: dict[str, str], prefix: str) -> dict[str, str]:
    return {role: prefix + key for role, key in table.items()}


# layout -> (global roles, per-layer roles with "{}" for the layer index, keys with no place in
# any target by design: position tables, causal-mask and RoPE buffers).
LAYOUT_MAPS: dict[str, tuple[dict[str, str], dict[str, str], tuple[str, ...]]] = {
    "gpt": (_GPT_GLOBAL, _GPT_LAYER, ()),
    "hf-gpt2": (
        {**_prefixed({k: v for k, v in _GPT_GLOBAL.items() if k != "head"}, "transformer."),
         "head": "lm_head.weight"},
        _prefixed(_GPT_LAYER, "transformer."),
        ("transformer.h.{}.attn.bias", "transformer.h.{}.attn.masked_bias"),
    ),
    "llama": (_LLAMA_GLOBAL, _LLAMA_LAYER, ("layers.{}.self_attn.rotary_emb.inv_freq",)),
    "hf-llama": (
        {**_prefixed({k: v for k, v in _LLAMA_GLOBAL.items() if k != "head"}, "model."),
         "head": "lm_head.weight"},
        _prefixed(_LLAMA_LAYER, "model."),
        ("model.layers.{}.self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"),
    ),
    "meta-llama": (_META_GLOBAL, _META_LAYER, ("rope.freqs",)),
}  # fmt: skip
FAMILY = {
    "gpt": "gpt",
    "hf-gpt2": "gpt",
    "llama": "llama",
    "hf-llama": "llama",
    "meta-llama": "llama",
}
# Layouts storing the four GPT-2 block projections as HF Conv1D (in, out).
_CONV1D_ROLES = ("qkv.weight", "o.weight", "fc.weight", "proj.weight")
# Exact keys whose presence identifies a layout when there is no config file.
_TELLTALES: tuple[tuple[str, Layout], ...] = (
    ("transformer.h.0.attn.c_attn.weight", "hf-gpt2"),
    ("h.0.attn.c_attn.weight", "gpt"),  # or a bare GPT2Model: told apart by the shape below
    ("model.layers.0.self_attn.q_proj.weight", "hf-llama"),
    ("layers.0.self_attn.q_proj.weight", "llama"),
    ("layers.0.attention.wq.weight", "meta-llama"),
)


@dataclass
class SourceAnalysis:
    """What a source checkpoint is, as the transfer report shows it."""

    path: str
    layout: str
    family: str
    detected_from: str
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int | None
    n_kv_head: int | None
    ffn: str
    ffn_hidden: int
    norm: str
    norm_eps: float
    bias: bool
    tied: bool
    n_params: int
    block_size: int | None = None
    gelu_approximate: str = "tanh"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass
class Role:
    """One source tensor in role form, with where it came from and how it was reshaped."""

    tensor: torch.Tensor
    source_keys: list[str]
    compat: Compat
    note: str = ""


def split_qkv(w: torch.Tensor, n_embd: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused ``c_attn`` weight ``(3C, C)`` or bias ``(3C,)`` into Q, K, V (dim 0)."""
    if w.shape[0] != 3 * n_embd:
        raise ConversionError(
            f"fused c_attn has {w.shape[0]} output rows, expected 3 * n_embd = {3 * n_embd}"
        )
    q, k, v = w.split(n_embd, dim=0)  # (C, ...) each
    return q, k, v


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {str(path)!r}: {e}") from e


def _find_config(source: Path) -> tuple[Path | None, dict[str, Any] | None]:
    base = source if source.is_dir() else source.parent
    for name in ("config.json", "params.json"):
        if (base / name).is_file():
            return base / name, _read_json(base / name)
    return None, None


def detect_layout(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any] | None = None
) -> tuple[Layout, str]:
    """The layout of a checkpoint and what told it: ``(layout, "config.json" | "keys")``.

    Args:
        state_dict: the source tensors.
        config: the parsed ``config.json`` (ours or HF) or Meta ``params.json``, if any.
    """
    if config is not None:
        arch = config.get("arch")
        model_type = config.get("model_type")
        if arch in ("gpt", "llama"):
            return arch, "config.json (arch)"
        if arch is not None:
            raise ConversionError(
                f"source arch {arch!r} cannot be transferred into MM-Rec; supported source "
                "architectures: ['gpt', 'llama'] (our model dirs), HF 'gpt2' / 'llama', Meta LLaMA"
            )
        if model_type == "gpt2":
            return _gpt_layout(state_dict, "transformer."), "config.json (model_type)"
        if model_type == "llama":
            return "hf-llama", "config.json (model_type)"
        if model_type is not None:
            raise ConversionError(
                f"HF model_type {model_type!r} is not supported; supported: ['gpt2', 'llama']"
            )
        if {"dim", "n_layers", "n_heads"} <= set(config):
            return "meta-llama", "params.json"
    for key, layout in _TELLTALES:
        if key in state_dict:
            if layout in ("gpt", "hf-gpt2"):  # the c_attn shape tells Linear from Conv1D
                layout = _gpt_layout(state_dict, "transformer." if layout == "hf-gpt2" else "")
            return layout, f"keys ({key})"
    sample = sorted(state_dict)[:8]
    raise ConversionError(
        "cannot tell the source family: no config.json/params.json and none of the telltale keys "
        f"{[k for k, _ in _TELLTALES]!r} is present (first keys: {sample!r}); pass a GPT-2 or "
        "LLaMA checkpoint, or put its config.json beside the weights"
    )


def _gpt_layout(sd: dict[str, torch.Tensor], prefix: str) -> Layout:
    """Ours stores ``c_attn`` as nn.Linear (3C, C), HF as Conv1D (C, 3C)."""
    w = sd.get(f"{prefix}h.0.attn.c_attn.weight")
    if w is None and prefix:
        w = sd.get("h.0.attn.c_attn.weight")
    if w is None:
        return "hf-gpt2"
    return "gpt" if w.shape[0] == 3 * w.shape[1] else "hf-gpt2"


def _normalise_keys(sd: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """A bare ``GPT2Model`` / ``LlamaModel`` checkpoint lacks the ``transformer.``/``model.``
    prefix; add it so one map serves both. nanoGPT's keys are ours under ``transformer.``."""
    if layout == "gpt" and "transformer.wte.weight" in sd:
        return {k.removeprefix("transformer."): v for k, v in sd.items()}
    prefix = {"hf-gpt2": "transformer.", "hf-llama": "model."}.get(layout)
    if prefix is None or any(k.startswith(prefix) for k in sd):
        return sd
    return {k if k == "lm_head.weight" else prefix + k: v for k, v in sd.items()}


def _count_params(sd: dict[str, torch.Tensor]) -> int:
    seen: set[tuple[int, tuple[int, ...]]] = set()  # (address, shape): ties counted once
    total = 0
    for t in sd.values():
        address = t.untyped_storage().data_ptr() + int(t.storage_offset()) * t.element_size()
        ident = (address, tuple(int(d) for d in t.shape))
        if ident not in seen:
            seen.add(ident)
            total += t.numel()
    return total


def _analyse(
    path: Path, sd: dict[str, torch.Tensor], layout: Layout, how: str, cfg: dict[str, Any] | None
) -> SourceAnalysis:
    glob, layer, _ = LAYOUT_MAPS[layout]
    family = FAMILY[layout]
    cfg = cfg or {}
    notes: list[str] = []
    embed = sd.get(glob["embed"])
    if embed is None:
        raise ConversionError(f"source {str(path)!r} ({layout}) has no embedding {glob['embed']!r}")
    n_layer = 0
    probe = layer["norm1.weight"]
    while probe.format(n_layer) in sd:
        n_layer += 1
    n_embd = embed.shape[1]
    if layout == "gpt" or cfg.get("arch") in ("gpt", "llama"):
        vocab = cfg.get("vocab_size", embed.shape[0])
        n_head, n_kv = cfg.get("n_head"), cfg.get("n_kv_head", cfg.get("n_head"))
        eps = cfg.get("layer_norm_eps", cfg.get("norm_eps", 1e-5))
        block = cfg.get("block_size")
    elif layout == "meta-llama":
        vocab = cfg.get("vocab_size", -1)
        vocab = vocab if isinstance(vocab, int) and vocab > 0 else embed.shape[0]
        n_head, n_kv = cfg.get("n_heads"), cfg.get("n_kv_heads", cfg.get("n_heads"))
        eps, block = cfg.get("norm_eps", 1e-5), None
    else:
        vocab = cfg.get("vocab_size", embed.shape[0])
        n_head = cfg.get("n_head", cfg.get("num_attention_heads"))
        n_kv = cfg.get("num_key_value_heads", n_head)
        eps = cfg.get("layer_norm_epsilon", cfg.get("rms_norm_eps", 1e-5))
        block = cfg.get("n_positions", cfg.get("max_position_embeddings"))
    if n_head is None:
        notes.append("no config: head counts unknown (never guessed from weight shapes)")
    if family == "gpt":
        fc = sd[layer["fc.weight"].format(0)] if n_layer else None
        hidden = 0 if fc is None else (fc.shape[1] if layout == "hf-gpt2" else fc.shape[0])
        act = cfg.get("activation_function", cfg.get("gelu_approximate", "tanh"))
        gelu = "none" if act in ("gelu", "none") else "tanh"
        bias = layer["norm1.bias"].format(0) in sd
        ffn, norm = "gelu", "layernorm"
    else:
        gate = sd[layer["gate.weight"].format(0)] if n_layer else None
        hidden = 0 if gate is None else gate.shape[0]
        gelu, bias, ffn, norm = (
            "tanh",
            layer.get("q.bias", "-").format(0) in sd,
            "swiglu",
            "rmsnorm",
        )
    head = sd.get(glob["head"])
    tied = (
        head is None
        or head.data_ptr() == embed.data_ptr()
        or bool(cfg.get("tie_embeddings", cfg.get("tie_word_embeddings", False)))
    )
    return SourceAnalysis(
        path=str(path), layout=layout, family=family, detected_from=how, vocab_size=int(vocab),
        n_embd=int(n_embd), n_layer=n_layer, n_head=n_head, n_kv_head=n_kv, ffn=ffn,
        ffn_hidden=int(hidden), norm=norm, norm_eps=float(eps), bias=bias, tied=tied,
        n_params=_count_params(sd), block_size=block, gelu_approximate=gelu, notes=notes,
    )  # fmt: skip


def load_source(
    source: str | os.PathLike[str] | dict[str, torch.Tensor],
    source_config: dict[str, Any] | str | os.PathLike[str] | None = None,
) -> tuple[dict[str, torch.Tensor], SourceAnalysis]:
    """Load a source checkpoint and analyse it.

    Args:
        source: a model directory, a weights file, or an in-memory state dict.
        source_config: its config (a dict or a ``config.json``/``params.json`` path); by default
            the one beside the weights.

    Returns:
        ``(state_dict, analysis)`` with keys normalised to the layout's map.
    """
    if isinstance(source, dict):
        path, sd = Path("<state_dict>"), dict(source)
        cfg_path = None
    else:
        path = Path(source)
        sd = load_state_dict(path)
        cfg_path, cfg_found = _find_config(path)
        if source_config is None:
            source_config = cfg_found
    cfg: dict[str, Any] | None
    if isinstance(source_config, str | os.PathLike):
        cfg_path = Path(source_config)
        cfg = _read_json(cfg_path)
    else:
        cfg = source_config
    layout, how = detect_layout(sd, cfg)
    if cfg_path is not None and how.startswith("config.json"):
        how = how.replace("config.json", cfg_path.name)
    sd = _normalise_keys(sd, layout)
    return sd, _analyse(path, sd, layout, how, cfg)


def source_roles(
    sd: dict[str, torch.Tensor], analysis: SourceAnalysis
) -> tuple[dict[str, Role], list[str]]:
    """Every tensor of the source in role form, and the keys with no place in MM-Rec by design.

    Layer roles are named ``"{i}.<role>"``; global ones ``embed``, ``head``, ``pos_embed``,
    ``final_norm.weight`` / ``.bias``.
    """
    glob, layer, dropped_templates = LAYOUT_MAPS[analysis.layout]
    conv1d = analysis.layout == "hf-gpt2"
    roles: dict[str, Role] = {}
    for role, key in glob.items():
        if key in sd:
            roles[role] = Role(sd[key], [key], "exact")
    for i in range(analysis.n_layer):
        for role, template in layer.items():
            key = template.format(i)
            if key not in sd:
                continue
            t, compat, note = sd[key], "exact", ""
            if conv1d and role in _CONV1D_ROLES:
                t, compat, note = (
                    conv1d_to_linear(t),
                    "transposed",
                    "HF Conv1D (in, out) transposed",
                )
            if role.startswith("qkv."):
                kind = role.split(".")[1]
                for part, piece in zip("qkv", split_qkv(t, analysis.n_embd), strict=True):
                    how = f"{part.upper()} third of the fused c_attn {kind}"
                    roles[f"{i}.{part}.{kind}"] = Role(
                        piece, [key], "split", f"{note}; {how}" if note else how
                    )
                continue
            roles[f"{i}.{role}"] = Role(t, [key], compat, note)  # type: ignore[arg-type]
    dropped = []
    for template in dropped_templates:
        for i in range(max(analysis.n_layer, 1)):
            key = template.format(i)
            if key in sd and key not in dropped:
                dropped.append(key)
    if "pos_embed" in roles:
        dropped.append(roles.pop("pos_embed").source_keys[0])
    return roles, dropped
