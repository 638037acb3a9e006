"""Cross-architecture weight transfer: a GPT-2 or LLaMA checkpoint into MM-Rec, with a report.

What carries over, role by role (see :mod:`gptforge.conversion.arch_sources` for the sources):

==================  =========================================  =================================
source role         MM-Rec target                              how
==================  =========================================  =================================
token embedding     ``wte``                                    rows of the shared vocabulary
LM head             ``lm_head`` (or tied to ``wte``)           as the embedding
block norms         ``h.{i}.ln_1`` / ``ln_2``, ``ln_f``        exact; LayerNorm <-> RMSNorm keeps
                                                               the gain only (``partial``)
query / output      ``mixer.mem_attn.q_proj`` / ``o_proj``     exact, or HF Conv1D transposed,
                                                               or split from the fused c_attn
key / value         ``mixer.mem_attn.k_proj`` / ``v_proj``     same; grouped KV heads repeated
FFN                 ``mlp`` (GELU to GELU, SwiGLU to SwiGLU)   never across kinds
==================  =========================================  =================================

The memory keys/values are projections of vectors living where the source's normalised
activations live (the slots start at unit scale for that reason), so the source's K/V maps are
their true counterparts. Query and key rows of Meta and HF LLaMA checkpoints differ by the same
per-head RoPE permutation; memory attention has no RoPE and the permutation cancels in q.k, so
both layouts transfer without it.

New components (MDI gates, decay MLP, state norm, memory slots) keep the target model's
deliberate initialisation, and the output projection of every new branch (``mixer.w_out``, and
the FFN output of blocks the source lacks) starts at zero, so the converted model begins as the
source with its attention removed and learns the recurrence from there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from gptforge.conversion.arch_sources import Role, SourceAnalysis, load_source, source_roles
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.weights import atomic_dir, atomic_file
from torch import nn

__all__ = [
    "REPORT_FILE",
    "convert_model_weights",
    "convert_to_mmrec_dir",
    "convert_weights",
    "expand_kv_heads",
    "mmrec_config_for_source",
    "write_report",
]

REPORT_FILE = "conversion_report.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")

TARGET_GLOBAL = {
    "embed": "wte.weight",
    "head": "lm_head.weight",
    "final_norm.weight": "ln_f.weight",
    "final_norm.bias": "ln_f.bias",
}
TARGET_LAYER = {
    "norm1.weight": "h.{}.ln_1.weight",
    "norm1.bias": "h.{}.ln_1.bias",
    "norm2.weight": "h.{}.ln_2.weight",
    "norm2.bias": "h.{}.ln_2.bias",
    **{
        f"{p}.{kind}": f"h.{{}}.mixer.mem_attn.{p}_proj.{kind}"
        for p in "qkvo"
        for kind in ("weight", "bias")
    },
    "fc.weight": "h.{}.mlp.c_fc.weight",
    "fc.bias": "h.{}.mlp.c_fc.bias",
    "proj.weight": "h.{}.mlp.c_proj.weight",
    "proj.bias": "h.{}.mlp.c_proj.bias",
    "gate.weight": "h.{}.mlp.gate_proj.weight",
    "up.weight": "h.{}.mlp.up_proj.weight",
    "down.weight": "h.{}.mlp.down_proj.weight",
}
# How each new parameter is initialised (suffix of the target key -> description).
NEW_INIT = {
    "mixer.w_z": "normal(0, 0.02) weight, zero bias (as from scratch)",
    "mixer.w_g": "normal(0, 0.02) weight, zero bias: the input gate starts near 0.5",
    "mixer.decay.fc1": "normal(0, 0.02) weight, zero bias",
    "mixer.decay.fc2": "normal(0, 0.02) weight; bias = logit of decays spread over "
    "[decay_init_min, decay_init_max]",
    "mixer.norm_h": "ones (gain) / zeros (bias)",
    "mixer.memory.slots": "normal(0, 1): the scale of normalised activations, which the "
    "transferred W_k / W_v expect",
    "mixer.w_out": "zeros: the new mixer branch starts silent, so the converted model starts "
    "as the source without its attention",
    "mixer.mem_attn": "normal(0, 0.02) / zero bias (no source counterpart)",
    "mlp": "as from scratch, output projection zero (the source has no such block/FFN)",
    "ln_": "ones / zeros",
}
# Parts of MM-Rec with no transformer counterpart at all (mem_attn, norms and FFN have one).
_MMREC_ONLY = (
    "mixer.w_z",
    "mixer.w_g",
    "mixer.decay",
    "mixer.norm_h",
    "mixer.memory",
    "mixer.w_out",
)
_FFN_IN = ("fc", "gate", "up")  # hidden units are rows
_FFN_OUT = ("proj", "down")  # hidden units are columns


def expand_kv_heads(w: torch.Tensor, n_kv_head: int, n_head: int) -> torch.Tensor:
    """Repeat grouped key/value heads so each query head has its own: (kv*hs, ...) -> (nh*hs, ...).

    The result computes exactly what grouped-query attention computes.
    """
    if n_head % n_kv_head:
        raise ConversionError(f"n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
    hs = w.shape[0] // n_kv_head
    grouped = w.reshape(n_kv_head, hs, *w.shape[1:])  # (kv, hs, ...)
    return grouped.repeat_interleave(n_head // n_kv_head, dim=0).reshape(n_head * hs, *w.shape[1:])


def mmrec_config_for_source(analysis: SourceAnalysis, base: str = "mmrec-tiny", **overrides: Any):
    """An MMRecConfig whose every shared dimension matches the source (the lossless target).

    Args:
        analysis: from :func:`gptforge.conversion.arch_sources.load_source`.
        base: MM-Rec preset supplying the MM-Rec-only fields (memory slots, decay MLP, chunk).
        **overrides: further MMRecConfig fields.
    """
    from gptforge.modeling import MMRecConfig

    fields: dict[str, Any] = dict(
        vocab_size=analysis.vocab_size,
        n_embd=analysis.n_embd,
        n_layer=analysis.n_layer,
        ffn=analysis.ffn,
        ffn_hidden=analysis.ffn_hidden,
        norm=analysis.norm,
        norm_eps=analysis.norm_eps,
        bias=analysis.bias,
        tie_embeddings=analysis.tied,
        gelu_approximate=analysis.gelu_approximate,
    )
    if analysis.n_head is not None:
        fields["n_head"] = analysis.n_head
    if analysis.block_size is not None:
        fields["block_size"] = min(int(analysis.block_size), 4096)
    return MMRecConfig.from_name(base, **{**fields, **overrides})


class _Transfer:
    """Accumulates the converted state dict and the report while roles are placed."""

    def __init__(self, target: nn.Module, analysis: SourceAnalysis) -> None:
        self.cfg: Any = target.config
        self.analysis = analysis
        self.sd = {k: v.detach().clone() for k, v in target.state_dict().items()}
        self.tied = bool(getattr(self.cfg, "tie_embeddings", False))
        self.keys: dict[str, dict[str, Any]] = {}
        self.unused: list[dict[str, str]] = []
        self.mismatches: list[dict[str, Any]] = []
        self.copied = 0

    def place(self, role: str, src: Role) -> None:
        layer, _, name = role.partition(".") if role[0].isdigit() else ("", "", role)
        if layer and int(layer) >= self.cfg.n_layer:
            self._unused(
                src, f"source layer {layer} has no target layer (n_layer={self.cfg.n_layer})"
            )
            return
        template = TARGET_LAYER.get(name) if layer else TARGET_GLOBAL.get(name)
        key = template.format(layer) if template else None
        if name == "head" and self.tied:
            if self.analysis.tied:
                return  # the same tensor as the embedding, placed through it
            self._unused(src, "the target ties lm_head to wte; the untied source head has no place")
            return
        if key is None or key not in self.sd:
            self._unused(src, self._why_no_target(name))
            return
        self._fit(key, name, src)

    def _why_no_target(self, name: str) -> str:
        role = name.split(".")[0]
        if role in ("fc", "proj", "gate", "up", "down"):
            return (
                f"the target FFN is {self.cfg.ffn!r} and the source's is {self.analysis.ffn!r}: "
                "FFNs transfer only within a kind"
            )
        if name.endswith(".bias"):
            return "the target has no bias here (bias=False)"
        return "no counterpart in MM-Rec"

    def _unused(self, src: Role, reason: str) -> None:
        for k in src.source_keys:
            self.unused.append({"key": k, "reason": reason})

    def _record(
        self, key: str, src: Role, compat: str, note: str, copied: int, lossless: bool = False
    ) -> None:
        """``lossless``: every value of the source tensor arrived with its meaning intact."""
        self.keys[key] = {
            "compat": compat,
            "score": round(copied / max(self.sd[key].numel(), 1), 4),  # share of values copied
            "source": src.source_keys,
            "note": note.strip("; "),
            "lossless": lossless,
        }
        self.copied += copied

    def _fit(self, key: str, name: str, src: Role) -> None:
        dst = self.sd[key]
        t = src.tensor.to(dst.dtype)
        role = name.split(".")[0]
        notes = [src.note] if src.note else []
        compat = src.compat
        lossless = True
        a, c = self.analysis, self.cfg
        if role in ("embed", "head"):
            self._fit_vocab(key, src, t, notes)
            return
        if role in ("q", "k", "v", "o") and a.n_head is not None and a.n_head != c.n_head:
            compat, lossless = "partial", False
            notes.append(
                f"source has {a.n_head} heads, target {c.n_head}: projection kept, head grouping changes"
            )
        n_head, n_kv = a.n_head or 0, a.n_kv_head or 0
        grouped = role in ("k", "v") and 0 < n_kv < n_head
        if grouped and t.shape[0] * n_head // n_kv == dst.shape[0]:
            t = expand_kv_heads(t, n_kv, n_head)
            compat = "partial"
            notes.append(f"{n_kv} grouped KV heads repeated to {n_head} heads (same function)")
        if (role.startswith("norm") or role == "final_norm") and a.norm != c.norm:
            compat, lossless = "partial", False
            notes.append(f"source {a.norm} gain into target {c.norm}")
        if t.shape == dst.shape:
            dst.copy_(t)
            self._record(key, src, compat, "; ".join(notes), t.numel(), lossless)
            return
        if (
            role in _FFN_IN + _FFN_OUT
            and t.dim() == dst.dim()
            and self._fit_ffn(key, role, src, t, notes)
        ):
            return
        self.mismatches.append(
            {"source_key": src.source_keys[0], "target_key": key, "source_shape": list(t.shape),
             "target_shape": list(dst.shape), "action": "not transferred: dimensions differ"}
        )  # fmt: skip
        self._record(key, src, "none", "shapes differ; target initialisation kept", 0)

    def _fit_vocab(self, key: str, src: Role, t: torch.Tensor, notes: list[str]) -> None:
        dst = self.sd[key]
        if t.shape[1] != dst.shape[1]:
            self.mismatches.append(
                {"source_key": src.source_keys[0], "target_key": key, "source_shape": list(t.shape),
                 "target_shape": list(dst.shape), "action": "not transferred: model dims differ"}
            )  # fmt: skip
            self._record(key, src, "none", "model dims differ", 0)
            return
        v_src, v_tgt = self.analysis.vocab_size, self.cfg.vocab_size
        keep = min(v_src, v_tgt)
        dst[:keep] = t[:keep]
        if v_tgt > v_src:
            dst[v_src:v_tgt] = t[:v_src].mean(dim=0)  # unknown tokens start at the average
        compat = src.compat if v_src == v_tgt else "partial"
        if v_src != v_tgt:
            notes.append(f"vocab {v_src} -> {v_tgt}: first {keep} rows copied, new rows = mean")
            self.mismatches.append(
                {"source_key": src.source_keys[0], "target_key": key, "source_shape": list(t.shape),
                 "target_shape": list(dst.shape), "action": f"partial: {keep} shared token rows copied"}
            )  # fmt: skip
        self._record(key, src, compat, "; ".join(notes), keep * dst.shape[1], bool(v_tgt >= v_src))

    def _fit_ffn(self, key: str, role: str, src: Role, t: torch.Tensor, notes: list[str]) -> bool:
        """Hidden units of an FFN are independent: keep the first min(H_src, H_tgt) of them."""
        dst = self.sd[key]
        unit_dim = 0 if role in _FFN_IN else 1
        other = [d for d in range(t.dim()) if d != unit_dim]
        if any(t.shape[d] != dst.shape[d] for d in other):
            return False
        h = min(t.shape[unit_dim], dst.shape[unit_dim])
        dst.narrow(unit_dim, 0, h).copy_(t.narrow(unit_dim, 0, h))
        if role in _FFN_OUT and dst.shape[unit_dim] > h:
            dst.narrow(unit_dim, h, dst.shape[unit_dim] - h).zero_()  # extra units start silent
        self.mismatches.append(
            {"source_key": src.source_keys[0], "target_key": key, "source_shape": list(t.shape),
             "target_shape": list(dst.shape), "action": f"partial: first {h} FFN hidden units"}
        )  # fmt: skip
        notes.append(f"FFN width {t.shape[unit_dim]} -> {dst.shape[unit_dim]}: first {h} units")
        copied = h * t.shape[other[0]] if other else h
        self._record(key, src, "partial", "; ".join(notes), copied, h == t.shape[unit_dim])
        return True

    def finish_new(self, initialize_new: bool = True) -> list[dict[str, str]]:
        """Zero the new branches' output projections (unless ``initialize_new`` is False: then
        they keep the target's values); list every key nothing was copied into."""
        n_src = self.analysis.n_layer
        if self.tied and "lm_head.weight" in self.sd:
            self.sd["lm_head.weight"] = self.sd["wte.weight"]  # one tensor, as in the model
        new = []
        for i in range(self.cfg.n_layer if initialize_new else 0):
            for suffix in ("weight", "bias"):
                key = f"h.{i}.mixer.w_out.{suffix}"
                if key in self.sd:
                    self.sd[key].zero_()
            ffn_copied = any(
                k.startswith(f"h.{i}.mlp.") and v["compat"] != "none" for k, v in self.keys.items()
            )
            if i >= n_src or not ffn_copied:
                out = "down_proj" if self.cfg.ffn == "swiglu" else "c_proj"
                for suffix in ("weight", "bias"):
                    if f"h.{i}.mlp.{out}.{suffix}" in self.sd:
                        self.sd[f"h.{i}.mlp.{out}.{suffix}"].zero_()
        for key in self.sd:
            if key in self.keys or (key == "lm_head.weight" and self.tied):
                continue
            init = next((d for s, d in NEW_INIT.items() if s in key), "target initialisation")
            new.append({"key": key, "init": init})
            self.keys[key] = {
                "compat": "none",
                "score": 0.0,
                "source": [],
                "note": f"new: {init}",
                "lossless": False,
            }
        return new


