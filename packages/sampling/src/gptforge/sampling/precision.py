"""Reduced-precision weight modes for decoding, and a check of their logits against fp32.

Decoding one token reads every weight once, so on CPU it is bound by memory bandwidth and
tokens/s scales with the bytes of weights read per token. Modes:

- ``float32``: the reference weights. On a CPU with oneDNN, when the weights are too large to
  stay in cache (``PACK_MIN_BYTES``), every projection and the LM head run through oneDNN
  with weights pre-packed for a single row (the path inductor's freezing takes): 23-29 GB/s
  against 12-15 GB/s for MKL's single-threaded GEMV on the reference machine. Otherwise
  projections with ``out >= in`` are stored transposed ``(in, out)``,
  which MKL reads faster (~1.4x for the LM head). The tied LM head keeps its weight and gets
  its own copy.
- ``float16``: half the bytes; on x86 CPUs PyTorch's fp16 GEMV is fast (F16C/AVX-512) while its
  bf16 path for a single row is not, so fp16 is the CPU choice (llama.cpp's F16 is the peer).
  On CPU it is weight-only: every projection and the LM head hold fp16 weights and compute in
  fp16, while activations, norms, attention and the KV cache stay fp32 (PyTorch's fp16
  attention on CPU costs ~190 us per layer and token, fp32 ~20 us). On GPU the whole model
  is cast.
- ``bfloat16``: half the bytes, the GPU choice (same range as fp32).
- ``int8-dynamic``: int8 per-channel weights for every ``nn.Linear`` through PyTorch's fbgemm
  kernels (activations are quantized per call); a quarter of the bytes, CPU only. The
  ``quantized::`` ops are called directly, not through the deprecated ``torch.ao`` modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from gptforge.modeling.linear import HAS_ONEDNN_LINEAR, onednn_linear
from gptforge.modeling.protocol import LanguageModel
from torch import nn

PrecisionMode = Literal["float32", "float16", "bfloat16", "int8-dynamic"]
MODES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8-dynamic")


def apply_weight_precision(model: LanguageModel, mode: str) -> LanguageModel:
    """Convert ``model`` in place to a weight precision ``mode`` and return it (eval mode).

    Args:
        model: a gptforge model.
        mode: one of :data:`MODES`.

    Set up caches again after calling this (their dtype follows the weights).
    """
    _convert(cast(nn.Module, model), mode)  # swaps layers in place: the same object
    return model


def _convert(model: nn.Module, mode: str) -> nn.Module:
    if mode not in MODES:
        raise ValueError(f"precision mode {mode!r} is not one of {list(MODES)}")
    on_cpu = _device_type(model) == "cpu"
    if mode == "int8-dynamic" and not on_cpu:
        raise ValueError(
            f"precision mode 'int8-dynamic' runs on the CPU only (fbgemm kernels), but the model "
            f"is on {_device_type(model)}; use 'bfloat16' or 'float16' on a GPU"
        )
    model.eval()
    if mode == "bfloat16" or (mode == "float16" and not on_cpu):  # GPU modes: cast everything
        return model.to(getattr(torch, mode))
    model.float()
    if mode == "float16":  # on CPU: fp16 weights, fp32 everything else
        return _swap_linears(model, _HalfWeightLinear, _HalfWeightLinear)
    if mode == "int8-dynamic":  # the tied LM head gets its own int8 copy
        return _swap_linears(model, _Int8DynamicLinear, _Int8DynamicLinear)
    if _can_pack(model):
        return _swap_linears(model, _PackedLinear, _PackedLinear)

    def transposed(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
        # Without oneDNN only widening projections gain (~1.3x at 768 -> 2304); a narrowing
        # one (3072 -> 768, the MLP's down projection) is ~12% faster as it is.
        out_features, in_features = weight.shape
        return _TransposedLinear(weight, bias) if out_features >= in_features else None

    return _swap_linears(model, transposed, _TransposedLinear)


DecodeLayer = Callable[[torch.Tensor, torch.Tensor | None], nn.Module | None]


def _swap_linears(model: nn.Module, layer: DecodeLayer, head: DecodeLayer) -> nn.Module:
    """Replace every ``nn.Linear`` by ``layer(weight, bias)`` (kept when that returns None) and
    a bias-free ``lm_head`` by ``head(weight, None)``.

    The replacements hold their own copy of the weights, so the fp32 originals are freed,
    except the head's: the new head keeps it as ``weight`` (shared with the embedding when
    tied), from which the model interface reads the padded vocabulary size, dtype and device.
    """
    lm_head = getattr(model, "lm_head", None)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not lm_head:
                new = layer(child.weight, child.bias)
                if new is not None:
                    setattr(parent, name, new)
    if isinstance(lm_head, nn.Linear) and lm_head.bias is None:
        new_head = head(lm_head.weight, None)
        assert new_head is not None, "the head is always replaced"
        new_head.weight = lm_head.weight
        model.lm_head = new_head
    return model


class _Int8DynamicLinear(nn.Module):
    """A linear layer (or bias-free LM head) with int8 per-channel weights, on fbgemm.

    Weights are quantized symmetrically per output row and pre-packed
    (``quantized::linear_prepack``); each call quantizes the activations per tensor and
    returns fp32 (``quantized::linear_dynamic`` with fbgemm's reduced range). The ops are
    called directly, without ``torch.ao``'s module wrappers (deprecated, and 13 us of Python
    per call: ~0.6 ms of a ``gpt2`` decode step).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()  # (out,)
        zeros = torch.zeros(w.size(0), dtype=torch.long)
        with warnings.catch_warnings():
            # torch marks quantized tensors deprecated; fbgemm's packed int8 GEMM still
            # takes its weights only in that form.
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
        b = None if bias is None else bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(q, b)
        op = torch.ops.quantized.linear_dynamic.default
        self._op = getattr(op, "_op", op)  # the C++ callable: no per-call Python dispatch checks

    @torch.compiler.disable  # fbgemm's packed weight is opaque to inductor: runs eagerly
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(x, self._packed, True)  # reduce_range=True, as fbgemm expects


