"""OpenAI's original GPT-2 release -> our ``GPT``.

The release directory (``models/124M`` etc.) holds ``hparams.json``, ``encoder.json``,
``vocab.bpe`` and a TensorFlow checkpoint ``model.ckpt.{index,data-00000-of-00001,meta}``. Tensors
are named ``model/h{i}/attn/c_attn/w`` and the projections are 1x1 convolutions stored as
``(1, in, out)``. The checkpoint is read by :mod:`gptforge.conversion.tf_checkpoint`, without
TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import plan_conversion
from gptforge.conversion.ours import our_tensor_spec, pad_vocab_rows, write_model_dir
from gptforge.conversion.tf_checkpoint import TFCheckpoint
from gptforge.conversion.tokenizer_files import load_tokenizer_from
from gptforge.conversion.weights import PlannedTensor, TensorInfo, atomic_dir
from gptforge.modeling import GPTConfig

__all__ = [
    "OPENAI_GPT2_WEIGHT_MAP",
    "conv1x1_to_linear",
    "import_openai",
    "normalize_openai_name",
    "openai_gpt2_config",
    "plan_openai_gpt2_to_ours",
]

# OpenAI names with "/" -> "." and "h{i}" -> "h.{i}" (see normalize_openai_name) -> ours.
OPENAI_GPT2_WEIGHT_MAP: dict[str, str | None] = {
    "model.wte": "wte.weight",
    "model.wpe": "wpe.weight",
    "model.h.{}.ln_1.g": "h.{}.ln_1.weight",
    "model.h.{}.ln_1.b": "h.{}.ln_1.bias",
    "model.h.{}.attn.c_attn.w": "h.{}.attn.c_attn.weight",
    "model.h.{}.attn.c_attn.b": "h.{}.attn.c_attn.bias",
    "model.h.{}.attn.c_proj.w": "h.{}.attn.c_proj.weight",
    "model.h.{}.attn.c_proj.b": "h.{}.attn.c_proj.bias",
    "model.h.{}.ln_2.g": "h.{}.ln_2.weight",
    "model.h.{}.ln_2.b": "h.{}.ln_2.bias",
    "model.h.{}.mlp.c_fc.w": "h.{}.mlp.c_fc.weight",
    "model.h.{}.mlp.c_fc.b": "h.{}.mlp.c_fc.bias",
    "model.h.{}.mlp.c_proj.w": "h.{}.mlp.c_proj.weight",
    "model.h.{}.mlp.c_proj.b": "h.{}.mlp.c_proj.bias",
    "model.ln_f.g": "ln_f.weight",
    "model.ln_f.b": "ln_f.bias",
}
_LAYER = re.compile(r"/h(\d+)/")


def normalize_openai_name(name: str) -> str:
    """``model/h3/attn/c_attn/w`` -> ``model.h.3.attn.c_attn.w`` (so ``{}`` templates apply)."""
    return _LAYER.sub(r"/h/\1/", name).replace("/", ".")


def conv1x1_to_linear(w: torch.Tensor) -> torch.Tensor:
    """OpenAI's 1x1 convolution kernel ``(1, in, out)`` -> ``nn.Linear`` weight ``(out, in)``."""
    return w.squeeze(0).t().contiguous()  # (out, in)


def openai_gpt2_config(hparams: Mapping[str, Any]) -> GPTConfig:
    """Our ``GPTConfig`` for OpenAI's ``hparams.json`` (GPT-2: tied head, biases, tanh GELU)."""
    try:
        return GPTConfig(
            block_size=int(hparams["n_ctx"]),
            vocab_size=int(hparams["n_vocab"]),
            n_layer=int(hparams["n_layer"]),
            n_head=int(hparams["n_head"]),
            n_embd=int(hparams["n_embd"]),
            bias=True,
            qkv_bias=True,
            tie_embeddings=True,
            gelu_approximate="tanh",
            norm_eps=1e-5,
        )
    except KeyError as e:
        raise ConversionError(
            f"hparams.json lacks {e.args[0]!r}; OpenAI's file has n_vocab, n_ctx, n_embd, n_head, n_layer"
        ) from e


def plan_openai_gpt2_to_ours(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: GPTConfig
) -> list[PlannedTensor]:
    """Plan OpenAI TF tensors (original names) -> our ``GPT`` tensors."""
    names = {normalize_openai_name(k): k for k in source}
    infos = {normalize_openai_name(k): v for k, v in source.items()}
    Vp = cfg.padded_vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 3:  # the four 1x1 convolution kernels
            return conv1x1_to_linear(t)
        return pad_vocab_rows(t, Vp) if target == "wte.weight" else t

    expected = our_tensor_spec(cfg, torch.float32)
    return plan_conversion(
        infos,
        lambda k: get(names[k]),
        OPENAI_GPT2_WEIGHT_MAP,
        expected,
        transform,
        what="OpenAI GPT-2 TensorFlow",
    )


def import_openai(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    tokenizer: bool = True,
) -> Path:
    """Convert OpenAI's GPT-2 release directory to one of our model directories.

    Args:
        model_dir: holds ``hparams.json``, ``model.ckpt.*`` and ``encoder.json`` + ``vocab.bpe``.
        out: our model directory to create.
        force: replace ``out`` if it exists.
        tokenizer: also build the GPT-2 tokenizer from ``encoder.json`` + ``vocab.bpe``.

    >>> import_openai("models/124M", "runs/gpt2-124m")  # doctest: +SKIP
    """
    d = Path(model_dir)
    hp = d / "hparams.json"
    if not hp.is_file():
        raise ConversionError(
            f"{str(hp)!r} not found; OpenAI's GPT-2 directory holds hparams.json and model.ckpt.*"
        )
    cfg = openai_gpt2_config(json.loads(hp.read_text()))
    ckpt = TFCheckpoint(d / "model.ckpt" if Path(f"{d / 'model.ckpt'}.index").is_file() else d)
    infos = {}
    for name, e in ckpt.entries.items():
        if e.dtype_name != "float32":
            raise ConversionError(
                f"tensor {name!r} has dtype {e.dtype_name!r}; OpenAI's GPT-2 stores float32"
            )
        infos[name] = TensorInfo(e.shape, torch.float32)
    tok = load_tokenizer_from(d) if tokenizer else None
    with atomic_dir(out, force) as tmp:
        write_model_dir(tmp, cfg, plan_openai_gpt2_to_ours(infos, ckpt.read, cfg))
        if tok is not None:
            tok.save(tmp / "tokenizer")
    return Path(out)
