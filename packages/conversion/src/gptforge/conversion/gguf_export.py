"""GGUF export for llama.cpp and Ollama (``gpt2`` and ``llama`` architectures).

Written with the ``gguf`` package, tensor by tensor (tensor infos first, then each tensor's data
as it is converted; K-quants are then made from that file by llama.cpp's own quantizer, see
:mod:`gptforge.conversion.gguf_quant`). The file carries every key llama.cpp's loader reads for the architecture
and the whole tokenizer: the BPE model (``tokenizer.ggml.model = "gpt2"``), the pre-tokenizer
named explicitly (``"gpt-2"`` or ``"tekken"``, as ``tokenizer.json`` records; llama.cpp otherwise
hashes the tokenizer's output to guess it and refuses tokenizers it has never seen: "BPE
pre-tokenizer was not recognized"), the tokens, the
merges, token types (special tokens are CONTROL) and the BOS/EOS/EOT ids. A tied head is not
written: llama.cpp's loader falls back to ``token_embd`` when ``output.weight`` is absent.

A run fine-tuned with a chat template (``chat.json``, written by ``gptforge finetune``) gets that
template as ``tokenizer.chat_template`` and in the Ollama ``Modelfile`` written beside the file;
any other model gets a plain completion ``Modelfile``.

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
from typing import Any

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.gguf_quant import (
    GGUF_DTYPES,
    KQUANT_DTYPES,
    GGUFDtype,
    encode,
    kquantize,
    quantized_bytes,
    require_llama_cpp,
    tensor_type,
)
from gptforge.conversion.mapping import plan_conversion, split_layer
from gptforge.conversion.meta_llama import hf_to_meta_rope_permute
from gptforge.conversion.ours import slice_vocab_rows
from gptforge.conversion.tokenizer_files import chat_template_of
from gptforge.conversion.weights import PlannedTensor, TensorInfo, atomic_file

__all__ = ["GGUF_DTYPES", "GPT2_GGUF_MAP", "LLAMA_GGUF_MAP", "export_gguf", "modelfile_text"]

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
        # llama.cpp's gpt2 graph always has biases: zeros where the model has none.
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
        return None

    wm = dict(weight_map)
    if cfg.tie_embeddings:
        wm["lm_head.weight"] = None
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


def modelfile_text(gguf_name: str, template: str | None, eot: str | None) -> str:
    """An Ollama ``Modelfile`` for ``gguf_name``: the chat template and its stop strings for a
    model fine-tuned with ``template``, plain completion (the prompt as is) for ``None``."""
    from gptforge.tokenizer.chat_template import CHAT_FORMATS

    lines = [f"FROM ./{gguf_name}", ""]
    stops: tuple[str, ...] = (eot,) if eot else ()
    if template is not None:
        fmt = CHAT_FORMATS[template]
        lines.append(f'TEMPLATE """{fmt.ollama()}"""')
        stops = fmt.stop
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    lines += ["PARAMETER temperature 0.8", "PARAMETER top_k 40", ""]
    return "\n".join(lines)


def _tensor_types(plan: list[PlannedTensor], dtype: GGUFDtype) -> dict[str, Any]:
    """The GGML type of each planned tensor under ``dtype`` (K-quants: F32, quantized later)."""
    names = {t.name for t in plan}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    base = "f32" if dtype in KQUANT_DTYPES else dtype
    return {t.name: tensor_type(t.name, t.shape, base, head) for t in plan}


def export_gguf(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: GGUFDtype = "f16",
    force: bool = False,
    modelfile: bool = True,
    name: str | None = None,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Write a GGUF file (and an Ollama ``Modelfile`` beside it) for a model directory.

    Args:
        src: our run/model directory or a HF GPT-2 / Llama directory; it must have a tokenizer.
        out: the ``.gguf`` file to write.
        dtype: one of :data:`GGUF_DTYPES`: ``f32``, ``f16``, ``q8_0``, ``q4_0``, ``q4_1``,
            ``q5_0``, ``q5_1`` (written with the ``gguf`` package), or ``q4_k_m``, ``q5_k_m``,
            ``q6_k`` (llama.cpp's quantizer, needs llama-cpp-python). Norms, biases and position
            embeddings stay F32; see :mod:`gptforge.conversion.gguf_quant` for the rule.
        force: replace existing outputs.
        modelfile: also write ``Modelfile`` next to ``out``.
        name: ``general.name`` (default: the source directory's name).
        report: called with one line per tensor that falls back to another type than
            ``dtype``'s (default: a warning).

    >>> export_gguf("runs/demo/pretrain", "runs/model.gguf", dtype="q8_0")  # doctest: +SKIP
    """
    from gptforge.conversion.loading import detect_layout
    from gptforge.conversion.tokenizer_files import find_tokenizer_dir

    if dtype not in GGUF_DTYPES:
        raise ConversionError(
            f"GGUF dtype {dtype!r} is not supported; choose one of {list(GGUF_DTYPES)}"
        )
    if dtype in KQUANT_DTYPES:
        require_llama_cpp(dtype)  # before any work: one line saying how to install it
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
    template, jinja = chat_template_of(src_dir)  # only a model fine-tuned with one has one
    say = report or (lambda line: warnings.warn(line, stacklevel=3))
    with atomic_file(out_path, force) as tmp:
        if dtype in KQUANT_DTYPES:
            f32 = tmp.with_name(tmp.name + ".f32")
            try:
                eot = _write_gguf(src_dir, layout, tok_dir, f32, "f32", name, jinja, say)
                for tensor, qtype in kquantize(f32, tmp, dtype).items():
                    say(
                        f"{tensor}: {qtype} (row length not a multiple of 256, llama.cpp's fallback)"
                    )
            finally:
                f32.unlink(missing_ok=True)
        else:
            eot = _write_gguf(src_dir, layout, tok_dir, tmp, dtype, name, jinja, say)
    if modelfile:
        with atomic_file(mf_path, force=True) as tmp:
            tmp.write_text(modelfile_text(out_path.name, template, eot))
    return out_path


