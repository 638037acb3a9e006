"""GGUF files of the ``gpt2`` and ``llama`` architectures back into gptforge model directories.

The inverse of :mod:`gptforge.conversion.gguf_export`: names through the inverted weight maps,
quantized tensors dequantized to float32 (``gguf.quants.dequantize``), llama.cpp's interleaved
RoPE rows of q/k permuted back to rotate-half, and the tokenizer rebuilt from the tokens and
merges the file carries. This recovers a model from a GGUF file alone (an Ollama blob, say).

What a GGUF file does not record comes back as llama.cpp runs the model: GPT-2's GELU is the
tanh form, and a GPT-2 model exported without biases returns with zero biases (same logits).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gptforge.conversion.detect import GGUF_FAMILIES
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.gguf_export import GPT2_GGUF_MAP, LLAMA_GGUF_MAP, TOKEN_UNUSED
from gptforge.conversion.mapping import invert, split_layer
from gptforge.conversion.meta_llama import meta_to_hf_rope_permute
from gptforge.conversion.ours import our_tensor_spec, pad_vocab_rows, write_model_dir
from gptforge.conversion.weights import PlannedTensor, atomic_dir

__all__ = ["import_gguf", "read_gguf"]

TOKEN_CONTROL = 3


class _Fields:
    """``reader.fields`` as plain values, with an error naming a missing key."""

    def __init__(self, reader: Any, path: Path) -> None:
        self.reader, self.path = reader, path

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ConversionError(f"{str(self.path)!r} lacks the GGUF key {key!r}")
        return value


def _config(meta: _Fields, arch: str, names: set[str]) -> Any:
    from gptforge.modeling import GPTConfig, LlamaConfig

    common: dict[str, Any] = dict(
        block_size=int(meta.need(f"{arch}.context_length")),
        vocab_size=int(meta.get(f"{arch}.vocab_size") or len(meta.need("tokenizer.ggml.tokens"))),
        n_layer=int(meta.need(f"{arch}.block_count")),
        n_head=int(meta.need(f"{arch}.attention.head_count")),
        n_embd=int(meta.need(f"{arch}.embedding_length")),
        tie_embeddings="output.weight" not in names,
    )
    if arch == "gpt2":
        return GPTConfig(
            **common,
            norm_eps=float(meta.get(f"{arch}.attention.layer_norm_epsilon", 1e-5)),
            gelu_approximate="tanh",  # llama.cpp's gpt2 graph
        )
    if "rope_freqs.weight" in names:
        raise ConversionError(
            f"{str(meta.path)!r} uses llama3 RoPE scaling (rope_freqs), which GGUF import does "
            "not read back; convert the run directory the file came from instead"
        )
    return LlamaConfig(
        **common,
        n_kv_head=int(meta.get(f"{arch}.attention.head_count_kv") or common["n_head"]),
        ffn_hidden=int(meta.need(f"{arch}.feed_forward_length")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        attention_bias="blk.0.attn_q.bias" in names,
    )


def _tensor(t: Any) -> torch.Tensor:
    import gguf

    arr = gguf.quants.dequantize(t.data, t.tensor_type)  # float32, numpy (row-major) order
    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions fastest first
    return torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)  # a writable copy


def _weights(reader: Any, cfg: Any, arch: str) -> dict[str, torch.Tensor]:
    back = invert(GPT2_GGUF_MAP if arch == "gpt2" else LLAMA_GGUF_MAP)
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        template, layer = split_layer(t.name)
        if template not in back:
            raise ConversionError(f"GGUF tensor {t.name!r} has no gptforge counterpart")
        name = back[template].format(layer) if layer is not None else back[template]
        w = _tensor(t)
        if template in ("blk.{}.attn_q.weight", "blk.{}.attn_q.bias"):
            w = _rope_rows(w, cfg.n_head)
        elif template in ("blk.{}.attn_k.weight", "blk.{}.attn_k.bias"):
            w = _rope_rows(w, cfg.n_kv_head)
        sd[name] = w
    for name in ("wte.weight", "embed_tokens.weight", "lm_head.weight"):
        if name in sd:
            sd[name] = pad_vocab_rows(sd[name], cfg.padded_vocab_size)  # (Vp, C)
    return sd


def _rope_rows(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    if t.dim() == 1:  # a bias: permuted like a one-column weight
        return meta_to_hf_rope_permute(t[:, None], n_heads)[:, 0]
    return meta_to_hf_rope_permute(t, n_heads)


def _tokenizer(meta: _Fields) -> Any:
    """Our tokenizer from ``tokenizer.ggml.*`` (byte-level BPE with the GPT-2 pre-tokenizer)."""
    from gptforge.tokenizer import Tokenizer
    from gptforge.tokenizer.hf_bridge import add_special, new_byte_level_bpe

    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre not in (None, "gpt-2", "default"):
        raise ConversionError(
            f"{str(meta.path)!r} has tokenizer model {model!r} / pre-tokenizer {pre!r}; GGUF "
            "import rebuilds byte-level BPE tokenizers with the GPT-2 pre-tokenizer ('gpt2' / "
            "'gpt-2') only"
        )
    tokens = [str(t) for t in meta.need("tokenizer.ggml.tokens")]
    types = [int(t) for t in meta.need("tokenizer.ggml.token_type")]
    merges = [tuple(str(m).split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k != TOKEN_UNUSED}
    hf = new_byte_level_bpe(vocab, merges)  # type: ignore[arg-type]
    add_special(hf, [t for t, k in zip(tokens, types, strict=True) if k == TOKEN_CONTROL])
    return Tokenizer(hf)


def read_gguf(path: str | os.PathLike[str]) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """A gptforge-written GGUF file as ``(config, state dict in our names, tokenizer)``.

    >>> cfg, sd, tok = read_gguf("runs/model.gguf")  # doctest: +SKIP
    """
    import gguf

    p = Path(path)
    try:
        reader = gguf.GGUFReader(p)
    except (ValueError, OSError, IndexError) as e:  # the reader's errors on damaged files
        raise ConversionError(
            f"{str(p)!r} is not a readable GGUF file ({e}); if it was cut short, copy or export "
            "it again"
        ) from e
    meta = _Fields(reader, p)
    arch = str(meta.need("general.architecture"))
    if arch not in GGUF_FAMILIES:
        raise ConversionError(
            f"{str(p)!r} is a GGUF file of architecture {arch!r}; gptforge imports "
            f"{sorted(GGUF_FAMILIES)}"
        )
    names = {t.name for t in reader.tensors}
    cfg = _config(meta, arch, names)
    sd = _weights(reader, cfg, arch)
    embed = "wte.weight" if arch == "gpt2" else "embed_tokens.weight"
    if "lm_head.weight" in sd and torch.equal(sd["lm_head.weight"], sd[embed]):
        cfg = dataclasses.replace(cfg, tie_embeddings=True)  # a stored copy of the embedding
        del sd["lm_head.weight"]
    spec = our_tensor_spec(cfg)
    missing, extra = sorted(set(spec) - set(sd)), sorted(set(sd) - set(spec))
    if missing or extra:
        raise ConversionError(
            f"{str(p)!r} does not fit gptforge's {arch} model: missing {missing[:8]}, "
            f"unexpected {extra[:8]}"
        )
    return cfg, {k: sd[k] for k in spec}, _tokenizer(meta)


def import_gguf(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Import a GGUF file gptforge wrote (any of f32/f16/q8_0) as a gptforge model directory.

    >>> import_gguf("runs/model.gguf", "runs/recovered")  # doctest: +SKIP
    """
    cfg, sd, tok = read_gguf(path)
    plan = [PlannedTensor(k, tuple(v.shape), v.dtype, v.contiguous) for k, v in sd.items()]
    with atomic_dir(out, force) as tmp:
        write_model_dir(tmp, cfg, plan)
        tok.save(tmp / "tokenizer")
    return Path(out)
