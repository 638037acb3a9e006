"""Hugging Face ``GPT2LMHeadModel`` <-> gptforge ``GPT``.

The two differ only in names (HF prefixes ``transformer.``), in the layout of the four block
projections (HF's ``Conv1D`` stores ``(in, out)``, ours ``nn.Linear`` ``(out, in)``), in the
embedding rows (ours are padded to a multiple of 64), in biases (HF always has them, ours may
not; missing ones are exported as zeros) and in the head (HF drops ``lm_head.weight`` from the
file when it is tied).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import invert, materialize, plan_conversion, split_layer
from gptforge.conversion.ours import our_tensor_spec, pad_vocab_rows, slice_vocab_rows
from gptforge.conversion.weights import PlannedTensor, TensorInfo
from gptforge.modeling import GPTConfig, config_from_dict, config_to_dict

__all__ = [
    "HF_GPT2_WEIGHT_MAP",
    "gpt_config_to_hf",
    "hf_gpt2_config",
    "hf_gpt2_to_ours",
    "ours_to_hf_gpt2",
    "plan_hf_gpt2_to_ours",
    "plan_ours_to_hf_gpt2",
]

# HF name (with the ``transformer.`` prefix GPT2LMHeadModel uses) -> our name; None = dropped.
HF_GPT2_WEIGHT_MAP: dict[str, str | None] = {
    "transformer.wte.weight": "wte.weight",
    "transformer.wpe.weight": "wpe.weight",
    "transformer.h.{}.ln_1.weight": "h.{}.ln_1.weight",
    "transformer.h.{}.ln_1.bias": "h.{}.ln_1.bias",
    "transformer.h.{}.attn.c_attn.weight": "h.{}.attn.c_attn.weight",
    "transformer.h.{}.attn.c_attn.bias": "h.{}.attn.c_attn.bias",
    "transformer.h.{}.attn.c_proj.weight": "h.{}.attn.c_proj.weight",
    "transformer.h.{}.attn.c_proj.bias": "h.{}.attn.c_proj.bias",
    "transformer.h.{}.ln_2.weight": "h.{}.ln_2.weight",
    "transformer.h.{}.ln_2.bias": "h.{}.ln_2.bias",
    "transformer.h.{}.mlp.c_fc.weight": "h.{}.mlp.c_fc.weight",
    "transformer.h.{}.mlp.c_fc.bias": "h.{}.mlp.c_fc.bias",
    "transformer.h.{}.mlp.c_proj.weight": "h.{}.mlp.c_proj.weight",
    "transformer.h.{}.mlp.c_proj.bias": "h.{}.mlp.c_proj.bias",
    "transformer.ln_f.weight": "ln_f.weight",
    "transformer.ln_f.bias": "ln_f.bias",
    "lm_head.weight": "lm_head.weight",
    # Causal-mask buffers stored by old transformers versions.
    "transformer.h.{}.attn.bias": None,
    "transformer.h.{}.attn.masked_bias": None,
}
OURS_TO_HF_GPT2: dict[str, str] = invert(HF_GPT2_WEIGHT_MAP)

# Our names of the weights HF stores transposed (Conv1D).
CONV1D_WEIGHTS = frozenset(
    {
        "h.{}.attn.c_attn.weight",
        "h.{}.attn.c_proj.weight",
        "h.{}.mlp.c_fc.weight",
        "h.{}.mlp.c_proj.weight",
    }
)
VOCAB_ROWS = frozenset({"wte.weight", "lm_head.weight"})
# HF activation names that are GELU with the tanh approximation, and the exact one.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
EXACT_GELUS = ("gelu",)


def conv1d_to_linear(w: torch.Tensor) -> torch.Tensor:
    """HF ``Conv1D`` weight ``(in, out)`` -> ``nn.Linear`` weight ``(out, in)``."""
    return w.t().contiguous()  # (out, in)


def linear_to_conv1d(w: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` weight ``(out, in)`` -> HF ``Conv1D`` weight ``(in, out)``."""
    return w.t().contiguous()  # (in, out)


