"""Hugging Face ``LlamaForCausalLM`` <-> gptforge ``Llama``.

Our parameter names are HF's without the ``model.`` prefix and our RoPE uses HF's
``rotate_half`` layout, so this is a name map plus vocabulary padding. (Meta's original
checkpoints need the q/k permutation: see :mod:`gptforge.conversion.meta_llama`.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import invert, map_key, materialize, plan_conversion
from gptforge.conversion.ours import our_tensor_spec, pad_vocab_rows, slice_vocab_rows
from gptforge.conversion.weights import PlannedTensor, TensorInfo
from gptforge.modeling import LlamaConfig, config_from_dict, config_to_dict

__all__ = [
    "HF_LLAMA_WEIGHT_MAP",
    "hf_llama_config",
    "hf_llama_to_ours",
    "llama_config_to_hf",
    "ours_to_hf_llama",
    "plan_hf_llama_to_ours",
    "plan_ours_to_hf_llama",
]

HF_LLAMA_WEIGHT_MAP: dict[str, str | None] = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.input_layernorm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.self_attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.self_attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.self_attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.self_attn.o_proj.weight",
    "model.layers.{}.self_attn.q_proj.bias": "layers.{}.self_attn.q_proj.bias",
    "model.layers.{}.self_attn.k_proj.bias": "layers.{}.self_attn.k_proj.bias",
    "model.layers.{}.self_attn.v_proj.bias": "layers.{}.self_attn.v_proj.bias",
    "model.layers.{}.self_attn.o_proj.bias": "layers.{}.self_attn.o_proj.bias",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.post_attention_layernorm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    # A cache of RoPE frequencies stored by old transformers versions.
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
}
OURS_TO_HF_LLAMA: dict[str, str] = invert(HF_LLAMA_WEIGHT_MAP)
VOCAB_ROWS = frozenset({"embed_tokens.weight", "lm_head.weight"})


def llama_config_to_hf(
    cfg: LlamaConfig,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """The ``config.json`` of a HF ``LlamaForCausalLM`` equivalent to ``cfg``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": cfg.dropout,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,  # transformers < 5 reads this key, >= 5 reads "dtype"
        "dtype": dtype,
        "gptforge": config_to_dict(cfg),
    }


def hf_llama_config(hf: Mapping[str, Any]) -> LlamaConfig:
    """Our ``LlamaConfig`` for a HF Llama ``config.json`` dict (refusing what we do not implement)."""
    if hf.get("model_type") != "llama":
        raise ConversionError(
            f"config.json has model_type={hf.get('model_type')!r}; this converter reads 'llama'"
        )
    n_embd, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    if head_dim not in (None, n_embd // n_head):
        raise ConversionError(
            f"config.json head_dim={head_dim!r} differs from hidden_size // num_attention_heads = "
            f"{n_embd // n_head}; our Llama derives head_dim from the width"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu" or hf.get("mlp_bias"):
        raise ConversionError(
            f"config.json hidden_act={act!r} mlp_bias={hf.get('mlp_bias')!r}: only SiLU without MLP bias"
        )
    rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5 nests RoPE settings here
    theta = float(hf.get("rope_theta", rope.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling")
    if scaling is None and rope.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    ours = hf.get("gptforge")
    if isinstance(ours, Mapping) and ours.get("arch") == "llama":
        cfg = config_from_dict(dict(ours))
        if (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size) == (
            n_embd, int(hf["num_hidden_layers"]), n_head, int(hf["vocab_size"]),
        ):  # fmt: skip
            return cfg
    try:
        return LlamaConfig(
            block_size=int(hf.get("max_position_embeddings", 2048)),
            vocab_size=int(hf["vocab_size"]),
            n_layer=int(hf["num_hidden_layers"]),
            n_head=n_head,
            n_kv_head=int(hf.get("num_key_value_heads") or n_head),
            n_embd=n_embd,
            ffn_hidden=int(hf["intermediate_size"]),
            rope_theta=theta,
            rope_scaling=dict(scaling) if scaling else None,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            dropout=float(hf.get("attention_dropout", 0.0)),
        )
    except ValueError as e:
        raise ConversionError(f"config.json cannot be expressed as our LlamaConfig: {e}") from e


def hf_llama_spec(cfg: LlamaConfig, dtype: torch.dtype = torch.float32) -> dict[str, TensorInfo]:
    """Names and shapes of the tensors a HF Llama checkpoint holds for ``cfg``."""
    ours = our_tensor_spec(cfg, dtype)
    spec = {}
    for name, info in ours.items():
        if name in VOCAB_ROWS:
            info = TensorInfo((cfg.vocab_size, info.shape[1]), info.dtype)
        hf_name = map_key(name, OURS_TO_HF_LLAMA, "gptforge Llama")
        assert hf_name is not None, name
        spec[hf_name] = info
    return spec


def plan_hf_llama_to_ours(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: LlamaConfig
) -> list[PlannedTensor]:
    """Plan HF Llama tensors -> our ``Llama`` tensors (see :func:`hf_llama_to_ours`)."""
    weight_map = dict(HF_LLAMA_WEIGHT_MAP)
    if cfg.tie_embeddings:
        weight_map["lm_head.weight"] = None
    Vp = cfg.padded_vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        return pad_vocab_rows(t, Vp) if target in VOCAB_ROWS else t

    def fill(target: str, info: TensorInfo) -> Callable[[], torch.Tensor] | None:
        if target == "lm_head.weight" and "model.embed_tokens.weight" in source:
            return lambda: pad_vocab_rows(get("model.embed_tokens.weight"), Vp).clone()
        return None

    dtype = (
        source["model.embed_tokens.weight"].dtype
        if "model.embed_tokens.weight" in source
        else torch.float32
    )
    return plan_conversion(
        source,
        get,
        weight_map,
        our_tensor_spec(cfg, dtype),
        transform,
        what="Hugging Face Llama",
        fill=fill,
    )


def plan_ours_to_hf_llama(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: LlamaConfig
) -> list[PlannedTensor]:
    """Plan our ``Llama`` tensors -> HF Llama tensors (see :func:`ours_to_hf_llama`)."""
    weight_map: dict[str, str | None] = dict(OURS_TO_HF_LLAMA)
    if cfg.tie_embeddings:
        weight_map["lm_head.weight"] = None
    dtype = (
        source["embed_tokens.weight"].dtype if "embed_tokens.weight" in source else torch.float32
    )
    V = cfg.vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        return slice_vocab_rows(t, V) if HF_LLAMA_WEIGHT_MAP.get(target) in VOCAB_ROWS else t

    return plan_conversion(
        source, get, weight_map, hf_llama_spec(cfg, dtype), transform, what="gptforge Llama"
    )


def hf_llama_to_ours(sd: Mapping[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Convert a HF ``LlamaForCausalLM`` state dict to our ``Llama``'s (vocab rows padded).

    With a tied config ``lm_head.weight`` is omitted (our model ties it on load).

    >>> cfg = hf_llama_config(json.load(open("tinyllama/config.json")))  # doctest: +SKIP
    >>> sd = hf_llama_to_ours(load_state_dict("tinyllama"), cfg)  # doctest: +SKIP
    """
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return materialize(plan_hf_llama_to_ours(infos, sd.__getitem__, cfg))


def ours_to_hf_llama(sd: Mapping[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Convert our ``Llama`` state dict to HF ``LlamaForCausalLM`` names (vocab rows sliced)."""
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return materialize(plan_ours_to_hf_llama(infos, sd.__getitem__, cfg))
