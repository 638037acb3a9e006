"""Model introspection: parameter counts, memory and FLOPs, from a config alone.

Counts come from a model built on the ``meta`` device (no memory is allocated), so they are
exactly what :meth:`num_params` reports for the real model, for every registered architecture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gptforge.modeling.registry import build_model, config_from_dict, get_config

_INIT_FNS = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "zeros_", "ones_", "constant_")  # fmt: skip


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Make ``torch.nn.init`` a no-op while a meta model is built.

    Meta tensors hold no values, and on the meta device ``normal_`` runs a Python reference
    that imports ``torch._dynamo`` (seconds) the first time; counting never needs values.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FNS}
    try:
        for name in _INIT_FNS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


#: Bytes per parameter of an fp32 AdamW training state: weight, gradient, exp_avg, exp_avg_sq.
ADAMW_FP32_BYTES_PER_PARAM = 16


def count_params(config: Any, non_embedding: bool = False, include_padding: bool = False) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device.

    Args:
        config: any registered config.
        non_embedding: count the transformer body only (see ``num_params``).
        include_padding: include the unused rows of a padded vocabulary.

    >>> from gptforge.modeling import get_config
    >>> count_params(get_config("gpt2", tie_embeddings=False, qkv_bias=False))
    163009536
    """
    with torch.device("meta"), _no_init():
        model: Any = build_model(config)
    if include_padding:
        return model.num_params(non_embedding=non_embedding, include_padding=True)
    return model.num_params(non_embedding=non_embedding)


def flops_per_token(config: Any, seq_len: int | None = None) -> dict[str, int]:
    """Matmul FLOPs per token of a forward pass and of a training step (forward + backward).

    Uses the PaLM-appendix estimate: ``2 * N`` for the weight matmuls (``N`` = body parameters
    plus the LM head's ``vocab_size * n_embd``, which is a matmul whether tied or not) plus
    ``2 * 2 * n_layer * seq_len * n_embd`` for the attention scores and weighted sum over a
    full (non-causal-discounted) context; training is 3x forward.

    Args:
        config: a config with ``n_layer``, ``n_embd``, ``vocab_size``, ``block_size``.
        seq_len: context length (default ``config.block_size``).
    """
    T = seq_len or config.block_size
    n_matmul = count_params(config, non_embedding=True) + config.vocab_size * config.n_embd
    forward = 2 * n_matmul + 4 * config.n_layer * T * config.n_embd
    return {"forward": forward, "train": 3 * forward}


@dataclass(frozen=True)
class ModelInfo:
    """What ``gptforge model info`` prints."""

    name: str
    arch: str
    config: dict[str, Any]
    params: int
    params_non_embedding: int
    params_allocated: int
    params_tied: int
    params_untied: int
    weights_fp32_bytes: int
    weights_bf16_bytes: int
    adamw_fp32_bytes: int
    forward_flops_per_token: int
    train_flops_per_token: int
    seq_len: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def model_info(config: Any, name: str = "", seq_len: int | None = None) -> ModelInfo:
    """Counts, memory and FLOPs of ``config`` (see :class:`ModelInfo`).

    Memory is for the allocated parameters (padding rows included): fp32 and bf16 weights, and
    an fp32 AdamW training state (weights + grads + two moments = 16 bytes per parameter,
    activations not included).
    """
    from gptforge.modeling.registry import config_to_dict

    allocated = count_params(config, include_padding=True)
    tied = count_params(dataclasses.replace(config, tie_embeddings=True))
    untied = count_params(dataclasses.replace(config, tie_embeddings=False))
    flops = flops_per_token(config, seq_len)
    return ModelInfo(
        name=name,
        arch=config.arch,
        config=config_to_dict(config),
        params=count_params(config),
        params_non_embedding=count_params(config, non_embedding=True),
        params_allocated=allocated,
        params_tied=tied,
        params_untied=untied,
        weights_fp32_bytes=4 * allocated,
        weights_bf16_bytes=2 * allocated,
        adamw_fp32_bytes=ADAMW_FP32_BYTES_PER_PARAM * allocated,
        forward_flops_per_token=flops["forward"],
        train_flops_per_token=flops["train"],
        seq_len=seq_len or config.block_size,
    )


def resolve_config(spec: str | Path, **overrides: Any) -> Any:
    """A config from a preset name, a ``config.json`` file or a model directory."""
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        config = config_from_dict(json.loads(path.read_text()))
        return dataclasses.replace(config, **overrides) if overrides else config
    return get_config(str(spec), **overrides)


def human(n: float, unit: str = "") -> str:
    """``124439808 -> '124.44M'``; bytes with ``unit='B'`` use binary prefixes (GiB)."""
    if unit == "B":
        for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
            if abs(n) < 1024 or prefix == "Ti":
                return f"{n:.2f} {prefix}B" if prefix else f"{int(n)} B"
            n /= 1024
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{prefix}{unit}"
    return f"{n:g}{unit}"
