"""``gptforge inspect``: what a checkpoint is, read from its metadata and tensor shapes only.

Works on our run/model directories, HF directories, Meta LLaMA and OpenAI GPT-2 directories,
single weight files (``.safetensors``, ``.bin``, ``.pt``, ``.pth``, including nanoGPT's
``ckpt.pt``) and GGUF files. No tensor data is read except to tell whether a stored head equals
the embedding.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from gptforge.conversion.detect import GGUF_FAMILIES, detect_family, detect_layout
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.weights import TensorInfo, WeightSource

__all__ = ["CheckpointInfo", "format_info", "inspect_checkpoint"]

# Stored tensors that are not parameters (causal masks, RoPE caches).
_BUFFERS = re.compile(r"(\.attn\.bias$|\.masked_bias$|inv_freq$|^rope\.freqs$|rope_freqs\.weight$)")
_LAYER = re.compile(r"(?:^|\.)(?:h|layers|blk)\.(\d+)\.|/h(\d+)/")


@dataclass
class CheckpointInfo:
    """What :func:`inspect_checkpoint` reports (``None`` where the checkpoint does not say)."""

    path: str
    layout: str
    family: str
    vocab_size: int | None = None
    n_embd: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    ffn_dim: int | None = None
    context_length: int | None = None
    n_params: int = 0
    n_tensors: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    tied_embeddings: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _count(infos: dict[str, TensorInfo]) -> tuple[int, int, dict[str, int]]:
    params = {k: v for k, v in infos.items() if not _BUFFERS.search(k)}
    dtypes = Counter(str(v.dtype).removeprefix("torch.") for v in params.values())
    return sum(v.numel for v in params.values()), len(params), dict(sorted(dtypes.items()))


def _from_config(info: CheckpointInfo, cfg: Any) -> None:
    info.vocab_size = cfg.vocab_size
    info.n_embd, info.n_layer, info.n_head = cfg.n_embd, cfg.n_layer, cfg.n_head
    info.n_kv_head = getattr(cfg, "n_kv_head", cfg.n_head)
    info.ffn_dim = getattr(cfg, "ffn_hidden", None) or 4 * cfg.n_embd
    info.context_length = cfg.block_size
    info.tied_embeddings = getattr(cfg, "tie_embeddings", None)


def _n_layers(names: list[str]) -> int | None:
    layers = {int(a or b) for n in names for a, b in _LAYER.findall(n)}
    return max(layers) + 1 if layers else None


def _from_shapes(
    info: CheckpointInfo, infos: dict[str, TensorInfo], src: WeightSource | None
) -> None:
    """Fill what tensor shapes reveal (head counts need a config: they stay unknown)."""

    def first(*names: str) -> TensorInfo | None:
        for n in names:
            for k, v in infos.items():
                if k == n or k.endswith("." + n) or k.endswith("/" + n):
                    return v
        return None

    emb = first("wte.weight", "embed_tokens.weight", "tok_embeddings.weight", "model/wte")
    if emb is not None:
        info.vocab_size, info.n_embd = emb.shape[0], emb.shape[1]
    pos = first("wpe.weight", "model/wpe")
    if pos is not None:
        info.context_length = pos.shape[0]
    info.n_layer = _n_layers(list(infos))
    fc = first("0.mlp.c_fc.weight", "0.mlp.gate_proj.weight", "0.feed_forward.w1.weight")
    if fc is not None and info.n_embd is not None:
        info.ffn_dim = next((d for d in fc.shape if d != info.n_embd), info.n_embd)
    head = first("lm_head.weight", "output.weight")
    if head is None:
        info.tied_embeddings = True
    elif src is not None and emb is not None:
        emb_name = next(k for k, v in infos.items() if v is emb)
        head_name = next(k for k, v in infos.items() if v is head)
        a, b = src.get(emb_name), src.get(head_name)
        info.tied_embeddings = a.shape == b.shape and bool(torch.equal(a, b))
    info.notes.append(
        "head counts are not stored in a bare weights file; inspect the directory with its config"
    )


def _inspect_gguf(path: Path) -> CheckpointInfo:
    import gguf

    reader = gguf.GGUFReader(path)

    def get(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = str(get("general.architecture"))
    if arch not in GGUF_FAMILIES:
        raise ConversionError(
            f"{str(path)!r} is a GGUF file of architecture {arch!r} ({len(reader.tensors)} "
            f"tensors), which gptforge cannot load or convert; it handles GGUF architectures "
            f"{sorted(GGUF_FAMILIES)} (GPT-2 and LLaMA families)"
        )
    info = CheckpointInfo(str(path), "gguf", GGUF_FAMILIES[arch])
    info.n_embd = get(f"{arch}.embedding_length")
    info.n_layer = get(f"{arch}.block_count")
    info.n_head = get(f"{arch}.attention.head_count")
    info.n_kv_head = get(f"{arch}.attention.head_count_kv") or info.n_head
    info.ffn_dim = get(f"{arch}.feed_forward_length")
    info.context_length = get(f"{arch}.context_length")
    tokens = get("tokenizer.ggml.tokens")
    info.vocab_size = get(f"{arch}.vocab_size") or (len(tokens) if tokens is not None else None)
    names = [t.name for t in reader.tensors]
    info.tied_embeddings = "output.weight" not in names
    kinds = Counter(t.tensor_type.name for t in reader.tensors if not _BUFFERS.search(t.name))
    info.dtypes = dict(sorted(kinds.items()))
    info.n_params = int(
        sum(int(t.n_elements) for t in reader.tensors if not _BUFFERS.search(t.name))
    )
    info.n_tensors = len(names)
    pre = get("tokenizer.ggml.pre")
    info.notes.append(f"tokenizer: {get('tokenizer.ggml.model')!r}, pre-tokenizer {pre!r}")
    info.notes.append(
        "GGUF is an export format for llama.cpp/Ollama: generate, convert and train read the run "
        "directory it was written from"
    )
    return info


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe a checkpoint: family, sizes, parameter count, dtypes, tied head.

    >>> info = inspect_checkpoint("runs/demo/pretrain")  # doctest: +SKIP
    >>> info.family, info.n_layer, info.n_params  # doctest: +SKIP
    ('gpt2', 4, 5_000_000)
    """
    from gptforge.conversion.detect import find_model_dir

    p = find_model_dir(path)
    layout = detect_layout(p)
    if layout == "gguf":
        return _inspect_gguf(p)
    if layout == "openai":
        from gptforge.conversion.openai_gpt2 import openai_gpt2_config
        from gptforge.conversion.tf_checkpoint import TFCheckpoint

        ckpt = TFCheckpoint(p)
        infos = {n: TensorInfo(e.shape, torch.float32) for n, e in ckpt.entries.items()}
        info = CheckpointInfo(str(p), layout, "gpt2")
        _from_config(info, openai_gpt2_config(json.loads((p / "hparams.json").read_text())))
        info.n_params, info.n_tensors, info.dtypes = _count(infos)
        return info
    if layout == "meta":
        from gptforge.conversion.meta_llama import load_meta_checkpoint, meta_llama_config

        params, sd = load_meta_checkpoint(p)
        infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
        info = CheckpointInfo(str(p), layout, "llama")
        _from_config(info, meta_llama_config(params, infos))
        info.n_params, info.n_tensors, info.dtypes = _count(infos)
        return info
    with WeightSource(p) as src:
        infos = src.infos
        family = detect_family(p if layout != "weights" else list(infos))
        info = CheckpointInfo(str(p), layout, family)
        if layout == "ours":
            from gptforge.conversion.ours import read_model_config

            _from_config(info, read_model_config(p))
            info.notes.append("embedding rows are padded; n_params counts the stored (padded) rows")
        elif layout == "hf":
            from gptforge.conversion.hf import HF_ARCHITECTURES, read_hf_config

            hf_cfg = read_hf_config(p)
            _from_config(info, HF_ARCHITECTURES[hf_cfg["model_type"]][1](hf_cfg))
        else:
            _from_shapes(info, infos, src)
            _nanogpt_args(p, info)
        info.n_params, info.n_tensors, info.dtypes = _count(infos)
    return info


