"""Recognise checkpoints and load any of them as one of our models.

``detect_family`` tells which model family a checkpoint (path, key list or config) belongs to;
``detect_layout`` tells which on-disk layout a directory uses; ``load_any`` turns our run/model
directories, HF directories, Meta LLaMA directories and OpenAI GPT-2 directories into a ready
``(model, tokenizer)`` pair in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import materialize
from gptforge.conversion.weights import PlannedTensor, TensorInfo, WeightSource, read_tensor_infos
from gptforge.modeling.protocol import LanguageModel

__all__ = ["Family", "Layout", "detect_family", "detect_layout", "load_any", "model_from_tensors"]

Family = Literal["gpt2", "llama", "mmrec"]
Layout = Literal["ours", "hf", "meta", "openai", "gguf", "weights"]
FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mmrec")
_ARCH_TO_FAMILY = {"gpt": "gpt2", "llama": "llama", "mmrec": "mmrec"}
_HF_TO_FAMILY = {"gpt2": "gpt2", "llama": "llama"}
# Substrings of tensor names that identify a family in any of the layouts we read.
_KEY_MARKERS: tuple[tuple[str, str], ...] = (
    ("c_attn", "gpt2"),  # ours, HF and OpenAI GPT-2
    ("wte", "gpt2"),
    ("q_proj", "llama"),  # ours and HF Llama
    ("embed_tokens", "llama"),
    ("attention.wq", "llama"),  # Meta
    ("tok_embeddings", "llama"),
    ("attn_q.weight", "llama"),  # GGUF
    ("attn_qkv.weight", "gpt2"),
)


def detect_layout(path: str | os.PathLike[str]) -> Layout:
    """Which on-disk layout ``path`` uses.

    ``"ours"`` (``config.json`` with ``"arch"``), ``"hf"`` (``config.json`` with ``"model_type"``),
    ``"meta"`` (``params.json`` + ``consolidated.*.pth``), ``"openai"`` (``hparams.json`` +
    ``model.ckpt``), ``"gguf"`` (a ``.gguf`` file) or ``"weights"`` (a bare weights file).
    """
    p = Path(path)
    if p.is_file():
        return "gguf" if p.suffix == ".gguf" else "weights"
    if not p.is_dir():
        raise ConversionError(f"{str(p)!r} does not exist")
    cfg_path = p / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        if "arch" in cfg:
            return "ours"
        if "model_type" in cfg:
            return "hf"
    if (p / "params.json").is_file() and list(p.glob("consolidated.*.pth")):
        return "meta"
    if (p / "hparams.json").is_file() and list(p.glob("*.index")):
        return "openai"
    raise ConversionError(
        f"cannot tell what {str(p)!r} holds: expected a gptforge run/model directory (config.json "
        "with 'arch'), a Hugging Face directory (config.json with 'model_type'), a Meta LLaMA "
        "directory (params.json + consolidated.*.pth), OpenAI's GPT-2 release (hparams.json + "
        f"model.ckpt.*) or a .gguf file; found {sorted(x.name for x in p.iterdir())[:12]}"
    )


def _family_from_config(config: Mapping[str, Any]) -> str | None:
    if "arch" in config:
        return _ARCH_TO_FAMILY.get(str(config["arch"]), str(config["arch"]))
    if "model_type" in config:
        mt = str(config["model_type"])
        if mt not in _HF_TO_FAMILY:
            raise ConversionError(
                f"Hugging Face model_type {mt!r} is not supported; supported: {sorted(_HF_TO_FAMILY)}"
            )
        return _HF_TO_FAMILY[mt]
    if "dim" in config and "n_layers" in config:
        return "llama"  # Meta params.json
    if "n_vocab" in config and "n_ctx" in config:
        return "gpt2"  # OpenAI hparams.json
    return None


def detect_family(
    path_or_keys: str | os.PathLike[str] | Iterable[str], config: Mapping[str, Any] | None = None
) -> Family:
    """The model family of a checkpoint: ``"gpt2"``, ``"llama"`` or ``"mmrec"``.

    Args:
        path_or_keys: a checkpoint directory or weights file, or the tensor names of a state
            dict (any layout: ours, HF, Meta, OpenAI, GGUF).
        config: a config dict (ours, HF ``config.json``, Meta ``params.json`` or OpenAI
            ``hparams.json``); consulted first when given.

    >>> detect_family(["wte.weight", "h.0.attn.c_attn.weight"])
    'gpt2'
    >>> detect_family([], {"model_type": "llama"})
    'llama'
    """
    if config is not None:
        fam = _family_from_config(config)
        if fam is not None:
            return fam  # type: ignore[return-value]
    if isinstance(path_or_keys, (str, os.PathLike)):
        p = Path(path_or_keys)
        if p.is_dir():
            for name in ("config.json", "params.json", "hparams.json"):
                if (p / name).is_file():
                    fam = _family_from_config(json.loads((p / name).read_text()))
                    if fam is not None:
                        return fam  # type: ignore[return-value]
        if p.suffix == ".gguf":
            from gptforge.conversion.inspect import inspect_checkpoint

            return inspect_checkpoint(p).family  # type: ignore[return-value]
        keys: Iterable[str] = read_tensor_infos(p)
    else:
        keys = path_or_keys
    keys = list(keys)
    for marker, fam in _KEY_MARKERS:
        if any(marker in k for k in keys):
            return fam  # type: ignore[return-value]
    raise ConversionError(
        f"cannot tell the model family from {len(keys)} tensor names (e.g. {keys[:6]}); "
        f"supported families: {list(FAMILIES)}"
    )


def model_from_tensors(
    cfg: Any, plan: list[PlannedTensor] | Mapping[str, torch.Tensor]
) -> LanguageModel:
    """Build our model of ``cfg`` directly from converted tensors (no random init), in eval mode."""
    from gptforge.modeling import build_model

    sd = materialize(plan) if isinstance(plan, list) else dict(plan)
    with torch.device("meta"):
        model = build_model(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ConversionError(
            f"converted tensors do not fit {type(model).__name__}: missing {sorted(set(missing) - tied)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )
    if tied:
        model.tie_weights()  # type: ignore[operator]
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ConversionError(f"tensors {leftover[:8]} were not provided by the checkpoint")
    return model.eval()


def load_any(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> tuple[LanguageModel, Any]:
    """Load a model (and its tokenizer, when one is there) from any supported directory.

    Accepts our run/model directories, HF ``GPT2LMHeadModel``/``LlamaForCausalLM`` directories,
    Meta LLaMA directories and OpenAI's GPT-2 release; converts in memory.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; our ``Tokenizer`` or ``None`` when the
        directory has no tokenizer files.

    >>> model, tok = load_any("runs/hf")  # doctest: +SKIP
    """
    from gptforge.conversion.tokenizer_files import load_tokenizer_from

    p = Path(path)
    layout = detect_layout(p)
    if layout == "ours":
        from gptforge.modeling.io import load_model_dir

        model = load_model_dir(p, device=device, dtype=dtype)
    elif layout == "hf":
        from gptforge.conversion.hf import HF_ARCHITECTURES, read_hf_config

        hf_cfg = read_hf_config(p)
        _, reader, planner = HF_ARCHITECTURES[hf_cfg["model_type"]]
        cfg = reader(hf_cfg)
        with WeightSource(p) as src:
            model = model_from_tensors(cfg, planner(src.infos, src.get, cfg))
    elif layout == "meta":
        from gptforge.conversion.meta_llama import (
            load_meta_checkpoint,
            meta_llama_config,
            plan_meta_llama_to_ours,
        )

        params, sd = load_meta_checkpoint(p)
        infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
        cfg = meta_llama_config(params, infos)
        model = model_from_tensors(cfg, plan_meta_llama_to_ours(infos, sd.__getitem__, cfg))
    elif layout == "openai":
        from gptforge.conversion.openai_gpt2 import openai_gpt2_config, plan_openai_gpt2_to_ours
        from gptforge.conversion.tf_checkpoint import TFCheckpoint

        cfg = openai_gpt2_config(json.loads((p / "hparams.json").read_text()))
        ckpt = TFCheckpoint(p)
        infos = {n: TensorInfo(e.shape, torch.float32) for n, e in ckpt.entries.items()}
        model = model_from_tensors(cfg, plan_openai_gpt2_to_ours(infos, ckpt.read, cfg))
    else:
        raise ConversionError(
            f"load_any reads directories (ours, Hugging Face, Meta, OpenAI), not a {layout!r} file "
            f"{str(p)!r}; convert a GGUF file with llama.cpp's tools or point at the directory"
        )
    if layout != "ours":
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    try:
        tok = load_tokenizer_from(p)
    except ConversionError:
        tok = None
    return model, tok
