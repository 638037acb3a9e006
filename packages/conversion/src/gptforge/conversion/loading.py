"""Load any checkpoint gptforge reads as one of our models, ready in memory.

``load_any`` is the one model loader of the project: ``generate``, ``chat``, the services, the
CLI's converters and ``train --init-from`` call it. It takes our run/model directories, HF
directories, Meta LLaMA directories, OpenAI's GPT-2 release, nanoGPT ``ckpt.pt`` files and the
LLMs-from-scratch book's ``GPTModel`` state dicts and GGUF files gptforge wrote; what a path holds is decided by
:mod:`gptforge.conversion.detect`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from gptforge.conversion.detect import (
    Family,
    Layout,
    detect_family,
    detect_layout,
    find_model_dir,
    read_json,
)
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import materialize
from gptforge.conversion.peft_adapter import is_adapter_dir, load_adapted, lora_base_dir
from gptforge.conversion.weights import PlannedTensor, TensorInfo, WeightSource, read_tensor_infos
from gptforge.modeling.protocol import LanguageModel

__all__ = [
    "Family",
    "Layout",
    "Loaded",
    "detect_family",
    "detect_layout",
    "load_any",
    "model_from_tensors",
]


@dataclass(frozen=True)
class Loaded:
    """Where :func:`load_any` found the model and what it was."""

    path: Path  # the model directory or file actually read (a run's ``pretrain/``, ...)
    layout: Layout
    family: str
    tokenizer_dir: Path | None  # where the tokenizer came from, when there is one


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
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    n_head: int | None = None,
    require_tokenizer: bool = False,
) -> tuple[LanguageModel, Any, Loaded]:
    """Load a model, its tokenizer when there is one, and what was loaded, from any checkpoint.

    Args:
        path: a run directory (its ``finetune/``, ``pretrain/`` or ``model/`` is used), one of our
            model directories, a HF ``GPT2LMHeadModel``/``LlamaForCausalLM`` directory, a Meta
            LLaMA or OpenAI GPT-2 directory, a nanoGPT / book ``GPTModel`` ``.pt`` file, or a
            ``.gguf`` file of the ``gpt2`` / ``llama`` architecture (dequantized, tokenizer included).
        device: where the weights go (``"auto"`` picks CUDA, then MPS, then the CPU).
        dtype: cast floating weights (default: as stored).
        n_head: heads, for a bare state dict that does not store them.
        require_tokenizer: fail (naming what was looked for) when no tokenizer is found, as
            generation needs one.

    Returns:
        ``(model, tokenizer, info)``: the model in eval mode, our ``Tokenizer`` or ``None`` when
        the checkpoint has none, and a :class:`Loaded`.

    >>> model, tok, info = load_any("runs/demo")  # doctest: +SKIP
    >>> info.layout, info.path  # doctest: +SKIP
    ('ours', PosixPath('runs/demo/pretrain'))
    """
    from gptforge.modeling.device import resolve_device

    device = resolve_device(device)
    if is_adapter_dir(path) and not (Path(path) / "config.json").is_file():
        loaded = _load_lora_run(Path(path), device, dtype)
        if loaded[1] is None and require_tokenizer:
            raise ConversionError(
                f"no tokenizer found for the LoRA run {str(path)!r}: looked for tokenizer/ in it "
                "and in its base/; copy the tokenizer the run was fine-tuned with there"
            )
        return loaded
    p = find_model_dir(path)
    layout = detect_layout(p)
    if layout == "gguf":  # the tokenizer travels inside the file
        from gptforge.conversion.gguf_import import read_gguf

        cfg, sd, gguf_tok = read_gguf(p)
        model = model_from_tensors(cfg, sd)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        return model, gguf_tok, Loaded(p, layout, detect_family(p), None)
    tok, tok_dir = _tokenizer(p, layout)
    if tok is None and require_tokenizer:
        raise ConversionError(
            f"no tokenizer found for {str(p)!r}: looked for tokenizer/ or tokenizer.json (and GPT-2's "
            "vocab.json + merges.txt) beside it and in its run directory; copy the tokenizer the "
            "model was trained with there (nanoGPT and book imports: `gptforge convert from-torch "
            "... --tokenizer DIR`)"
        )
    if layout == "ours":  # straight onto the device: no second copy of the weights
        model = _load_ours(p, device, dtype)
    else:
        model = _LOADERS[layout](p, n_head)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model, tok, Loaded(p, layout, detect_family(p) if p.is_dir() else "gpt2", tok_dir)


def _load_lora_run(
    run: Path, device: torch.device, dtype: torch.dtype | None
) -> tuple[LanguageModel, Any, Loaded]:
    """An unmerged LoRA run: its base model with the run's adapters merged in."""
    from gptforge.tokenizer import Tokenizer

    model = cast(LanguageModel, load_adapted(run, device=device, dtype=dtype))
    base = lora_base_dir(run)
    # A checkpoint of the run holds no tokenizer: the base's is the run's (template tokens too).
    tok_dir = next((d for d in (run / "tokenizer", base / "tokenizer") if d.is_dir()), None)
    tok = Tokenizer.from_dir(tok_dir) if tok_dir is not None else None
    return model, tok, Loaded(run, "lora", detect_family(base), tok_dir)


