"""Directory-level conversion between our run/model directories and Hugging Face directories.

``export_hf`` writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer files so that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load the
result; ``import_hf`` reads any ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` directory
(``model.safetensors`` or ``pytorch_model.bin``, sharded or not) into one of our model
directories. Both stream tensor by tensor and write atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from gptforge.conversion.detect import require_ours
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.hf_gpt2 import (
    gpt_config_to_hf,
    hf_gpt2_config,
    plan_hf_gpt2_to_ours,
    plan_ours_to_hf_gpt2,
)
from gptforge.conversion.hf_llama import (
    hf_llama_config,
    llama_config_to_hf,
    plan_hf_llama_to_ours,
    plan_ours_to_hf_llama,
)
from gptforge.conversion.ours import WEIGHTS_FILE, read_model_config, write_model_dir
from gptforge.conversion.tokenizer_files import (
    chat_template_of,
    copy_tokenizer_to_hf,
    find_tokenizer_dir,
    load_tokenizer_from,
)
from gptforge.conversion.weights import (
    PlannedTensor,
    TensorInfo,
    WeightSource,
    atomic_dir,
    write_safetensors,
)

__all__ = ["DTYPES", "HF_ARCHITECTURES", "export_hf", "import_hf", "read_hf_config"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
Planner = Callable[
    [Mapping[str, TensorInfo], Callable[[str], torch.Tensor], Any], list[PlannedTensor]
]
# HF model_type -> (our arch, config reader, planner HF -> ours)
HF_ARCHITECTURES: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any], Planner]] = {
    "gpt2": ("gpt", hf_gpt2_config, plan_hf_gpt2_to_ours),
    "llama": ("llama", hf_llama_config, plan_hf_llama_to_ours),
}
# our arch -> (HF config writer, planner ours -> HF)
EXPORTERS: dict[str, tuple[Callable[..., dict[str, Any]], Planner]] = {
    "gpt": (gpt_config_to_hf, plan_ours_to_hf_gpt2),
    "llama": (llama_config_to_hf, plan_ours_to_hf_llama),
}


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ConversionError(f"dtype {name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def _cast(plan: list[PlannedTensor], dtype: torch.dtype | None) -> list[PlannedTensor]:
    if dtype is None:
        return plan

    def cast(make: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: make().to(dtype)

    return [
        PlannedTensor(t.name, t.shape, dtype, cast(t.produce)) if t.dtype.is_floating_point else t
        for t in plan
    ]


def _dtype_name(plan: list[PlannedTensor]) -> str:
    dt = next((t.dtype for t in plan if t.dtype.is_floating_point), torch.float32)
    return str(dt).removeprefix("torch.")


def read_hf_config(hf_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a HF model directory, checked to be an architecture we convert."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{str(path)!r} not found; a Hugging Face model directory has config.json"
        )
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") not in HF_ARCHITECTURES:
        raise ConversionError(
            f"{str(path)!r}: model_type={cfg.get('model_type')!r} (architectures "
            f"{cfg.get('architectures')!r}) is not supported; supported model types: {sorted(HF_ARCHITECTURES)}"
        )
    return cfg


def export_hf(
    ckpt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    tokenizer: bool = True,
    dtype: str | None = None,
) -> Path:
    """Export one of our model/run directories to a Hugging Face model directory.

    Args:
        ckpt: our directory (``config.json`` + ``model.safetensors`` + ``tokenizer/``).
        out: the HF directory to create.
        force: replace ``out`` if it exists.
        tokenizer: also write the tokenizer files (an error if ``ckpt`` has none).
        dtype: ``float32``/``float16``/``bfloat16`` to cast the weights; default: as saved.

    >>> export_hf("runs/demo/pretrain", "runs/hf")  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("runs/hf")  # doctest: +SKIP
    """
    src_dir = require_ours(ckpt, "convert to-hf")
    cfg = read_model_config(src_dir)
    if cfg.arch not in EXPORTERS:
        raise ConversionError(
            f"{str(src_dir)!r} holds a {cfg.arch!r} model; Hugging Face export supports {sorted(EXPORTERS)}"
        )
    config_writer, planner = EXPORTERS[cfg.arch]
    tok_dir = find_tokenizer_dir(src_dir)
    if tokenizer and tok_dir is None:
        raise ConversionError(
            f"{str(src_dir)!r} has no tokenizer/ directory with tokenizer.json; pass --no-tokenizer "
            "(tokenizer=False) to export the weights alone"
        )
    eot = None
    if tokenizer and tok_dir is not None:
        tok = load_tokenizer_from(tok_dir)
        eot = tok.special_tokens.get("<|endoftext|>")
    with atomic_dir(out, force) as tmp, WeightSource(src_dir / WEIGHTS_FILE) as src:
        plan = _cast(planner(src.infos, src.get, cfg), _dtype(dtype))
        write_safetensors(tmp / "model.safetensors", plan, metadata={"format": "pt"})
        hf_cfg = config_writer(cfg, bos_token_id=eot, eos_token_id=eot, dtype=_dtype_name(plan))
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        gen = {"_from_model_config": True, "bos_token_id": eot, "eos_token_id": eot}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer and tok_dir is not None:
            copy_tokenizer_to_hf(tok_dir, tmp, chat_template_of(src_dir)[1])
    return Path(out)


def import_hf(
    hf_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    tokenizer: bool = True,
    dtype: str | None = None,
) -> Path:
    """Import a Hugging Face ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` directory as our model dir.

    Args:
        hf_dir: the HF directory (``config.json`` + weights, sharded or not + tokenizer files).
        out: our model directory to create.
        force: replace ``out`` if it exists.
        tokenizer: also convert the tokenizer (an error if ``hf_dir`` has no tokenizer files).
        dtype: cast the weights; default: as stored.
    """
    src_dir = Path(hf_dir)
    hf_cfg = read_hf_config(src_dir)
    _, config_reader, planner = HF_ARCHITECTURES[hf_cfg["model_type"]]
    cfg = config_reader(hf_cfg)
    tok = load_tokenizer_from(src_dir) if tokenizer else None
    if tok is not None and tok.n_vocab > cfg.vocab_size:
        raise ConversionError(
            f"the tokenizer of {str(src_dir)!r} has {tok.n_vocab} ids but the model's vocab_size is "
            f"{cfg.vocab_size}; ids past the embedding would crash the model"
        )
    with atomic_dir(out, force) as tmp, WeightSource(src_dir) as src:
        plan = _cast(planner(src.infos, src.get, cfg), _dtype(dtype))
        write_model_dir(tmp, cfg, plan)
        if tok is not None:
            tok.save(tmp / "tokenizer")
    return Path(out)
