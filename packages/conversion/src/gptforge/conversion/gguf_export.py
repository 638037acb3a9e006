"""GGUF export for llama.cpp and Ollama (``gpt2`` and ``llama`` architectures).

Written with the ``gguf`` package, tensor by tensor (tensor infos first, then each tensor's data
as it is converted). The file carries every key llama.cpp's loader reads for the architecture
and the whole tokenizer: the BPE model (``tokenizer.ggml.model = "gpt2"``), the pre-tokenizer
named explicitly (``"gpt-2"`` or ``"tekken"``, as ``tokenizer.json`` records; llama.cpp otherwise
hashes the tokenizer's output to guess it and refuses tokenizers it has never seen: "BPE
pre-tokenizer was not recognized"), the tokens, the
merges, token types (special tokens are CONTROL) and the BOS/EOS/EOT ids. An Ollama
``Modelfile`` with the instruction template is written beside it.

llama.cpp's ``llama`` graph applies RoPE to interleaved pairs (Meta's layout), so q/k rows are
permuted back from our rotate-half layout, as llama.cpp's own HF converter does.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.mapping import plan_conversion, split_layer
from gptforge.conversion.meta_llama import hf_to_meta_rope_permute
from gptforge.conversion.ours import slice_vocab_rows
from gptforge.conversion.weights import PlannedTensor, TensorInfo, atomic_file

__all__ = ["GGUF_DTYPES", "GPT2_GGUF_MAP", "LLAMA_GGUF_MAP", "export_gguf", "modelfile_text"]

GGUFDtype = Literal["f32", "f16", "q8_0"]
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")

GPT2_GGUF_MAP: dict[str, str | None] = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "h.{}.ln_1.weight": "blk.{}.attn_norm.weight",
    "h.{}.ln_1.bias": "blk.{}.attn_norm.bias",
    "h.{}.attn.c_attn.weight": "blk.{}.attn_qkv.weight",
    "h.{}.attn.c_attn.bias": "blk.{}.attn_qkv.bias",
    "h.{}.attn.c_proj.weight": "blk.{}.attn_output.weight",
    "h.{}.attn.c_proj.bias": "blk.{}.attn_output.bias",
    "h.{}.ln_2.weight": "blk.{}.ffn_norm.weight",
    "h.{}.ln_2.bias": "blk.{}.ffn_norm.bias",
    "h.{}.mlp.c_fc.weight": "blk.{}.ffn_up.weight",
    "h.{}.mlp.c_fc.bias": "blk.{}.ffn_up.bias",
    "h.{}.mlp.c_proj.weight": "blk.{}.ffn_down.weight",
    "h.{}.mlp.c_proj.bias": "blk.{}.ffn_down.bias",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
LLAMA_GGUF_MAP: dict[str, str | None] = {
    "embed_tokens.weight": "token_embd.weight",
    "layers.{}.input_layernorm.weight": "blk.{}.attn_norm.weight",
    "layers.{}.self_attn.q_proj.weight": "blk.{}.attn_q.weight",
    "layers.{}.self_attn.k_proj.weight": "blk.{}.attn_k.weight",
    "layers.{}.self_attn.v_proj.weight": "blk.{}.attn_v.weight",
    "layers.{}.self_attn.o_proj.weight": "blk.{}.attn_output.weight",
    "layers.{}.self_attn.q_proj.bias": "blk.{}.attn_q.bias",
    "layers.{}.self_attn.k_proj.bias": "blk.{}.attn_k.bias",
    "layers.{}.self_attn.v_proj.bias": "blk.{}.attn_v.bias",
    "layers.{}.self_attn.o_proj.bias": "blk.{}.attn_output.bias",
    "layers.{}.post_attention_layernorm.weight": "blk.{}.ffn_norm.weight",
    "layers.{}.mlp.gate_proj.weight": "blk.{}.ffn_gate.weight",
    "layers.{}.mlp.up_proj.weight": "blk.{}.ffn_up.weight",
    "layers.{}.mlp.down_proj.weight": "blk.{}.ffn_down.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
VOCAB_ROWS = frozenset({"wte.weight", "embed_tokens.weight", "lm_head.weight"})
# llama.cpp token types (llama_token_type): what each vocabulary entry is.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def _gguf_spec(
    cfg: Any, ours: Mapping[str, TensorInfo], weight_map: Mapping[str, str | None]
) -> dict[str, TensorInfo]:
    spec: dict[str, TensorInfo] = {}
    for name, info in ours.items():
        template, layer = split_layer(name)
        target = weight_map[template]
        assert target is not None, name
        shape = (cfg.vocab_size, info.shape[1]) if name in VOCAB_ROWS else info.shape
        spec[target.format(layer) if layer is not None else target] = TensorInfo(shape, info.dtype)
    return spec


def plan_ours_to_gguf(
    source: Mapping[str, TensorInfo], get: Callable[[str], torch.Tensor], cfg: Any
) -> list[PlannedTensor]:
    """Plan our model's tensors -> GGUF tensor names/layouts (float32, before quantization)."""
    from gptforge.conversion.ours import our_tensor_spec

    ours = our_tensor_spec(cfg, torch.float32)
    if cfg.arch == "gpt":
        weight_map = GPT2_GGUF_MAP
        # llama.cpp's gpt2 graph always has biases and a head: zeros / a copy of the embedding.
        ours = dict(ours)
        C = cfg.n_embd
        for i in range(cfg.n_layer):
            for name, n in (
                ("ln_1", C),
                ("attn.c_attn", 3 * C),
                ("attn.c_proj", C),
                ("ln_2", C),
                ("mlp.c_fc", 4 * C),
                ("mlp.c_proj", C),
            ):
                ours.setdefault(f"h.{i}.{name}.bias", TensorInfo((n,), torch.float32))
        ours.setdefault("ln_f.bias", TensorInfo((C,), torch.float32))
        ours.setdefault("lm_head.weight", ours["wte.weight"])
        if cfg.gelu_approximate != "tanh":
            warnings.warn(
                "llama.cpp's gpt2 graph uses the tanh approximation of GELU; this model was trained "
                "with the exact GELU, so llama.cpp's logits will differ slightly",
                stacklevel=3,
            )
    elif cfg.arch == "llama":
        weight_map = LLAMA_GGUF_MAP
    else:
        raise ConversionError(
            f"GGUF export supports the 'gpt' and 'llama' families, not {cfg.arch!r}"
        )
    expected = _gguf_spec(cfg, ours, weight_map)
    V = cfg.vocab_size

    def transform(target: str, t: torch.Tensor) -> torch.Tensor:
        template, _ = split_layer(target)
        t = t.float()
        if target in ("token_embd.weight", "output.weight"):
            return slice_vocab_rows(t, V)
        if cfg.arch == "llama" and template in ("blk.{}.attn_q.weight", "blk.{}.attn_q.bias"):
            return _meta_rope_rows(t, cfg.n_head)
        if cfg.arch == "llama" and template in ("blk.{}.attn_k.weight", "blk.{}.attn_k.bias"):
            return _meta_rope_rows(t, cfg.n_kv_head)
        return t

    def fill(target: str, info: TensorInfo) -> Callable[[], torch.Tensor] | None:
        if target.endswith(".bias"):
            return lambda: torch.zeros(info.shape)
        if target == "output.weight":
            key = "wte.weight" if cfg.arch == "gpt" else "embed_tokens.weight"
            # written out at once, so a view of the embedding needs no copy
            return lambda: slice_vocab_rows(get(key).float(), V)
        return None

    wm = dict(weight_map)
    if cfg.tie_embeddings:
        wm["lm_head.weight"] = None
    if cfg.arch == "llama" and cfg.tie_embeddings:
        expected.pop("output.weight", None)  # llama.cpp falls back to token_embd
    plan = plan_conversion(
        source, get, wm, expected, transform, what="gptforge", fill=fill, dtype=torch.float32
    )
    if cfg.arch == "llama" and cfg.rope_scaling:
        factors = llama3_rope_factors(cfg)
        plan.append(
            PlannedTensor("rope_freqs.weight", tuple(factors.shape), torch.float32, lambda: factors)
        )
    return plan


