"""Meta's original LLaMA checkpoints (``consolidated.*.pth`` + ``params.json``) <-> our ``Llama``.

Meta's code applies RoPE to interleaved pairs of a head's features ``(x0, x1), (x2, x3), ...``
while HF (and we) rotate the two halves ``(x_i, x_{i + hd/2})``. Attention scores are invariant
under a permutation applied to both q and k, so converting is a fixed reordering of the rows of
``wq`` and ``wk`` within each head: Meta row ``2i + j`` (pair ``i``, member ``j``) becomes row
``j * hd/2 + i``. Checkpoints split for model parallelism (several ``consolidated.NN.pth``) are
joined along the dimension each layer was split on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import invert, materialize, plan_conversion, split_layer
from gptforge.conversion.ours import (
    WEIGHTS_FILE,
    our_tensor_spec,
    pad_vocab_rows,
    read_model_config,
    slice_vocab_rows,
    write_model_dir,
)
from gptforge.conversion.tokenizer_files import load_tokenizer_from
from gptforge.conversion.weights import (
    PlannedTensor,
    TensorInfo,
    WeightSource,
    atomic_dir,
    torch_load_weights,
)
from gptforge.modeling import LlamaConfig

__all__ = [
    "META_LLAMA_WEIGHT_MAP",
    "export_meta",
    "import_meta",
    "hf_to_meta_rope_permute",
    "llama_config_to_meta_params",
    "load_meta_checkpoint",
    "meta_llama_config",
    "meta_llama_to_ours",
    "meta_to_hf_rope_permute",
    "ours_to_meta_llama",
]

META_LLAMA_WEIGHT_MAP: dict[str, str | None] = {
    "tok_embeddings.weight": "embed_tokens.weight",
    "layers.{}.attention_norm.weight": "layers.{}.input_layernorm.weight",
    "layers.{}.attention.wq.weight": "layers.{}.self_attn.q_proj.weight",
    "layers.{}.attention.wk.weight": "layers.{}.self_attn.k_proj.weight",
    "layers.{}.attention.wv.weight": "layers.{}.self_attn.v_proj.weight",
    "layers.{}.attention.wo.weight": "layers.{}.self_attn.o_proj.weight",
    "layers.{}.ffn_norm.weight": "layers.{}.post_attention_layernorm.weight",
    "layers.{}.feed_forward.w1.weight": "layers.{}.mlp.gate_proj.weight",
    "layers.{}.feed_forward.w3.weight": "layers.{}.mlp.up_proj.weight",
    "layers.{}.feed_forward.w2.weight": "layers.{}.mlp.down_proj.weight",
    "norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "rope.freqs": None,  # a cache of RoPE frequencies (LLaMA 2)
}
OURS_TO_META_LLAMA: dict[str, str] = invert(META_LLAMA_WEIGHT_MAP)
VOCAB_ROWS = frozenset({"embed_tokens.weight", "lm_head.weight"})
# Meta template -> the dim its model-parallel shards are concatenated on (None: replicated).
SHARD_DIM: dict[str, int | None] = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "layers.{}.attention.wq.weight": 0,
    "layers.{}.attention.wk.weight": 0,
    "layers.{}.attention.wv.weight": 0,
    "layers.{}.attention.wo.weight": 1,
    "layers.{}.feed_forward.w1.weight": 0,
    "layers.{}.feed_forward.w3.weight": 0,
    "layers.{}.feed_forward.w2.weight": 1,
}


def meta_to_hf_rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of Meta's ``wq``/``wk`` ``(n_heads * hd, C)`` to HF's rotate-half layout."""
    rows, cols = w.shape
    hd = rows // n_heads
    # (nh, hd/2 pairs, 2 members, C) -> (nh, 2 members, hd/2 pairs, C): halves become contiguous
    return w.reshape(n_heads, hd // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta_rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`meta_to_hf_rope_permute`: HF rotate-half rows -> Meta interleaved rows."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols)  # (nh*hd, C)


def meta_intermediate_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FFN width: 2/3 of 4 * dim, times the optional multiplier, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def meta_llama_config(
    params: Mapping[str, Any], infos: Mapping[str, TensorInfo] | None = None
) -> LlamaConfig:
    """Our ``LlamaConfig`` for Meta's ``params.json``; tensor shapes fill what it leaves out.

    Args:
        params: the parsed ``params.json`` (``dim``, ``n_layers``, ``n_heads``, ...).
        infos: the (joined) checkpoint's tensor infos, to read ``vocab_size`` (``-1`` in LLaMA 1)
            and the FFN width exactly.
    """
    try:
        dim, n_layers, n_heads = int(params["dim"]), int(params["n_layers"]), int(params["n_heads"])
    except KeyError as e:
        raise ConversionError(
            f"params.json lacks {e.args[0]!r}; it needs dim, n_layers and n_heads"
        ) from e
    vocab = int(params.get("vocab_size", -1))
    hidden = meta_intermediate_size(
        dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")
    )
    if infos is not None:
        if "tok_embeddings.weight" in infos:
            vocab = infos["tok_embeddings.weight"].shape[0]
        if "layers.0.feed_forward.w1.weight" in infos:
            hidden = infos["layers.0.feed_forward.w1.weight"].shape[0]
    if vocab <= 0:
        raise ConversionError(
            "params.json has vocab_size=-1 and no tok_embeddings.weight to read it from"
        )
    scaling = None
    if params.get("use_scaled_rope"):  # Llama 3.1+ long-context RoPE with Meta's fixed constants
        scaling = dict(rope_type="llama3", factor=float(params.get("rope_scaling_factor", 8.0)),
                       low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)  # fmt: skip
    return LlamaConfig(
        block_size=int(params.get("max_seq_len", 2048 if scaling is None else 131072)),
        vocab_size=vocab,
        n_layer=n_layers,
        n_head=n_heads,
        n_kv_head=int(params.get("n_kv_heads") or n_heads),
        n_embd=dim,
        ffn_hidden=hidden,
        rope_theta=float(params.get("rope_theta", 10000.0)),
        rope_scaling=scaling,
        norm_eps=float(params.get("norm_eps", 1e-5)),
        tie_embeddings=False,
    )


def llama_config_to_meta_params(cfg: LlamaConfig) -> dict[str, Any]:
    """Meta's ``params.json`` for ``cfg`` (FFN width via ``multiple_of`` = the exact width)."""
    params: dict[str, Any] = {
        "dim": cfg.n_embd,
        "n_layers": cfg.n_layer,
        "n_heads": cfg.n_head,
        "n_kv_heads": cfg.n_kv_head,
        "vocab_size": cfg.vocab_size,
        "norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_seq_len": cfg.block_size,
    }
    hidden = cfg.ffn_hidden
    assert hidden is not None
    # Choose multiple_of/ffn_dim_multiplier so Meta's formula gives our width exactly.
    base = int(2 * (4 * cfg.n_embd) / 3)
    params["multiple_of"] = hidden if hidden >= base else 1
    if hidden < base:
        params["ffn_dim_multiplier"] = hidden / base
    if cfg.rope_scaling:
        params["use_scaled_rope"] = True
        params["rope_scaling_factor"] = cfg.rope_scaling["factor"]
    return params


def load_meta_checkpoint(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``params.json`` and the ``consolidated.*.pth`` shards, joining model-parallel splits.

    A single shard is memory-mapped; several are joined along each layer's split dimension.
    """
    d = Path(directory)
    params_path = d / "params.json"
    if not params_path.is_file():
        raise ConversionError(
            f"{str(params_path)!r} not found; a Meta LLaMA directory holds params.json + consolidated.*.pth"
        )
    params = json.loads(params_path.read_text())
    shards = sorted(d.glob("consolidated.*.pth"))
    if not shards:
        raise ConversionError(f"no consolidated.*.pth in {str(d)!r}")
    parts = [torch_load_weights(s) for s in shards]
    if len(parts) == 1:
        return params, parts[0]
    joined: dict[str, torch.Tensor] = {}
    for name in parts[0]:
        template, _ = split_layer(name)
        dim = SHARD_DIM.get(template)
        joined[name] = (
            parts[0][name] if dim is None else torch.cat([p[name] for p in parts], dim=dim)
        )
    return params, joined


def _rope_heads(cfg: LlamaConfig, ours_name: str) -> int | None:
    template, _ = split_layer(ours_name)
    if template == "layers.{}.self_attn.q_proj.weight":
        return cfg.n_head
    if template == "layers.{}.self_attn.k_proj.weight":
        return cfg.n_kv_head
    return None


def plan_meta_llama_to_ours(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: LlamaConfig
) -> list[PlannedTensor]:
    """Plan Meta tensors -> our ``Llama`` tensors (RoPE rows permuted, vocab padded)."""
    weight_map = dict(META_LLAMA_WEIGHT_MAP)
    if cfg.tie_embeddings:
        weight_map["output.weight"] = None
    Vp = cfg.padded_vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        heads = _rope_heads(cfg, target)
        if heads is not None:
            return meta_to_hf_rope_permute(t, heads)
        return pad_vocab_rows(t, Vp) if target in VOCAB_ROWS else t

    dtype = (
        source["tok_embeddings.weight"].dtype
        if "tok_embeddings.weight" in source
        else torch.float32
    )
    return plan_conversion(
        source, get, weight_map, our_tensor_spec(cfg, dtype), transform, what="Meta LLaMA"
    )


def plan_ours_to_meta_llama(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: LlamaConfig
) -> list[PlannedTensor]:
    """Plan our ``Llama`` tensors -> Meta tensors (an untied ``output.weight`` is always written)."""
    dtype = (
        source["embed_tokens.weight"].dtype if "embed_tokens.weight" in source else torch.float32
    )
    expected: dict[str, TensorInfo] = {}
    for name, info in our_tensor_spec(cfg, dtype).items():
        meta_name = OURS_TO_META_LLAMA[split_layer(name)[0]]
        _, layer = split_layer(name)
        if name in VOCAB_ROWS:
            info = TensorInfo((cfg.vocab_size, info.shape[1]), info.dtype)
        expected[meta_name.format(layer) if layer is not None else meta_name] = info
    if "output.weight" not in expected:  # Meta's code has no tying: write the head explicitly
        expected["output.weight"] = expected["tok_embeddings.weight"]
    if cfg.attention_bias:
        raise ConversionError(
            "Meta's LLaMA has no attention biases; this model (attention_bias=True) cannot be exported"
        )
    V = cfg.vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        ours = META_LLAMA_WEIGHT_MAP[split_layer(target)[0]]
        assert ours is not None
        heads = _rope_heads(cfg, ours)
        if heads is not None:
            return hf_to_meta_rope_permute(t, heads)
        return slice_vocab_rows(t, V) if ours in VOCAB_ROWS else t

    def fill(target: str, info: TensorInfo) -> Callable[[], torch.Tensor] | None:
        if target == "output.weight":
            return lambda: slice_vocab_rows(get("embed_tokens.weight"), V).clone()
        return None

    return plan_conversion(
        source, get, OURS_TO_META_LLAMA, expected, transform, what="gptforge Llama", fill=fill
    )


def meta_llama_to_ours(
    sd: Mapping[str, torch.Tensor], params: Mapping[str, Any], cfg: LlamaConfig | None = None
) -> dict[str, torch.Tensor]:
    """Convert a Meta LLaMA state dict (joined shards) to our ``Llama``'s, permuting q/k rows.

    Args:
        sd: Meta's tensors (``tok_embeddings.weight``, ``layers.0.attention.wq.weight``, ...).
        params: the parsed ``params.json``.
        cfg: the target config (default: :func:`meta_llama_config` of ``params`` and ``sd``).

    >>> params, sd = load_meta_checkpoint("llama-2-7b/")  # doctest: +SKIP
    >>> ours = meta_llama_to_ours(sd, params)  # doctest: +SKIP
    """
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    cfg = cfg or meta_llama_config(params, infos)
    return materialize(plan_meta_llama_to_ours(infos, sd.__getitem__, cfg))


def ours_to_meta_llama(sd: Mapping[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Convert our ``Llama`` state dict to Meta's names and interleaved RoPE rows."""
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return materialize(plan_ours_to_meta_llama(infos, sd.__getitem__, cfg))


def import_meta(
    meta_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert a Meta LLaMA directory (``params.json`` + ``consolidated.*.pth``) to our model dir.

    Meta ships a SentencePiece ``tokenizer.model``, which our byte-level BPE tokenizer cannot
    represent; pass ``tokenizer_dir`` (ours or a HF directory with ``tokenizer.json``) to bundle one.
    """
    params, sd = load_meta_checkpoint(meta_dir)
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    cfg = meta_llama_config(params, infos)
    tok = load_tokenizer_from(tokenizer_dir) if tokenizer_dir is not None else None
    with atomic_dir(out, force) as tmp:
        write_model_dir(tmp, cfg, plan_meta_llama_to_ours(infos, sd.__getitem__, cfg))
        if tok is not None:
            tok.save(tmp / "tokenizer")
    return Path(out)


def export_meta(
    ckpt: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write one of our Llama model directories as Meta's ``consolidated.00.pth`` + ``params.json``."""
    src_dir = Path(ckpt)
    cfg = read_model_config(src_dir)
    if not isinstance(cfg, LlamaConfig):
        raise ConversionError(
            f"{str(src_dir)!r} holds a {cfg.arch!r} model; Meta's format is for the 'llama' family"
        )
    with atomic_dir(out, force) as tmp, WeightSource(src_dir / WEIGHTS_FILE) as src:
        sd = materialize(plan_ours_to_meta_llama(src.infos, src.get, cfg))
        torch.save(sd, tmp / "consolidated.00.pth")
        (tmp / "params.json").write_text(
            json.dumps(llama_config_to_meta_params(cfg), indent=2) + "\n"
        )
    return Path(out)
