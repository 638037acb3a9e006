"""GPT checkpoints of nanoGPT and of the LLMs-from-scratch book, as gptforge models.

nanoGPT's ``ckpt.pt`` is ``{"model", "model_args", "config", "optimizer", "iter_num", ...}``; its
state dict uses our names under a ``transformer.`` prefix (``_orig_mod.`` in front when the model
was compiled), ``nn.Linear`` weights ``(out, in)`` and exact-erf GELU. The book's ``GPTModel``
state dict names things its own way (map below); it uses the tanh GELU, separate Q/K/V
projections (with or without bias) and stores no head count, so ``n_head`` must be given.

Both are read with ``torch.load(weights_only=True)``: nothing in the file runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.ours import our_tensor_spec, pad_vocab_rows, write_model_dir
from gptforge.conversion.weights import (
    READABLE_FORMATS,
    PlannedTensor,
    _unwrap_state_dict,
    atomic_dir,
    torch_load_object,
)

__all__ = ["BOOK_MAP", "import_pytorch", "read_pytorch_gpt"]

Flavor = Literal["nanogpt", "book"]
_NANOGPT_PREFIX = "transformer."
# The book's GPTModel -> ours; "{}" is the layer index. W_query/W_key/W_value are fused below.
BOOK_MAP = {
    "tok_emb.weight": "wte.weight",
    "pos_emb.weight": "wpe.weight",
    "trf_blocks.{}.att.out_proj.weight": "h.{}.attn.c_proj.weight",
    "trf_blocks.{}.att.out_proj.bias": "h.{}.attn.c_proj.bias",
    "trf_blocks.{}.ff.layers.0.weight": "h.{}.mlp.c_fc.weight",
    "trf_blocks.{}.ff.layers.0.bias": "h.{}.mlp.c_fc.bias",
    "trf_blocks.{}.ff.layers.2.weight": "h.{}.mlp.c_proj.weight",
    "trf_blocks.{}.ff.layers.2.bias": "h.{}.mlp.c_proj.bias",
    "trf_blocks.{}.norm1.scale": "h.{}.ln_1.weight",
    "trf_blocks.{}.norm1.shift": "h.{}.ln_1.bias",
    "trf_blocks.{}.norm2.scale": "h.{}.ln_2.weight",
    "trf_blocks.{}.norm2.shift": "h.{}.ln_2.bias",
    "final_norm.scale": "ln_f.weight",
    "final_norm.shift": "ln_f.bias",
    "out_head.weight": "lm_head.weight",
    "trf_blocks.{}.att.mask": None,  # the causal mask buffer: rebuilt by our attention
}
_LAYER = re.compile(r"\.(\d+)\.")


def _flavor(sd: dict[str, torch.Tensor], path: Path) -> Flavor:
    if "tok_emb.weight" in sd and any(k.startswith("trf_blocks.") for k in sd):
        return "book"
    if "wte.weight" in sd and "h.0.attn.c_attn.weight" in sd:
        w = sd["h.0.attn.c_attn.weight"]
        if w.shape[0] == 3 * w.shape[1]:  # nn.Linear (3C, C); HF's Conv1D is (C, 3C)
            return "nanogpt"
        raise ConversionError(
            f"{str(path)!r} has GPT-2 keys with c_attn of shape {tuple(w.shape)} (HF Conv1D "
            "layout): it is a Hugging Face GPT-2 state dict; put it in a directory with its "
            "config.json and use `gptforge convert from-hf`"
        )
    raise ConversionError(
        f"{str(path)!r} is neither a nanoGPT checkpoint (wte/h.N.attn.c_attn keys, optionally "
        "under transformer./_orig_mod.) nor the LLMs-from-scratch book's GPTModel (tok_emb, "
        f"trf_blocks.N...); its first keys are {sorted(sd)[:6]}. gptforge reads: "
        f"{'; '.join(READABLE_FORMATS)}"
    )


def _n_layer(sd: dict[str, torch.Tensor]) -> int:
    layers = {int(m.group(1)) for k in sd for m in [_LAYER.search(k)] if m}
    return max(layers) + 1 if layers else 0


def _tied(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is None or (a.shape == b.shape and bool(torch.equal(a, b)))


def _nanogpt(sd: dict[str, torch.Tensor], args: dict[str, Any], n_head: int | None) -> tuple:
    from gptforge.modeling import GPTConfig

    ours = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    wte, head = ours["wte.weight"], ours.pop("lm_head.weight", None)
    n_head = n_head or args.get("n_head")
    if n_head is None:
        raise ConversionError(
            "this nanoGPT state dict carries no model_args, so the number of heads is unknown; "
            "pass --n-head (n_head=...), e.g. 12 for GPT-2 124M"
        )
    tied = _tied(wte, head)
    if not tied:
        ours["lm_head.weight"] = head  # type: ignore[assignment]
    cfg = GPTConfig(
        block_size=int(args.get("block_size", ours["wpe.weight"].shape[0])),
        vocab_size=int(args.get("vocab_size", wte.shape[0])),
        n_layer=_n_layer(ours), n_head=int(n_head), n_embd=int(wte.shape[1]),
        dropout=float(args.get("dropout", 0.0)), bias="ln_f.bias" in ours,
        qkv_bias="h.0.attn.c_attn.bias" in ours, tie_embeddings=tied,
        gelu_approximate="none",  # nanoGPT's nn.GELU() is the exact erf form
    )  # fmt: skip
    return cfg, ours


def _book(sd: dict[str, torch.Tensor], n_head: int | None) -> tuple:
    from gptforge.modeling import GPTConfig

    if n_head is None:
        raise ConversionError(
            "the book's GPTModel state dict does not store the number of heads; pass --n-head "
            "(n_head=...): GPT_CONFIG_124M uses 12"
        )
    n_layer = _n_layer(sd)
    ours: dict[str, torch.Tensor] = {}
    for i in range(n_layer):
        att = f"trf_blocks.{i}.att."
        ours[f"h.{i}.attn.c_attn.weight"] = torch.cat(
            [sd.pop(att + f"W_{p}.weight") for p in ("query", "key", "value")]
        )  # (3C, C)
        if att + "W_query.bias" in sd:
            ours[f"h.{i}.attn.c_attn.bias"] = torch.cat(
                [sd.pop(att + f"W_{p}.bias") for p in ("query", "key", "value")]
            )  # (3C,)
    for key, t in sd.items():
        template = _LAYER.sub(".{}.", key, count=1)
        if template not in BOOK_MAP:
            raise ConversionError(
                f"book GPTModel key {key!r} has no counterpart; known keys: {sorted(BOOK_MAP)}"
            )
        target = BOOK_MAP[template]
        if target is not None:
            m = _LAYER.search(key)
            ours[target.format(m.group(1)) if m else target] = t
    wte = ours["wte.weight"]
    tied = _tied(wte, ours.get("lm_head.weight"))
    if tied:
        ours.pop("lm_head.weight", None)
    cfg = GPTConfig(
        block_size=int(ours["wpe.weight"].shape[0]), vocab_size=int(wte.shape[0]),
        n_layer=n_layer, n_head=int(n_head), n_embd=int(wte.shape[1]), bias=True,
        qkv_bias="h.0.attn.c_attn.bias" in ours, tie_embeddings=tied,
        gelu_approximate="tanh",  # the book's GELU is the tanh approximation
    )  # fmt: skip
    return cfg, ours


def read_pytorch_gpt(
    path: str | os.PathLike[str], *, n_head: int | None = None
) -> tuple[Any, dict[str, torch.Tensor], Flavor]:
    """Read a nanoGPT checkpoint or a book ``GPTModel`` state dict as our config and tensors.

    Args:
        path: the ``.pt``/``.pth``/``.bin``/``.ckpt`` file.
        n_head: heads, when the file does not say (bare state dicts; the book's model).

    Returns:
        ``(GPTConfig, state dict in our names with vocabulary rows padded, flavor)``.
    """
    p = Path(path)
    obj = torch_load_object(p)
    args = obj.get("model_args") if isinstance(obj, dict) else None
    sd = {
        k.removeprefix(_NANOGPT_PREFIX): v for k, v in _unwrap_state_dict(obj, p).items()
    }  # _orig_mod. is already gone
    flavor = _flavor(sd, p)
    cfg, ours = _nanogpt(sd, args or {}, n_head) if flavor == "nanogpt" else _book(sd, n_head)
    for name in ("wte.weight", "lm_head.weight"):
        if name in ours:
            ours[name] = pad_vocab_rows(ours[name], cfg.padded_vocab_size)  # (Vp, C)
    spec = our_tensor_spec(cfg)
    missing, extra = sorted(set(spec) - set(ours)), sorted(set(ours) - set(spec))
    if missing or extra:
        raise ConversionError(
            f"{str(p)!r} ({flavor}) does not fit a GPT of {cfg}: missing {missing[:8]}, "
            f"unexpected {extra[:8]}"
        )
    for name, info in spec.items():
        if tuple(ours[name].shape) != info.shape:
            raise ConversionError(
                f"{str(p)!r}: tensor {name!r} has shape {tuple(ours[name].shape)}, the config "
                f"implies {info.shape}"
            )
    return cfg, ours, flavor


def import_pytorch(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n_head: int | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Import a nanoGPT ``ckpt.pt`` or a book ``GPTModel`` state dict as a gptforge model dir.

    Args:
        path: the checkpoint file.
        out: the model directory to create.
        n_head: heads, when the file does not store them.
        tokenizer_dir: a tokenizer directory to bundle (nanoGPT and the book use GPT-2's).
        force: replace ``out`` if it exists.

    >>> import_pytorch("out/ckpt.pt", "runs/nanogpt")  # doctest: +SKIP
    """
    cfg, sd, _ = read_pytorch_gpt(path, n_head=n_head)
    if tokenizer_dir is not None:
        from gptforge.conversion.tokenizer_files import load_tokenizer_from

        tok = load_tokenizer_from(tokenizer_dir)
        if tok.n_vocab > cfg.vocab_size:
            raise ConversionError(
                f"the tokenizer in {str(tokenizer_dir)!r} has {tok.n_vocab} ids but the model's "
                f"vocab_size is {cfg.vocab_size}; pass the tokenizer the model was trained with"
            )
    plan = [
        PlannedTensor(name, info.shape, sd[name].dtype, sd[name].contiguous)
        for name, info in our_tensor_spec(cfg).items()
    ]
    with atomic_dir(out, force) as tmp:
        write_model_dir(tmp, cfg, plan)
        if tokenizer_dir is not None:
            tok.save(tmp / "tokenizer")
    return Path(out)
