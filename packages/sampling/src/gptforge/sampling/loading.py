"""Load a model and its tokenizer for generation from a run/model directory or a HF directory."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Where ``--ckpt RUN_DIR`` may keep its model directory, in the order they are tried.
MODEL_SUBDIRS = ("", "finetune", "pretrain", "model")


def find_model_dir(ckpt: str | Path) -> tuple[Path, str]:
    """Find the model directory under ``ckpt``; returns ``(dir, "gptforge" | "hf")``.

    A gptforge model directory has a ``config.json`` with an ``"arch"`` key; a Hugging Face one
    has ``"model_type"``. ``RUN_DIR`` itself, then ``RUN_DIR/{finetune,pretrain,model}`` are tried.
    """
    root = Path(ckpt)
    if not root.exists():
        raise FileNotFoundError(
            f"--ckpt {str(root)!r} does not exist; pass a run directory written by `gptforge train`, "
            "a model directory (config.json + model.safetensors) or a Hugging Face directory"
        )
    tried = []
    for sub in MODEL_SUBDIRS:
        cfg_path = root / sub / "config.json"
        tried.append(str(cfg_path))
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            if "arch" in cfg:
                return cfg_path.parent, "gptforge"
            if "model_type" in cfg:
                return cfg_path.parent, "hf"
    raise FileNotFoundError(
        f"no model found under {str(root)!r}: looked for a config.json with 'arch' (gptforge) or "
        f"'model_type' (Hugging Face) in {tried}"
    )


def load_checkpoint(
    ckpt: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` for generation, the model in eval mode.

    Args:
        ckpt: a run directory, a gptforge model directory or a Hugging Face model directory
            (``GPT2LMHeadModel`` / ``LlamaForCausalLM``, converted on the fly through
            ``gptforge.conversion``).
        device: where to put the weights.
        dtype: weight dtype (default: as saved).

    >>> model, tok = load_checkpoint("runs/demo/pretrain")  # doctest: +SKIP
    """
    from gptforge.conversion.peft_adapter import is_adapter_dir, load_adapted
    from gptforge.modeling.io import load_model_dir
    from gptforge.tokenizer import Tokenizer

    root = Path(ckpt)
    if is_adapter_dir(root) and not (root / "config.json").is_file():  # a LoRA run
        model = load_adapted(root, device=device, dtype=dtype)
        return model, Tokenizer.from_dir(root / "tokenizer")
    model_dir, kind = find_model_dir(ckpt)
    if kind == "hf":
        from gptforge.conversion.hf import import_hf

        with tempfile.TemporaryDirectory(prefix="gptforge-hf-") as tmp:
            ours = import_hf(model_dir, Path(tmp) / "model")
            return (
                load_model_dir(ours, device=device, dtype=dtype),
                Tokenizer.from_dir(ours / "tokenizer"),
            )
    tok_dir = model_dir / "tokenizer"
    if not tok_dir.is_dir() and (model_dir.parent / "tokenizer").is_dir():
        tok_dir = model_dir.parent / "tokenizer"
    if not tok_dir.is_dir():
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no tokenizer/ directory; save the model with "
            "save_model_dir(model, dir, tokenizer_dir=...) so generation can encode prompts"
        )
    return load_model_dir(model_dir, device=device, dtype=dtype), Tokenizer.from_dir(tok_dir)
