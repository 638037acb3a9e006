"""Recognise a checkpoint: which on-disk layout it uses and which model family it holds.

The one detector of the project: :func:`find_model_dir` resolves a run directory to the model
directory inside it, :func:`detect_layout` names the layout of a path and :func:`detect_family`
the family. ``inspect``, ``load_any`` and every converter ask here; nothing here loads tensors
except the names and shapes of a bare weights file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from gptforge.conversion.errors import ConversionError

__all__ = [
    "FAMILIES",
    "GGUF_FAMILIES",
    "MODEL_SUBDIRS",
    "Family",
    "Layout",
    "detect_family",
    "detect_layout",
    "find_model_dir",
    "require_ours",
    "gguf_architecture",
    "read_json",
]

Family = Literal["gpt2", "llama", "mmrec"]
Layout = Literal["ours", "hf", "meta", "openai", "gguf", "weights", "lora"]
FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mmrec")
#: GGUF ``general.architecture`` values gptforge writes and reads back.
GGUF_FAMILIES = {"gpt2": "gpt2", "llama": "llama"}
#: Where a run directory keeps its model directory, in the order they are tried.
MODEL_SUBDIRS = ("", "finetune", "pretrain", "model")
_ARCH_TO_FAMILY = {"gpt": "gpt2", "llama": "llama", "mmrec": "mmrec"}
_HF_TO_FAMILY = {"gpt2": "gpt2", "llama": "llama"}
# Substrings of tensor names that identify a family in any of the layouts we read.
_KEY_MARKERS: tuple[tuple[str, str], ...] = (
    ("c_attn", "gpt2"),  # ours, HF, nanoGPT and OpenAI GPT-2
    ("wte", "gpt2"),
    ("trf_blocks", "gpt2"),  # the LLMs-from-scratch book's GPTModel
    ("q_proj", "llama"),  # ours and HF Llama
    ("embed_tokens", "llama"),
    ("attention.wq", "llama"),  # Meta
    ("tok_embeddings", "llama"),
    ("attn_q.weight", "llama"),  # GGUF
    ("attn_qkv.weight", "gpt2"),
)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a damaged file is one error naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(
            f"cannot read {str(path)!r}: {e}; restore the file or write it again"
        ) from e
    if not isinstance(value, dict):
        raise ConversionError(f"{str(path)!r} holds {type(value).__name__}, not a JSON object")
    return value


def _config_kind(directory: Path) -> str | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    cfg = read_json(path)
    return "ours" if "arch" in cfg else "hf" if "model_type" in cfg else None


def find_model_dir(ckpt: str | os.PathLike[str]) -> Path:
    """The model directory for ``ckpt``: a file or model directory itself, or the first of
    ``RUN/{,finetune,pretrain,model}`` that holds a model.

    >>> find_model_dir("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/pretrain')
    """
    root = Path(ckpt)
    if not root.exists():
        raise ConversionError(
            f"--ckpt {str(root)!r} does not exist; pass a run directory written by `gptforge "
            "train`, a model directory (config.json + model.safetensors), a Hugging Face, Meta or "
            "OpenAI directory, or a weights file"
        )
    if root.is_file():
        return root
    for sub in MODEL_SUBDIRS:
        if (root / sub).is_dir() and _config_kind(root / sub) is not None:
            return root / sub
    return root  # detect_layout names what it found there


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (read from its header only)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:  # the reader raises these on damaged files
        raise ConversionError(f"{str(path)!r} is not a readable GGUF file: {e}") from e
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ConversionError(f"{str(path)!r} has no general.architecture key")
    return str(field.contents())


def detect_layout(path: str | os.PathLike[str]) -> Layout:
    """Which on-disk layout ``path`` uses.

    ``"ours"`` (``config.json`` with ``"arch"``), ``"hf"`` (``config.json`` with ``"model_type"``),
    ``"meta"`` (``params.json`` + ``consolidated.*.pth``), ``"openai"`` (``hparams.json`` +
    ``model.ckpt``), ``"gguf"`` (a ``.gguf`` file) or ``"weights"`` (a bare weights file:
    ``.safetensors``, ``.bin``, ``.pt``, ``.pth``, ``.ckpt``, e.g. nanoGPT's ``ckpt.pt``).
    """
    p = Path(path)
    if p.is_file():
        return "gguf" if p.suffix == ".gguf" else "weights"
    if not p.is_dir():
        raise ConversionError(f"{str(p)!r} does not exist")
    kind = _config_kind(p)
    if kind is not None:
        return kind  # type: ignore[return-value]
    if (p / "params.json").is_file() and list(p.glob("consolidated.*.pth")):
        return "meta"
    if (p / "hparams.json").is_file() and list(p.glob("*.index")):
        return "openai"
    if (p / "adapter_config.json").is_file():
        raise ConversionError(
            f"{str(p)!r} holds LoRA adapters, not a whole model; fold them into their base first: "
            f"gptforge convert merge-lora --run {p} --out MERGED_DIR (chat and generate read the "
            "run as it is)"
        )
    raise ConversionError(
        f"cannot tell what {str(p)!r} holds: expected a gptforge run/model directory (config.json "
        "with 'arch'), a Hugging Face directory (config.json with 'model_type'), a Meta LLaMA "
        "directory (params.json + consolidated.*.pth), OpenAI's GPT-2 release (hparams.json + "
        "model.ckpt.*), a weights file (.safetensors/.bin/.pt/.pth, nanoGPT's ckpt.pt) or a "
        f".gguf file; found {sorted(x.name for x in p.iterdir())[:12]}"
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
            dict (any layout: ours, HF, Meta, OpenAI, nanoGPT, the book's GPTModel, GGUF).
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
                    fam = _family_from_config(read_json(p / name))
                    if fam is not None:
                        return fam  # type: ignore[return-value]
        if p.suffix == ".gguf":
            arch = gguf_architecture(p)
            if arch not in GGUF_FAMILIES:
                raise ConversionError(
                    f"{str(p)!r} is a GGUF file of architecture {arch!r}, which gptforge cannot "
                    f"load; it reads GGUF architectures {sorted(GGUF_FAMILIES)}"
                )
            return GGUF_FAMILIES[arch]  # type: ignore[return-value]
        from gptforge.conversion.weights import read_tensor_infos

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


#: The verb that reads each foreign layout, for errors of verbs that take our directories only.
_IMPORT_VERB = {
    "hf": "gptforge convert from-hf --hf DIR --out RUN",
    "meta": "gptforge convert from-meta --dir DIR --out RUN",
    "openai": "gptforge convert from-openai --dir DIR --out RUN",
    "weights": "gptforge convert from-torch --ckpt FILE --out RUN",
    "gguf": "gptforge convert from-gguf --gguf FILE --out RUN",
}


def require_ours(path: str | os.PathLike[str], verb: str) -> Path:
    """The gptforge model directory under ``path``, or one line saying how to get one.

    Args:
        path: a run or model directory (or what the user passed instead).
        verb: the command that needs it, for the message (``"convert to-hf"``).
    """
    p = find_model_dir(path)
    layout = detect_layout(p)
    if layout == "ours":
        return p
    raise ConversionError(
        f"`gptforge {verb}` reads a gptforge run or model directory; {str(p)!r} is a {layout!r} "
        f"checkpoint: import it first with `{_IMPORT_VERB[layout]}`"
    )
