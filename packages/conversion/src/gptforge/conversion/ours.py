"""Our side of every conversion: tensor specs of gptforge models and model-directory I/O.

A model directory is what ``gptforge.modeling.io.save_model_dir`` writes: ``config.json``
(``config_to_dict``), ``model.safetensors`` (padded vocabulary rows, a tied head stored once under
the embedding's name) and ``tokenizer/``. Converters write it tensor by tensor with
:func:`write_model_dir` instead of building the model, so peak memory stays near one tensor.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.weights import PlannedTensor, TensorInfo, write_safetensors
from gptforge.modeling import build_model, config_from_dict, config_to_dict

__all__ = [
    "our_tensor_spec",
    "pad_vocab_rows",
    "read_model_config",
    "slice_vocab_rows",
    "write_model_dir",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def our_tensor_spec(cfg: Any, dtype: torch.dtype = torch.float32) -> dict[str, TensorInfo]:
    """Names and shapes of the tensors our model of ``cfg`` stores (tied weights once).

    Built on the meta device, so it costs no memory even for 7B presets.
    """
    with torch.device("meta"):
        model = build_model(cfg)
    spec = {
        name: TensorInfo(tuple(p.shape), dtype if p.is_floating_point() else p.dtype)
        for name, p in model.named_parameters()  # remove_duplicate=True: a tied head appears once
    }
    persistent = model.state_dict(keep_vars=True)
    for name, b in model.named_buffers():
        if name in persistent:
            spec[name] = TensorInfo(tuple(b.shape), b.dtype)
    return spec


def pad_vocab_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows to a ``(V, C)`` embedding or head so it has ``rows`` rows."""
    if w.size(0) > rows:
        raise ConversionError(
            f"vocabulary matrix has {w.size(0)} rows, more than the {rows} allowed"
        )
    return F.pad(w, (0, 0, 0, rows - w.size(0))) if w.size(0) < rows else w  # (rows, C)


def slice_vocab_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """Keep the first ``rows`` rows of a padded ``(Vp, C)`` embedding or head."""
    if w.size(0) < rows:
        raise ConversionError(
            f"vocabulary matrix has {w.size(0)} rows, fewer than vocab_size={rows}"
        )
    return w[:rows]  # (V, C)


def read_model_config(directory: str | os.PathLike[str]) -> Any:
    """The config of one of our model directories, with an error naming the file on failure."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ConversionError(
            f"{str(path)!r} not found: a gptforge model/run directory holds {CONFIG_FILE}, "
            f"{WEIGHTS_FILE} and {TOKENIZER_DIR}/ (written by `gptforge train`)"
        )
    raw = json.loads(path.read_text())
    if "arch" not in raw:
        raise ConversionError(
            f"{str(path)!r} has no 'arch' key, so it is not a gptforge config (a Hugging Face "
            "directory? use `gptforge convert from-hf`)"
        )
    try:
        return config_from_dict(raw)
    except ValueError as e:
        raise ConversionError(f"{str(path)!r}: {e}") from e


def write_model_dir(
    directory: Path,
    cfg: Any,
    tensors: Iterable[PlannedTensor],
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Write one of our model directories from planned tensors (into an existing directory).

    Args:
        directory: target (normally the temporary directory of :func:`atomic_dir`).
        cfg: the model config (saved with ``config_to_dict``).
        tensors: the model's tensors, as :func:`our_tensor_spec` lists them.
        tokenizer_dir: copied to ``directory / "tokenizer"`` when given.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = config_to_dict(cfg)
    meta = {"format": "pt", "arch": str(config["arch"])}
    write_safetensors(directory / WEIGHTS_FILE, tensors, metadata=meta)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, directory / TOKENIZER_DIR, dirs_exist_ok=True)