def _load_ours(p: Path, device: torch.device, dtype: torch.dtype | None) -> LanguageModel:
    from gptforge.conversion.ours import read_model_config
    from gptforge.modeling.io import WEIGHTS_FILE, load_model_dir

    read_model_config(p)  # a bad config.json is one line naming it
    if (p / WEIGHTS_FILE).is_file():
        read_tensor_infos(p / WEIGHTS_FILE)  # so is a damaged weights file
    return load_model_dir(p, device=device, dtype=dtype)


def _load_hf(p: Path, _n_head: int | None) -> LanguageModel:
    from gptforge.conversion.hf import HF_ARCHITECTURES, read_hf_config

    hf_cfg = read_hf_config(p)
    _, reader, planner = HF_ARCHITECTURES[hf_cfg["model_type"]]
    cfg = reader(hf_cfg)
    with WeightSource(p) as src:
        return model_from_tensors(cfg, planner(src.infos, src.get, cfg))


def _load_meta(p: Path, _n_head: int | None) -> LanguageModel:
    from gptforge.conversion.meta_llama import (
        load_meta_checkpoint,
        meta_llama_config,
        plan_meta_llama_to_ours,
    )

    params, sd = load_meta_checkpoint(p)
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    cfg = meta_llama_config(params, infos)
    return model_from_tensors(cfg, plan_meta_llama_to_ours(infos, sd.__getitem__, cfg))


def _load_openai(p: Path, _n_head: int | None) -> LanguageModel:
    from gptforge.conversion.openai_gpt2 import openai_gpt2_config, plan_openai_gpt2_to_ours
    from gptforge.conversion.tf_checkpoint import TFCheckpoint

    cfg = openai_gpt2_config(read_json(p / "hparams.json"))
    ckpt = TFCheckpoint(p)
    infos = {n: TensorInfo(e.shape, torch.float32) for n, e in ckpt.entries.items()}
    return model_from_tensors(cfg, plan_openai_gpt2_to_ours(infos, ckpt.read, cfg))


def _load_weights(p: Path, n_head: int | None) -> LanguageModel:
    from gptforge.conversion.pytorch_gpt import read_pytorch_gpt

    if p.suffix == ".safetensors":
        raise ConversionError(
            f"{str(p)!r} is a bare safetensors file with no config; point at the directory "
            "that holds it with its config.json"
        )
    cfg, sd, _ = read_pytorch_gpt(p, n_head=n_head)
    return model_from_tensors(cfg, sd)


_LOADERS = {
    "hf": _load_hf,
    "meta": _load_meta,
    "openai": _load_openai,
    "weights": _load_weights,
}


def _tokenizer(p: Path, layout: Layout) -> tuple[Any, Path | None]:
    """The tokenizer beside the model: its own dir, the run's ``tokenizer/``, or HF/OpenAI files."""
    from gptforge.conversion.tokenizer_files import find_tokenizer_dir, load_tokenizer_from

    base = p if p.is_dir() else p.parent
    for cand in (base, base.parent) if layout == "ours" else (base,):
        try:
            return load_tokenizer_from(cand), find_tokenizer_dir(cand) or cand
        except ConversionError:
            continue
    return None, None
