"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer/``).

This is what ``train`` writes at the top of a run directory and what sampling, conversion and
the services read. Every file is written to a temporary name in the same directory and moved
into place with ``os.replace``, so a reader never sees a half-written model.

``model.safetensors`` holds the model's ``state_dict`` as allocated: embedding and LM-head rows
are ``config.padded_vocab_size`` long (slice ``[:config.vocab_size]`` when exporting), and a tied
LM head is stored once, under the token embedding's name (HF convention).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from gptforge.fileio import atomic_dir, atomic_write
from gptforge.modeling.device import resolve_device
from gptforge.modeling.protocol import LanguageModel
from gptforge.modeling.registry import build_model, config_from_dict, config_to_dict
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def _unique_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """``state_dict`` with each shared tensor once, under the first name it appears with."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def save_model_dir(
    model: LanguageModel, directory: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and optionally a copy of ``tokenizer/``.

    Args:
        model: any registered model (it has ``model.config``).
        directory: created if missing; existing files of the same names are replaced.
        tokenizer_dir: a tokenizer directory to copy into ``directory / "tokenizer"``.

    Returns:
        The model directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config_to_dict(model.config)
    tensors = _unique_state_dict(model)
    meta = {"format": "pt", "arch": str(config["arch"])}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata=meta))
    atomic_write(
        directory / CONFIG_FILE,
        lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"),
    )
    if tokenizer_dir is not None:
        _copy_tokenizer(Path(tokenizer_dir), directory / TOKENIZER_DIR)
    return directory


def _copy_tokenizer(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"tokenizer_dir {str(src)!r} is not a directory")
    if dst.exists() and (src.resolve() == dst.resolve() or _same_files(src, dst)):
        return  # a run saves its model dir often; its tokenizer is written once, never swapped
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def _same_files(a: Path, b: Path) -> bool:
    """Whether two directories hold the same file names with the same bytes (tokenizers: small)."""
    names_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    names_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return names_a == names_b and all((a / n).read_bytes() == (b / n).read_bytes() for n in names_a)


def read_config(directory: str | Path) -> Any:
    """The config stored in a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by save_model_dir / `gptforge train`)"
        )
    return config_from_dict(json.loads(path.read_text()))


def load_model_dir(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LanguageModel:
    """Rebuild the model saved by :func:`save_model_dir`, in eval mode.

    Args:
        directory: the model directory.
        device: where to put the weights: a ``torch.device`` or a name (``auto`` picks CUDA,
            else MPS, else the CPU).
        dtype: cast floating weights to this dtype (default: the dtype they were saved in).

    >>> model = load_model_dir("runs/demo/pretrain")  # doctest: +SKIP
    """
    directory = Path(directory)
    device = resolve_device(device)
    config = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{str(weights)!r} not found next to {CONFIG_FILE}")
    with safe_open(str(weights), framework="pt", device=str(device)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    # Built on the meta device and given the loaded tensors (assign=True): no randomly
    # initialised copy is ever allocated, so loading needs the checkpoint's memory only.
    with torch.device("meta"):
        model = build_model(config)
    expected = model.state_dict()
    aliases = _aliases(model)
    missing = sorted(set(expected) - set(state) - aliases)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{str(weights)!r} does not match {type(model).__name__}({config!r}): "
            f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise ValueError(
                f"{str(weights)!r}: tensor {k!r} has shape {tuple(t.shape)}, the config "
                f"expects {tuple(expected[k].shape)}"
            )
    saved_dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    target = dtype or saved_dtype or torch.float32
    for k, t in state.items():  # one tensor at a time: the peak stays at one model
        # CPU tensors from safe_open map the file; copy them, so rewriting the file in place
        # later cannot pull pages from under a running model.
        state[k] = t.to(target if t.is_floating_point() else t.dtype, copy=t.device.type == "cpu")
    model.load_state_dict(state, strict=False, assign=True)
    # A tied weight is stored once: its other names must point at the loaded tensor again.
    model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{str(weights)!r} left {left[:8]} without values")
    return model.eval()


def _aliases(model: LanguageModel) -> set[str]:
    """Names of parameters/buffers that are an earlier name's tensor (tied weights); by object,
    so it also holds on the meta device, where storages have no addresses."""
    seen: set[int] = set()
    out: set[str] = set()
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        if id(t) in seen:
            out.add(name)
        seen.add(id(t))
    return out
