"""LoRA adapters in Hugging Face PEFT's layout, and merging them into a model directory.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with the
tensor names PEFT gives the Hugging Face export of the base model
(``base_model.model.transformer.h.0.attn.c_attn.lora_A.weight``), so
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<HF export of the base>), DIR)``
computes what gptforge computes. Module names go through the HF weight maps of
:mod:`gptforge.conversion.hf_gpt2` and :mod:`gptforge.conversion.hf_llama`.

>>> save_adapter(model, "runs/sft-lora", base="runs/sft-lora/base")  # doctest: +SKIP
>>> merge_adapter("runs/sft-lora/base", "runs/sft-lora", "runs/sft-merged")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.hf_gpt2 import HF_GPT2_WEIGHT_MAP
from gptforge.conversion.hf_llama import HF_LLAMA_WEIGHT_MAP
from gptforge.conversion.mapping import invert, map_key
from gptforge.fileio import atomic_write, atomic_write_json
from gptforge.modeling.lora import (
    LoraConfig,
    add_trainable_tokens,
    apply_lora,
    lora_modules,
    merge_lora,
    trainable_tokens,
)
from torch import nn

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PEFT_PREFIX",
    "is_adapter_dir",
    "load_adapted",
    "load_adapter",
    "lora_base_dir",
    "merge_adapter",
    "save_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"  # PEFT's trainable token rows
_HF_MAPS = {"gpt": HF_GPT2_WEIGHT_MAP, "llama": HF_LLAMA_WEIGHT_MAP}


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a PEFT adapter (``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _arch(model: nn.Module) -> str:
    arch = getattr(model.config, "arch", None)
    if arch not in _HF_MAPS:
        raise ConversionError(
            f"PEFT adapters are written for the Hugging Face families {sorted(_HF_MAPS)}; this "
            f"model is {arch!r}. Merge the adapters instead (--merge) to keep the weights"
        )
    return str(arch)


def hf_module_name(arch: str, name: str) -> str:
    """Our module name -> the Hugging Face model's (``h.0.attn.c_attn`` ->
    ``transformer.h.0.attn.c_attn``)."""
    hf_key = map_key(f"{name}.weight", invert(_HF_MAPS[arch]), "gptforge")
    assert hf_key is not None  # every weight of ours has an HF name
    return hf_key.removesuffix(".weight")


def our_module_name(arch: str, hf_name: str) -> str:
    """The reverse of :func:`hf_module_name`."""
    key = map_key(f"{hf_name}.weight", _HF_MAPS[arch], "PEFT adapter")
    if key is None:
        raise ConversionError(f"adapter tensor for {hf_name!r} targets a dropped HF tensor")
    return key.removesuffix(".weight")


def save_adapter(model: nn.Module, out: str | os.PathLike[str], *, base: str = "") -> Path:
    """Write the adapters of ``model`` (see :func:`gptforge.modeling.lora.apply_lora`) as a
    PEFT adapter directory ``out`` (created if needed; other files in it are left alone).

    Args:
        model: An adapted GPT or LLaMA model.
        out: The directory to write ``adapter_config.json`` and ``adapter_model.safetensors`` to.
        base: ``base_model_name_or_path`` recorded for PEFT (the base model's HF export).
    """
    from safetensors.torch import save_file

    arch, modules = _arch(model), lora_modules(model)
    if not modules:
        raise ConversionError("the model has no LoRA adapters to save; call apply_lora first")
    model_config: Any = model.config
    vocab = int(model_config.vocab_size)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        prefix = PEFT_PREFIX + hf_module_name(arch, name)
        b = m.lora_B.weight.detach()
        if name == "lm_head":  # our head has padded vocabulary rows; the HF export has none
            b = b[:vocab]
        tensors[f"{prefix}.lora_A.weight"] = m.lora_A.weight.detach().float().cpu().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.float().cpu().contiguous()
    token_indices = {}
    for name, rows in trainable_tokens(model).items():
        hf_name = hf_module_name(arch, name)
        tensors[PEFT_PREFIX + hf_name + TOKENS_SUFFIX] = rows.token_rows.detach().float().cpu()
        token_indices[hf_name.rpartition(".")[2]] = rows.token_ids.tolist()
    first = next(iter(modules.values()))
    rank = first.lora_A.out_features
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    # The last two name components select the same layers in the HF model (PEFT matches suffixes).
    targets = sorted({".".join(n.split(".")[-2:]) if "." in n else n for n in modules})
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": first.scaling * rank,
        "lora_dropout": dropout,
        "target_modules": targets,
        "fan_in_fan_out": arch == "gpt",  # GPT-2's HF projections are Conv1D (in, out)
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "trainable_token_indices": token_indices or None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        out_dir / ADAPTER_WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
    atomic_write_json(out_dir / ADAPTER_CONFIG, config)
    return out_dir


def load_adapter(model: nn.Module, adapter: str | os.PathLike[str]) -> nn.Module:
    """Adapt ``model`` (in place) with the PEFT adapter directory ``adapter``.

    Raises:
        ConversionError: naming the file or tensor that does not fit the model.
    """
    from safetensors.torch import load_file

    arch, adapter_dir = _arch(model), Path(adapter)
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
        tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except (OSError, ValueError) as exc:
        raise ConversionError(
            f"{str(adapter_dir)!r} is not a readable PEFT adapter directory ({exc}); it needs "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        ) from exc
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("rank_pattern"):
        raise ConversionError(
            f"{adapter_dir / ADAPTER_CONFIG} describes {config.get('peft_type')!r} adapters with "
            "options gptforge does not read; only plain LoRA (no DoRA, no per-layer ranks) merges"
        )
    rows = {k: tensors.pop(k) for k in list(tensors) if k.endswith(TOKENS_SUFFIX)}
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        hf_name, _, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        by_module.setdefault(our_module_name(arch, hf_name), {})[part] = value
    lora = LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]))
    apply_lora(model, lora, names=sorted(by_module))
    for name, m in lora_modules(model).items():
        parts = by_module[name]
        b = parts["B.weight"]
        if b.shape[0] < m.out_features:  # the head's padded vocabulary rows
            b = torch.cat([b, b.new_zeros(m.out_features - b.shape[0], b.shape[1])])
        if parts["A.weight"].shape != m.lora_A.weight.shape or b.shape != m.lora_B.weight.shape:
            raise ConversionError(
                f"adapter for {name!r} has shapes {tuple(parts['A.weight'].shape)} / "
                f"{tuple(parts['B.weight'].shape)}, which do not fit the model's layer "
                f"({m.in_features} in, {m.out_features} out); was it trained on another base?"
            )
        with torch.no_grad():
            m.lora_A.weight.copy_(parts["A.weight"])
            m.lora_B.weight.copy_(b)
    for key, value in rows.items():
        _load_token_rows(model, arch, key, value, config.get("trainable_token_indices"))
    return model


def _load_token_rows(
    model: nn.Module, arch: str, key: str, rows: torch.Tensor, indices: Any
) -> None:
    """Put PEFT's trainable token rows ``key`` into ``model`` (see ``add_trainable_tokens``)."""
    hf_name = key.removeprefix(PEFT_PREFIX).removesuffix(TOKENS_SUFFIX)
    name = our_module_name(arch, hf_name)
    if isinstance(indices, dict):  # {module name: ids}, PEFT matching the name's last part
        indices = next((v for k, v in indices.items() if f".{hf_name}".endswith(f".{k}")), None)
    if name != getattr(model, "token_embedding_name", "wte") or not indices:
        raise ConversionError(
            f"adapter tensor {key!r} gives trainable rows of {hf_name!r} without their token "
            "ids in trainable_token_indices, or for a module that is not the token embedding"
        )
    vocab = int(cast(Any, model).config.vocab_size)
    width = cast(Any, model).get_submodule(name).embedding_dim
    if rows.shape != (len(indices), width) or not 0 <= min(indices) <= max(indices) < vocab:
        raise ConversionError(
            f"adapter tensor {key!r} holds rows {tuple(rows.shape)} for token ids up to "
            f"{max(indices)}, which do not fit the model ({vocab} tokens of width {width}); "
            "was it trained on another base?"
        )
    tokens = add_trainable_tokens(model, [int(i) for i in indices])
    with torch.no_grad():
        tokens.token_rows.copy_(rows)


def lora_base_dir(run: str | os.PathLike[str]) -> Path:
    """The frozen base of a LoRA run: ``RUN/base``, or for one of the run's checkpoints
    (``RUN/checkpoints/step_*``, ``best``, ``last``) the run's ``base``."""
    run_dir = Path(run)
    base = run_dir / "base"
    if not base.is_dir():
        parent = run_dir.resolve().parent
        if parent.name == "checkpoints" and (parent.parent / "base").is_dir():
            return parent.parent / "base"
    return base


def load_adapted(
    run: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A LoRA run's model (``RUN/base`` with the adapters of ``RUN`` merged), in eval mode.

    >>> model = load_adapted("runs/sft-lora")  # doctest: +SKIP
    """
    from gptforge.modeling.io import load_model_dir

    base = lora_base_dir(run)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(run)!r} holds LoRA adapters but no base model under base/; merge them onto "
            "their base with `gptforge convert merge-lora --run RUN --base BASE_DIR --out DIR`"
        )
    # LoRA wraps the model's nn.Linear modules, so it works on the module side.
    model = merge_lora(
        load_adapter(cast(nn.Module, load_model_dir(base, dtype=torch.float32)), run)
    )
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def merge_adapter(
    base: str | os.PathLike[str], adapter: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Path:
    """Write ``out``: the model directory ``base`` with the adapters of ``adapter`` folded in
    (a plain model directory that exports to HF and GGUF like any run).

    >>> merge_adapter("runs/sft-lora/base", "runs/sft-lora", "runs/sft-merged")  # doctest: +SKIP
    """
    from gptforge.modeling.io import load_model_dir, save_model_dir

    base_dir = Path(base)
    model = load_model_dir(base_dir, device="cpu", dtype=torch.float32)
    merge_lora(load_adapter(cast(nn.Module, model), adapter))
    tok = base_dir / "tokenizer"
    return save_model_dir(model, Path(out), tokenizer_dir=tok if tok.is_dir() else None)