def _device_type(model: nn.Module) -> str:
    p = next(model.parameters(), None)
    return "cpu" if p is None else p.device.type


class _HalfWeightLinear(nn.Module):
    """A linear layer (or bias-free LM head) with fp16 weights inside a fp32 model.

    The input is cast to fp16 for the matmul and the output back to the input's dtype.
    """

    half_weight: torch.Tensor
    half_bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("half_weight", weight.detach().half(), persistent=False)
        half_bias = None if bias is None else bias.detach().half()
        self.register_buffer("half_bias", half_bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.half(), self.half_weight, self.half_bias).to(x.dtype)


#: Pack for oneDNN only when the weights cannot stay in the CPU's caches between decode steps:
#: its GEMV streams memory ~2x faster than MKL's, but costs ~12 us more per call, which loses
#: when the weights are cache-resident (``tiny``: 17 MB).
PACK_MIN_BYTES = 64 << 20


def _can_pack(model: nn.Module) -> bool:
    """Whether oneDNN's packed fp32 linear serves this model: CPU weights too large for the
    caches, and a torch with oneDNN."""
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    return _device_type(model) == "cpu" and linear_bytes >= PACK_MIN_BYTES and HAS_ONEDNN_LINEAR


class _PackedLinear(nn.Module):
    """A fp32 linear layer (or bias-free LM head) on oneDNN with the weight pre-packed in
    oneDNN's opaque layout."""

    packed: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight.detach().float().contiguous()
        # batch_size=1: the layout for single-row decoding; larger batches stay correct.
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = weight.size(1), weight.size(0)

    # Inductor cannot lower oneDNN's opaque packed weight; under torch.compile this layer runs
    # eagerly between compiled regions (compile the plain fp32 model instead: inductor packs
    # weights itself).
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (N, in)
        out = onednn_linear(flat, self.packed, self.bias)  # built only when _can_pack() said yes
        return out.view(*x.shape[:-1], self.out_features)  # (..., out)


class _TransposedLinear(nn.Module):
    """``nn.Linear`` for decoding: ``bias + x @ W_t`` from a contiguous ``(in, out)`` weight."""

    weight_t: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight_t", weight.detach().t().contiguous(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))  # (N, in)
        out = (
            torch.addmm(self.bias, flat, self.weight_t)
            if self.bias is not None
            else flat @ self.weight_t
        )
        return out.view(*x.shape[:-1], out.size(-1))  # (..., out)


@dataclass(frozen=True)
class LogitsCheck:
    """How far a reduced-precision model's logits are from the fp32 reference."""

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    kl_divergence: float

    def ok(self, min_top1: float = 0.9, max_kl: float = 0.05) -> bool:
        """Whether the mode is usable: most argmaxes agree and the distributions are close."""
        return self.top1_agreement >= min_top1 and self.kl_divergence <= max_kl


@torch.inference_mode()
def check_logits(reference: nn.Module, candidate: nn.Module, idx: torch.Tensor) -> LogitsCheck:
    """Compare the logits of ``candidate`` with ``reference`` (fp32) on the tokens ``idx`` (B, T)."""
    ref, _ = reference(idx)  # (B, T, V)
    got, _ = candidate(idx)  # (B, T, V)
    ref, got = ref.float(), got.float()
    diff = (ref - got).abs()
    logp_ref = torch.log_softmax(ref, dim=-1)
    logp_got = torch.log_softmax(got, dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logp_got)).sum(-1).mean()
    return LogitsCheck(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top1_agreement=float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        kl_divergence=float(kl),
    )