def _meta_rope_rows(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    if t.dim() == 1:  # a bias: permute it like a one-column weight
        return hf_to_meta_rope_permute(t[:, None], n_heads)[:, 0]
    return hf_to_meta_rope_permute(t, n_heads)


def llama3_rope_factors(cfg: Any) -> torch.Tensor:
    """Per-frequency divisors of the RoPE frequencies for llama3 scaling (llama.cpp's ``rope_freqs``)."""
    rs = cfg.rope_scaling
    factor, low, high = (
        float(rs["factor"]),
        float(rs["low_freq_factor"]),
        float(rs["high_freq_factor"]),
    )
    old_ctx = float(rs["original_max_position_embeddings"])
    hd = cfg.head_dim
    out = []
    for i in range(0, hd, 2):
        freq = 1.0 / (cfg.rope_theta ** (i / hd))
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)  # (hd/2,)


def _tokenizer_arrays(
    tokenizer_dir: Path, n_vocab: int
) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(
            f"{str(tokenizer_dir)!r}: tokenizer model {model.get('type')!r} is not BPE"
        )
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])}
    specials = {
        t["content"]: int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special", True)
    }
    for text, i in added.items():
        by_id[i] = text
    if max(by_id) >= n_vocab:
        raise ConversionError(
            f"tokenizer id {max(by_id)} does not fit the model's vocab_size={n_vocab}; "
            "the tokenizer does not belong to this model"
        )
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            text = by_id[i]
            kind = TOKEN_USER_DEFINED if text in added else TOKEN_NORMAL
            types.append(TOKEN_CONTROL if text in specials else kind)
        else:  # model rows beyond the tokenizer: placeholders llama.cpp never emits
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, specials