def _nanogpt_args(path: Path, info: CheckpointInfo) -> None:
    """nanoGPT's ``ckpt.pt`` stores ``model_args`` (n_head, block_size, ...) beside the weights."""
    if path.suffix not in (".pt", ".pth", ".ckpt"):
        return
    try:
        obj = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - best effort: the weights were already read safely
        return
    args = obj.get("model_args") if isinstance(obj, dict) else None
    if isinstance(args, dict):
        info.n_head = args.get("n_head", info.n_head)
        info.context_length = args.get("block_size", info.context_length)
        info.notes[:] = [n for n in info.notes if not n.startswith("head counts")]
        info.n_kv_head = info.n_head


def format_info(info: CheckpointInfo) -> str:
    """A human-readable table of ``info``."""

    def fmt(v: Any) -> str:
        if v is None:
            return "unknown"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, dict):
            return ", ".join(f"{k}: {n}" for k, n in v.items())
        return str(v)

    rows = [
        ("path", info.path), ("layout", info.layout), ("family", info.family),
        ("vocab size", info.vocab_size), ("model dim", info.n_embd), ("layers", info.n_layer),
        ("heads", info.n_head), ("kv heads", info.n_kv_head), ("ffn dim", info.ffn_dim),
        ("context", info.context_length), ("parameters", info.n_params), ("tensors", info.n_tensors),
        ("dtypes (tensors)", info.dtypes), ("tied embeddings", info.tied_embeddings),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {fmt(v)}" for k, v in rows]
    lines += [f"{'note':<{width}}  {n}" for n in info.notes]
    return "\n".join(lines)