def _hf_key(key: str) -> str:
    """Checkpoints saved from ``GPT2Model`` (OpenAI's hub release) lack the ``transformer.`` prefix."""
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def gpt_config_to_hf(
    cfg: GPTConfig,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """The ``config.json`` of a HF ``GPT2LMHeadModel`` equivalent to ``cfg``.

    Our own config rides along under the ``"gptforge"`` key so that importing the directory
    back restores options HF cannot express (no biases, vocab padding) bit for bit.
    """
    gelu = "gelu_new" if cfg.gelu_approximate == "tanh" else "gelu"
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": gelu,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,  # transformers < 5 reads this key, >= 5 reads "dtype"
        "dtype": dtype,
        "gptforge": config_to_dict(cfg),
    }


def hf_gpt2_config(hf: Mapping[str, Any]) -> GPTConfig:
    """Our ``GPTConfig`` for a HF GPT-2 ``config.json`` dict.

    A ``"gptforge"`` entry written by :func:`gpt_config_to_hf` wins when it agrees with the HF
    fields (so a round trip is exact); otherwise the HF fields are translated, refusing options
    our model does not implement.
    """
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise ConversionError(
            f"config.json has model_type={model_type!r}; this converter reads 'gpt2'"
        )
    n_embd, n_layer, n_head = int(hf["n_embd"]), int(hf["n_layer"]), int(hf["n_head"])
    block_size = int(hf.get("n_positions", hf.get("n_ctx", 1024)))
    ours = hf.get("gptforge")
    if isinstance(ours, Mapping) and ours.get("arch") == "gpt":
        cfg = config_from_dict(dict(ours))
        if (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.block_size, cfg.vocab_size) == (
            n_embd, n_layer, n_head, block_size, int(hf["vocab_size"]),
        ):  # fmt: skip
            return cfg
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS + EXACT_GELUS:
        raise ConversionError(
            f"config.json activation_function={act!r} is not supported; supported: {TANH_GELUS + EXACT_GELUS}"
        )
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * n_embd):
        raise ConversionError(
            f"config.json n_inner={n_inner!r}: our GPT's MLP is 4 * n_embd = {4 * n_embd}"
        )
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise ConversionError(
            "config.json sets scale_attn_by_inverse_layer_idx=True or scale_attn_weights=False; "
            "our GPT scales attention by 1/sqrt(head_dim) only"
        )
    return GPTConfig(
        block_size=block_size,
        vocab_size=int(hf["vocab_size"]),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=float(hf.get("resid_pdrop", 0.0)),
        bias=True,
        qkv_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        gelu_approximate="tanh" if act in TANH_GELUS else "none",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def hf_gpt2_spec(cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> dict[str, TensorInfo]:
    """Names and shapes of the tensors a HF GPT-2 ``model.safetensors`` holds for ``cfg``."""
    C, V = cfg.n_embd, cfg.vocab_size
    spec = {
        "transformer.wte.weight": TensorInfo((V, C), dtype),
        "transformer.wpe.weight": TensorInfo((cfg.block_size, C), dtype),
    }
    per_layer = {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }  # fmt: skip
    for i in range(cfg.n_layer):
        for name, shape in per_layer.items():
            spec[f"transformer.h.{i}.{name}"] = TensorInfo(shape, dtype)
    spec["transformer.ln_f.weight"] = TensorInfo((C,), dtype)
    spec["transformer.ln_f.bias"] = TensorInfo((C,), dtype)
    if not cfg.tie_embeddings:
        spec["lm_head.weight"] = TensorInfo((V, C), dtype)
    return spec


def plan_hf_gpt2_to_ours(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: GPTConfig
) -> list[PlannedTensor]:
    """Plan HF GPT-2 tensors -> our ``GPT`` tensors (see :func:`hf_gpt2_to_ours`)."""
    src = {_hf_key(k): v for k, v in source.items()}
    original = {_hf_key(k): k for k in source}
    weight_map = dict(HF_GPT2_WEIGHT_MAP)
    if cfg.tie_embeddings:
        weight_map["lm_head.weight"] = None  # tied: the embedding is the head
    if not cfg.bias:  # our export wrote these as zeros
        for k, v in HF_GPT2_WEIGHT_MAP.items():
            if v is not None and v.endswith(".bias") and v != "h.{}.attn.c_attn.bias":
                weight_map[k] = None
    if not cfg.qkv_bias:
        weight_map["transformer.h.{}.attn.c_attn.bias"] = None
    _check_dropped_biases_are_zero(src, lambda k: get(original[k]), weight_map)
    Vp = cfg.padded_vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        if split_layer(target)[0] in CONV1D_WEIGHTS:
            return conv1d_to_linear(t)
        if target in VOCAB_ROWS:
            return pad_vocab_rows(t, Vp)
        return t

    def fill(target: str, info: TensorInfo) -> Callable[[], torch.Tensor] | None:
        if target == "lm_head.weight" and "transformer.wte.weight" in src:
            return lambda: pad_vocab_rows(get(original["transformer.wte.weight"]), Vp).clone()
        return None

    expected = our_tensor_spec(
        cfg, dtype=next(iter(source.values())).dtype if source else torch.float32
    )
    return plan_conversion(
        src,
        lambda k: get(original[k]),
        weight_map,
        expected,
        transform,
        what="Hugging Face GPT-2",
        fill=fill,
    )


def _check_dropped_biases_are_zero(
    source: Mapping[str, TensorInfo],
    get: Callable[[str], torch.Tensor],
    weight_map: Mapping[str, str | None],
) -> None:
    """A config without biases may only drop biases that are zero (as our export writes them)."""
    for key in source:
        template, _ = split_layer(key)
        dropped = (
            weight_map.get(template, "") is None and HF_GPT2_WEIGHT_MAP.get(template) is not None
        )
        if dropped and key.endswith(".bias") and bool(get(key).any()):
            raise ConversionError(
                f"tensor {key!r} is a non-zero bias but the configuration has no biases "
                "(bias=False / qkv_bias=False in config.json's 'gptforge' entry); dropping it would "
                "change the model. Remove the 'gptforge' entry to import it with biases"
            )


def plan_ours_to_hf_gpt2(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: GPTConfig
) -> list[PlannedTensor]:
    """Plan our ``GPT`` tensors -> HF GPT-2 tensors (see :func:`ours_to_hf_gpt2`)."""
    weight_map: dict[str, str | None] = dict(OURS_TO_HF_GPT2)
    if cfg.tie_embeddings:
        weight_map["lm_head.weight"] = None
    dtype = source["wte.weight"].dtype if "wte.weight" in source else torch.float32
    V = cfg.vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        ours = HF_GPT2_WEIGHT_MAP[split_layer(target)[0]]
        if ours in CONV1D_WEIGHTS:
            return linear_to_conv1d(t)
        if ours in VOCAB_ROWS:
            return slice_vocab_rows(t, V)
        return t

    def fill(target: str, info: TensorInfo) -> Callable[[], torch.Tensor] | None:
        if target.endswith(".bias"):  # HF GPT-2 always has biases; ours may not
            return lambda: torch.zeros(info.shape, dtype=info.dtype)
        return None

    return plan_conversion(
        source, get, weight_map, hf_gpt2_spec(cfg, dtype), transform, what="gptforge GPT", fill=fill
    )


def hf_gpt2_to_ours(sd: Mapping[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Convert a HF ``GPT2LMHeadModel`` (or ``GPT2Model``) state dict to our ``GPT``'s.

    Transposes the Conv1D weights, pads the vocabulary rows to ``cfg.padded_vocab_size`` with
    zeros and drops mask buffers. With a tied config ``lm_head.weight`` is omitted (load with
    ``strict=False`` or let ``tie_weights`` restore it); with an untied one a missing HF head is
    copied from the embedding.

    Args:
        sd: HF tensors, with or without the ``transformer.`` prefix.
        cfg: the target configuration, e.g. from :func:`hf_gpt2_config`.

    >>> cfg = hf_gpt2_config(json.load(open("gpt2/config.json")))  # doctest: +SKIP
    >>> model.load_state_dict(hf_gpt2_to_ours(load_state_dict("gpt2"), cfg), strict=False)  # doctest: +SKIP
    """
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return materialize(plan_hf_gpt2_to_ours(infos, sd.__getitem__, cfg))


def ours_to_hf_gpt2(sd: Mapping[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Convert our ``GPT`` state dict to HF ``GPT2LMHeadModel`` names and layouts."""
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return materialize(plan_ours_to_hf_gpt2(infos, sd.__getitem__, cfg))