def _chat(tokenizer_dir: Path, run_dir: Path | None) -> str:
    """The instruction template a fine-tuned run uses (``chat.json``), else guessed from tokens."""
    if run_dir is not None and (run_dir / "chat.json").is_file():
        return str(json.loads((run_dir / "chat.json").read_text()).get("template", "inst"))
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    names = {t["content"] for t in spec.get("added_tokens", [])}
    return "inst" if {"<INST>", "</INST>", "<RESP>", "</RESP>"} <= names else "plain"


CHAT_TEMPLATES = {  # Jinja, as llama.cpp's server and transformers read tokenizer.chat_template
    "inst": "{% for m in messages %}{% if m['role'] == 'user' %}<INST>{{ m['content'] }}</INST><RESP>"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</RESP>{% endif %}{% endfor %}",
}


def modelfile_text(gguf_name: str, template: str, eot: str | None) -> str:
    """An Ollama ``Modelfile`` for ``gguf_name`` with the instruction template and stop tokens."""
    lines = [f"FROM ./{gguf_name}", ""]
    if template == "inst":
        lines += ['TEMPLATE """<INST>{{ .Prompt }}</INST><RESP>"""', 'PARAMETER stop "</RESP>"']
    elif template == "alpaca":
        lines += [
            'TEMPLATE """Below is an instruction that describes a task. Write a response that '
            'appropriately completes the request.\n\n### Instruction:\n{{ .Prompt }}\n\n### Response:\n"""'
        ]
    else:
        lines += ['TEMPLATE """{{ .Prompt }}"""']
    if eot:
        lines.append(f'PARAMETER stop "{eot}"')
    lines += ["PARAMETER temperature 0.8", "PARAMETER top_k 40", ""]
    return "\n".join(lines)


def _encode(t: torch.Tensor, name: str, dtype: GGUFDtype) -> tuple[np.ndarray, Any]:
    import gguf

    arr = t.detach().to(torch.float32).contiguous().numpy()
    if arr.ndim == 1 or dtype == "f32" or name == "rope_freqs.weight":
        return arr, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and arr.shape[-1] % 32 == 0:
        qt = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(arr, qt), qt
    return arr.astype(np.float16), gguf.GGMLQuantizationType.F16


def _planned_bytes(
    t: PlannedTensor, dtype: GGUFDtype
) -> tuple[tuple[int, ...], np.dtype, int, Any]:
    import gguf

    n = math.prod(t.shape)
    if len(t.shape) == 1 or dtype == "f32" or t.name == "rope_freqs.weight":
        return t.shape, np.dtype(np.float32), 4 * n, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and t.shape[-1] % 32 == 0:
        qt = gguf.GGMLQuantizationType.Q8_0
        byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, qt)
        return byte_shape, np.dtype(np.uint8), math.prod(byte_shape), qt
    return t.shape, np.dtype(np.float16), 2 * n, gguf.GGMLQuantizationType.F16


