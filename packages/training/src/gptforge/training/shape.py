"""The model config of a preset or config file with ``--n-layer``-style overrides on top.

The override flags have one name for every architecture; each family spells some of them
differently in its config (llama's attention biases are ``attention_bias``), so
this module maps the flag to the field and refuses a flag the family has no field for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gptforge.training.config import ModelShape

# Flag -> config field per architecture; a family missing from a row has no such setting.
FIELD_OF: dict[str, dict[str, str]] = {
    "n_layer": {"gpt": "n_layer", "llama": "n_layer", "mmrec": "n_layer"},
    "n_head": {"gpt": "n_head", "llama": "n_head", "mmrec": "n_head"},
    "n_embd": {"gpt": "n_embd", "llama": "n_embd", "mmrec": "n_embd"},
    "context_length": {"gpt": "block_size", "llama": "block_size", "mmrec": "block_size"},
    "n_kv_head": {"llama": "n_kv_head"},
    "ffn_hidden": {"llama": "ffn_hidden", "mmrec": "ffn_hidden"},
    "dropout": {"gpt": "dropout", "llama": "dropout", "mmrec": "dropout"},
    "bias": {"gpt": "bias", "llama": "attention_bias", "mmrec": "bias"},
    "qkv_bias": {"gpt": "qkv_bias", "llama": "attention_bias"},
    "tie_weights": {"gpt": "tie_embeddings", "llama": "tie_embeddings", "mmrec": "tie_embeddings"},
}

# The LLMs-from-scratch book's GPT_CONFIG_124M keys -> GPTConfig fields. Its GPTModel has an
# untied output head and biases everywhere except (by default) the QKV projection.
BOOK_KEYS = {
    "vocab_size": "vocab_size",
    "context_length": "block_size",
    "emb_dim": "n_embd",
    "n_heads": "n_head",
    "n_layers": "n_layer",
    "drop_rate": "dropout",
    "qkv_bias": "qkv_bias",
}


def read_config_file(path: str | Path) -> Any:
    """A model config from ``config.json`` (or a model directory) or the book's dict."""
    from gptforge.modeling import config_from_dict

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"--config {str(path)!r}: no such file; pass a JSON model config")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"--config {str(p)!r} is not valid JSON ({exc}); fix or rewrite it"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {str(p)!r} holds {type(data).__name__}, not a JSON object")
    if "arch" not in data and "emb_dim" in data:
        unknown = sorted(set(data) - set(BOOK_KEYS))
        if unknown:
            raise ValueError(
                f"--config {str(p)!r}: unknown keys {unknown} in an LLMs-from-scratch config; "
                f"allowed: {sorted(BOOK_KEYS)}"
            )
        fields = {BOOK_KEYS[k]: v for k, v in data.items()}
        data = {"arch": "gpt", "tie_embeddings": False, "qkv_bias": False, **fields}
    if "arch" not in data:
        raise ValueError(
            f"--config {str(p)!r} has no 'arch' key; write it with `gptforge model info --json` "
            "or a model directory's config.json, or use the book's GPT_CONFIG_124M keys"
        )
    return config_from_dict(data)


def model_config(shape: ModelShape, vocab_size: int | None = None) -> Any:
    """The model config ``shape`` describes, with the tokenizer's ``vocab_size`` if given.

    >>> model_config(ModelShape(preset="debug", n_layer=3), vocab_size=300).n_layer
    3
    """
    from gptforge.modeling import get_config

    base = read_config_file(shape.config) if shape.config else get_config(shape.preset)
    arch = type(base).arch
    changes: dict[str, Any] = {} if vocab_size is None else {"vocab_size": vocab_size}
    for flag, value in shape.shape_overrides().items():
        field = FIELD_OF[flag].get(arch)
        if field is None:
            families = sorted(FIELD_OF[flag])
            raise ValueError(
                f"--{flag.replace('_', '-')} is not a setting of {arch} models (only of "
                f"{families}); drop it or choose a preset of those families"
            )
        changes[field] = value
    return dataclasses.replace(base, **changes)


def describe(shape: ModelShape) -> str:
    """``preset tiny`` / ``config cfg.json`` plus the overrides, for logs."""
    where = f"config {shape.config}" if shape.config else f"preset {shape.preset}"
    extra = ", ".join(f"{k}={v}" for k, v in shape.shape_overrides().items())
    return f"{where} ({extra})" if extra else where