def _write_gguf(
    src_dir: Path,
    layout: str,
    tok_dir: Path,
    path: Path,
    dtype: GGUFDtype,
    name: str | None,
    jinja: str | None,
    say: Callable[[str], None],
) -> str | None:
    """Write the GGUF file itself; returns the end-of-text token (for the Modelfile)."""
    import gguf
    from gptforge.conversion.weights import WeightSource

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
        types = _tensor_types(plan, dtype)
        for tensor, (_, why) in types.items():
            if why is not None:
                say(f"{tensor}: {why}")
        tokens, token_types, merges, specials = _tokenizer_arrays(tok_dir, cfg.vocab_size)
        arch = "gpt2" if cfg.arch == "gpt" else "llama"
        w = gguf.GGUFWriter(str(path), arch)
        _write_metadata(w, cfg, arch, name or src_dir.resolve().name, dtype)
        eot = _write_tokenizer(w, tokens, token_types, merges, specials, jinja, tok_dir)
        for t in plan:
            qtype = types[t.name][0]
            shape, np_dtype, nbytes = quantized_bytes(t.shape, qtype)
            w.add_tensor_info(t.name, shape, np_dtype, nbytes, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in plan:
            arr = t.produce().detach().to(torch.float32).contiguous().numpy()
            w.write_tensor_data(encode(arr, types[t.name][0]))
        w.close()
    return eot


def _write_metadata(w: Any, cfg: Any, arch: str, name: str, dtype: GGUFDtype) -> None:
    import gguf

    file_type = (
        gguf.LlamaFileType.ALL_F32
        if dtype == "f32"
        else gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    )
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
    jinja: str | None,
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
    if jinja is not None:
        w.add_chat_template(jinja)
    return eot_text