def export_gguf(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: GGUFDtype = "f16",
    force: bool = False,
    modelfile: bool = True,
    name: str | None = None,
) -> Path:
    """Write a GGUF file (and an Ollama ``Modelfile`` beside it) for a model directory.

    Args:
        src: our run/model directory or a HF GPT-2 / Llama directory; it must have a tokenizer.
        out: the ``.gguf`` file to write.
        dtype: ``f32``, ``f16`` or ``q8_0`` for the 2-D weights (norms and biases stay f32;
            rows not divisible by 32 fall back to f16 under q8_0).
        force: replace existing outputs.
        modelfile: also write ``Modelfile`` next to ``out``.
        name: ``general.name`` (default: the source directory's name).

    >>> export_gguf("runs/demo/pretrain", "runs/model.gguf", dtype="q8_0")  # doctest: +SKIP
    """
    import gguf
    from gptforge.conversion.loading import detect_layout
    from gptforge.conversion.tokenizer_files import find_tokenizer_dir
    from gptforge.conversion.weights import WeightSource

    if dtype not in GGUF_DTYPES:
        raise ConversionError(
            f"GGUF dtype {dtype!r} is not supported; choose one of {list(GGUF_DTYPES)}"
        )
    src_dir, out_path = Path(src), Path(out)
    mf_path = out_path.with_name("Modelfile")
    if modelfile and mf_path.exists() and not force:
        raise ConversionError(f"{str(mf_path)!r} already exists; pass --force to overwrite it")
    layout = detect_layout(src_dir)
    tok_dir = find_tokenizer_dir(src_dir)
    if tok_dir is None:
        raise ConversionError(
            f"{str(src_dir)!r} has no tokenizer.json (nor tokenizer/tokenizer.json); GGUF files embed the "
            "tokenizer, so convert a directory that has one"
        )
    with WeightSource(src_dir) as source:
        if layout == "ours":
            from gptforge.conversion.ours import read_model_config

            cfg = read_model_config(src_dir)
            infos = source.infos
            get: Callable[[str], torch.Tensor] = source.get
        elif layout == "hf":
            from gptforge.conversion.hf import HF_ARCHITECTURES, read_hf_config

            hf_cfg = read_hf_config(src_dir)
            _, reader, planner = HF_ARCHITECTURES[hf_cfg["model_type"]]
            cfg = reader(hf_cfg)
            ours_plan = {t.name: t for t in planner(source.infos, source.get, cfg)}
            infos = {k: TensorInfo(t.shape, t.dtype) for k, t in ours_plan.items()}
            get = lambda k: ours_plan[k].produce()  # noqa: E731 (a planned tensor, made on demand)
        else:
            raise ConversionError(
                f"GGUF export reads our run/model directories or HF directories, not {layout!r}"
            )
        plan = plan_ours_to_gguf(infos, get, cfg)
        tokens, types, merges, specials = _tokenizer_arrays(tok_dir, cfg.vocab_size)
        arch = "gpt2" if cfg.arch == "gpt" else "llama"
        with atomic_file(out_path, force) as tmp:
            w = gguf.GGUFWriter(str(tmp), arch)
            _write_metadata(w, cfg, arch, name or src_dir.resolve().name, dtype)
            eot = _write_tokenizer(
                w, tokens, types, merges, specials, _chat(tok_dir, src_dir), tok_dir
            )
            for t in plan:
                shape, np_dtype, nbytes, qtype = _planned_bytes(t, dtype)
                w.add_tensor_info(t.name, shape, np_dtype, nbytes, raw_dtype=qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for t in plan:
                arr, _ = _encode(t.produce(), t.name, dtype)
                w.write_tensor_data(arr)
            w.close()
    if modelfile:
        with atomic_file(mf_path, force=True) as tmp:
            tmp.write_text(modelfile_text(out_path.name, _chat(tok_dir, src_dir), eot))
    return out_path


def _write_metadata(w: Any, cfg: Any, arch: str, name: str, dtype: GGUFDtype) -> None:
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]  # fmt: skip
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_layer_norm_eps(cfg.norm_eps)
    else:
        w.add_feed_forward_length(cfg.ffn_hidden)
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)


def _write_tokenizer(
    w: Any,
    tokens: list[str],
    types: list[int],
    merges: list[str],
    specials: dict[str, int],
    template: str,
    tok_dir: Path,
) -> str | None:
    from gptforge.tokenizer.pretokenize import gguf_pre

    w.add_tokenizer_model("gpt2")  # byte-level BPE
    # Named explicitly (llama.cpp would otherwise guess from a hash of the tokenizer's output):
    # the llama.cpp pre-tokenizer whose regex is the one tokenizer.json records.
    w.add_tokenizer_pre(gguf_pre(json.loads((tok_dir / "tokenizer.json").read_text("utf-8"))))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot_text = "<|endoftext|>" if "<|endoftext|>" in specials else None
    if eot_text is not None:
        w.add_bos_token_id(specials[eot_text])
        w.add_eos_token_id(specials[eot_text])
    if "</RESP>" in specials:  # end of an assistant turn
        w.add_eot_token_id(specials["</RESP>"])
    if "<|pad|>" in specials:
        w.add_pad_token_id(specials["<|pad|>"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if template in CHAT_TEMPLATES:
        w.add_chat_template(CHAT_TEMPLATES[template])
    return eot_text
