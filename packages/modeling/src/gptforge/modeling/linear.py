"""Linear layers whose training matmuls run on oneDNN on x86 CPUs.

``F.linear`` on CPU calls MKL's sgemm. On the 2-core AMD Zen 4 development machine, oneDNN
(shipped inside torch) multiplies the training shapes 6-23% faster in fp32: 2048 x 256 x 704 at
218 against 198 GFLOP/s, the LM head's 512 x 256 x 8192 at 206 against 167 (measured side by
side; Intel CPUs are not measured). :class:`Linear` is ``nn.Linear`` (same parameters, names, init, state dict) whose
training forward and input gradient go through oneDNN; the weight gradient stays on MKL, which
is faster for that product. Everything else (inference, bf16/autocast, ``torch.compile``, GPUs,
tensor subclasses such as FSDP's DTensor) takes ``F.linear`` unchanged.

Set ``GPTFORGE_ONEDNN_LINEAR=0`` to use ``F.linear`` everywhere (for A/B timing).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# The default overload: dispatching on the op's schema instead measured no faster
# (docs/modeling.md has the figures).
_POINTWISE = (
    torch.ops.mkldnn._linear_pointwise.default
    if hasattr(torch.ops.mkldnn, "_linear_pointwise")
    else None
)
#: Whether this torch has oneDNN's linear op at all (x86 and Arm builds with oneDNN do).
HAS_ONEDNN_LINEAR = _POINTWISE is not None and torch.backends.mkldnn.is_available()


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's linear on an x86 CPU and it is not switched off."""
    if os.environ.get("GPTFORGE_ONEDNN_LINEAR", "1") == "0" or not HAS_ONEDNN_LINEAR:
        return False
    return torch.backends.cpu.get_cpu_capability().startswith("AVX")


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` on oneDNN, without autograd: (..., in) CPU ``x``; ``weight`` (out, in) with
    any strides, or packed by ``torch.ops.mkldnn._reorder_linear_weight``."""
    assert _POINTWISE is not None, "check HAS_ONEDNN_LINEAR first"
    return _POINTWISE(x, weight, bias, "none", [], "")  # type: ignore[no-any-return]


def onednn_operands(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`onednn_linear` can take these: fp32 plain (no subclass) CPU tensors,
    outside autocast and ``torch.compile``, with oneDNN available."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and type(x) in (torch.Tensor, nn.Parameter)
        and type(weight) in (torch.Tensor, nn.Parameter)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and onednn_linear_available()
    )


def use_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`linear` takes the oneDNN path: :func:`onednn_operands`, and autograd is
    recording (a training step; inference keeps ``F.linear``'s numbers)."""
    return (
        torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and onednn_operands(x, weight)
    )


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)  # (N, out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = onednn_linear(grad, weight.t()) if need_x else None  # (N, in)
        gw = grad.t() @ x if need_w else None  # (out, in), MKL
        gb = grad.sum(0) if ctx.has_bias and need_b else None  # (out,)
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; training matmuls on oneDNN where that is faster (see the
    module doc). The result agrees with ``F.linear`` to fp32 rounding."""
    if use_onednn(x, weight):
        # 2-D in and out of the Function: its output is then no view, so callers may write
        # into the reshaped result in place (the LM head masks its padding columns).
        out = _OneDNNLinear.apply(x.reshape(-1, x.size(-1)), weight, bias)  # (N, out)
        return out.view(*x.shape[:-1], weight.size(0))  # type: ignore[no-any-return]
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` that trains through :func:`linear` (oneDNN on x86 CPUs)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


__all__ = [
    "Linear",
    "linear",
    "HAS_ONEDNN_LINEAR",
    "onednn_linear",
    "onednn_linear_available",
    "onednn_operands",
    "use_onednn",
]