def convert_weights(
    source: str | os.PathLike[str] | dict[str, torch.Tensor],
    target_model: nn.Module,
    *,
    source_config: dict[str, Any] | str | os.PathLike[str] | None = None,
    strict: bool = False,
    initialize_new: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Transfer a GPT-2 / LLaMA checkpoint into an MM-Rec model's state dict.

    Args:
        source: a model directory (ours, HF, Meta), a weights file or a state dict.
        target_model: the MM-Rec model to fill; its own initialisation supplies new tensors.
        source_config: the source's config when it is not beside the weights.
        strict: raise :class:`ConversionError` unless every source tensor with a counterpart
            was transferred completely and no source tensor went unused (position tables and
            mask buffers, which MM-Rec has no place for by design, are exempt and listed).
        initialize_new: start the new branches' output projections at zero, so the converted
            model begins as the source without its attention; False keeps ``target_model``'s
            own values for every tensor the source does not supply.

    Returns:
        ``(state_dict, report)``: load the state dict with ``target_model.load_state_dict``;
        the report is JSON-ready (see ``docs/mmrec.md``).

    >>> sd, report = convert_weights("runs/tiny", MMRec(cfg))  # doctest: +SKIP
    >>> report["transferred_fraction"]  # doctest: +SKIP
    0.71
    """
    if getattr(getattr(target_model, "config", None), "arch", None) != "mmrec":
        raise ConversionError(
            f"target_model must be an MM-Rec model (config.arch == 'mmrec'), got "
            f"{type(target_model).__name__}; build one with build_model(get_config('mmrec-tiny'))"
        )
    sd, analysis = load_source(source, source_config)
    roles, dropped = source_roles(sd, analysis)
    transfer = _Transfer(target_model, analysis)
    with torch.no_grad():
        for role, src in roles.items():
            transfer.place(role, src)
        if "head" not in roles and not transfer.tied and "embed" in roles:
            embed = roles["embed"]
            transfer.place("head", Role(embed.tensor, embed.source_keys, "exact",
                                        "the source ties its head to the embedding"))  # fmt: skip
        new = transfer.finish_new(initialize_new)
    total = sum(p.numel() for p in target_model.parameters())
    converted = sorted(k for k, v in transfer.keys.items() if v["compat"] != "none")
    mmrec_only = [e["key"] for e in new if any(s in e["key"] for s in _MMREC_ONLY)]
    report = {
        "total_keys": len(transfer.keys),
        "converted_keys": len(converted),
        # a transformer counterpart exists but the source did not supply it (or not its shape)
        "missing_keys": len(transfer.keys) - len(converted) - len(mmrec_only),
        "new_keys": len(mmrec_only),  # MM-Rec's own components: no transformer counterpart
        "compatibility_score": {k: v["score"] for k, v in sorted(transfer.keys.items())},
        "source": analysis.to_dict(),
        "target": {"arch": "mmrec", "config": _config_dict(target_model.config), "n_params": total},
        "converted": converted,
        "new": new,
        "unused_source": transfer.unused,
        "dropped_by_design": dropped,
        "shape_mismatches": transfer.mismatches,
        "keys": dict(sorted(transfer.keys.items())),
        "transferred_params": transfer.copied,
        "transferred_fraction": round(transfer.copied / total, 6),
    }
    problems = [f"{e['key']} (unused: {e['reason']})" for e in transfer.unused] + [
        f"{k} ({v['compat']}: {v['note']})"
        for k, v in transfer.keys.items()
        if v["source"] and not v["lossless"]
    ]
    report["strict_problems"] = problems
    if strict and problems:
        shown = "; ".join(problems[:12]) + (
            f"; ... {len(problems) - 12} more" if len(problems) > 12 else ""
        )
        raise ConversionError(
            f"--strict: {len(problems)} source tensor(s) not transferred completely: {shown}. "
            "Fix: build the target from the source's dimensions (omit --preset/--config), or drop "
            "--strict to accept a partial transfer"
        )
    return transfer.sd, report


def _config_dict(cfg: Any) -> dict[str, Any]:
    return {"arch": cfg.arch, **dataclasses.asdict(cfg)}


def write_report(report: dict[str, Any], path: str | os.PathLike[str], force: bool = True) -> Path:
    """Write the report as JSON, atomically; refuses a path that names a weights file."""
    p = Path(path)
    if p.suffix in _WEIGHT_SUFFIXES or p.name in ("model.safetensors", "config.json"):
        raise ConversionError(
            f"refusing to write the conversion report to {str(p)!r}: that is a weights/config "
            f"file name; the report goes beside the weights, e.g. {str(p.parent / REPORT_FILE)!r}"
        )
    with atomic_file(p, force=force) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return p


def convert_to_mmrec_dir(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    preset: str = "mmrec-tiny",
    match_source: bool = True,
    config: dict[str, Any] | None = None,
    source_config: dict[str, Any] | str | os.PathLike[str] | None = None,
    strict: bool = False,
    force: bool = False,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Convert ``source`` into an MM-Rec model directory with ``conversion_report.json`` beside.

    Args:
        source: as for :func:`convert_weights`.
        out: the new model directory (``config.json``, ``model.safetensors``, ``tokenizer/``
            when the source has one, ``conversion_report.json``).
        preset: the MM-Rec preset the target starts from.
        match_source: replace the preset's shared dimensions (vocab, width, layers, heads, FFN,
            norm, bias, tying) by the source's, so everything with a counterpart transfers;
            False uses the preset as it is (mismatches are reported).
        config: MMRecConfig fields applied last.
        source_config: as for :func:`convert_weights`.
        strict: as for :func:`convert_weights`.
        force: replace an existing ``out``.
        seed: seed of the new components' initialisation.
    """
    from gptforge.modeling import MMRecConfig, build_model

    if match_source:
        _, analysis = load_source(source, source_config)
        cfg = mmrec_config_for_source(analysis, base=preset, **(config or {}))
    else:
        cfg = MMRecConfig.from_name(preset, **(config or {}))
    torch.manual_seed(seed)
    model = build_model(cfg)
    report = _convert_and_save(
        source, model, out, force, source_config=source_config, strict=strict
    )
    return Path(out), report


def _convert_and_save(
    source: str | os.PathLike[str],
    model: nn.Module,
    out: str | os.PathLike[str],
    force: bool,
    **options: Any,
) -> dict[str, Any]:
    """Convert into ``model`` (in place) and write it, its report and the source's tokenizer."""
    from gptforge.conversion.tokenizer_files import find_tokenizer_dir
    from gptforge.modeling.io import save_model_dir

    state, report = convert_weights(source, model, **options)
    model.load_state_dict(state)
    src_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    with atomic_dir(out, force=force) as tmp:
        save_model_dir(model, tmp, tokenizer_dir=find_tokenizer_dir(src_dir))
        report["output"] = str(Path(out))
        write_report(report, tmp / REPORT_FILE)
    return report


def convert_model_weights(
    source_checkpoint_path: str | os.PathLike[str],
    target_model: nn.Module,
    output_path: str | os.PathLike[str],
    strict: bool = False,
    initialize_new: bool = True,
) -> dict[str, Any]:
    """Transfer a checkpoint into ``target_model`` and save it: the MM-Rec guide's interface.

    A thin wrapper of :func:`convert_weights`: the converted weights are loaded into
    ``target_model`` (in place), which is saved as a model directory at ``output_path`` with
    ``conversion_report.json`` (and the source's tokenizer, when it has one) beside it.

    Args:
        source_checkpoint_path: a model directory (ours, HF, Meta) or a weights file.
        target_model: an MM-Rec model, e.g. ``build_model(get_config("mmrec-tiny"))``.
        output_path: the model directory to write (replaced if it exists).
        strict: fail unless every source tensor transfers completely.
        initialize_new: see :func:`convert_weights`.

    Returns:
        The report, with ``total_keys``, ``converted_keys``, ``missing_keys``, ``new_keys`` and
        ``compatibility_score`` (per target key, the share of its values copied from the source).

    >>> report = convert_model_weights("runs/demo/pretrain", model, "runs/mmrec")  # doctest: +SKIP
    >>> report["converted_keys"], report["new_keys"]  # doctest: +SKIP
    (26, 40)
    """
    return _convert_and_save(
        source_checkpoint_path, target_model, output_path, True,
        strict=strict, initialize_new=initialize_new,
    )  # fmt: skip
