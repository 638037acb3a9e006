"""Which GGML type each GGUF tensor gets, and K-quants through llama.cpp's own quantizer.

The types written with the ``gguf`` package (``f32``, ``f16``, ``q8_0``, ``q4_0``, ``q4_1``,
``q5_0``, ``q5_1``) follow the rule of llama.cpp's tools:

- 1-D tensors (norms, biases), position embeddings and RoPE factors stay F32 at every type
  (``convert_hf_to_gguf.py`` keeps ``POS_EMBD`` in F32; ``llama-quantize`` never quantizes it);
- the output head (or the token embedding when it doubles as the head) is where
  ``llama-quantize`` spends more bits: Q6_K for the 4- and 5-bit types. The ``gguf`` package has no
  Q6_K quantizer, so it gets Q8_0 here (more bits still, never fewer);
- a row length that is not a multiple of the type's block falls back to F16, as
  ``convert_hf_to_gguf.py`` does when ``gguf.quants`` refuses a shape.

K-quants (``q4_k_m``, ``q5_k_m``, ``q6_k``) are made by ``llama_model_quantize`` from
llama-cpp-python, on an F32 file we write first, so the per-tensor mix (attention and FFN-down
layers that get more bits, K-type fallbacks for rows not a multiple of 256) is llama.cpp's own.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gptforge.conversion.errors import ConversionError

__all__ = ["GGUF_DTYPES", "KQUANT_DTYPES", "GGUFDtype", "TensorChoice", "kquantize", "tensor_type"]

GGUFDtype = Literal[
    "f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k"
]
KQUANT_DTYPES: tuple[str, ...] = ("q4_k_m", "q5_k_m", "q6_k")
GGUF_DTYPES: tuple[str, ...] = (
    "f32",
    "f16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    *KQUANT_DTYPES,
)
# Never quantized: llama.cpp's tools keep these in F32 whatever the file type.
ALWAYS_F32 = frozenset({"position_embd.weight", "rope_freqs.weight"})
K_BLOCK = 256  # QK_K: the row-length unit of every K-type
INSTALL_HINT = (
    "pip install 'gptforge-conversion[llama-cpp]' (or pip install llama-cpp-python; it compiles "
    "llama.cpp, a few minutes)"
)


TensorChoice = tuple[Any, str | None]
"""``(GGMLQuantizationType, why it is not the file type's own type or None)``."""


def tensor_type(name: str, shape: tuple[int, ...], dtype: str, head: str) -> TensorChoice:
    """The type of tensor ``name`` in a ``dtype`` file written with the ``gguf`` package.

    Args:
        name: The GGUF tensor name.
        shape: Its shape in our (PyTorch) order: the last dimension is the row length.
        dtype: A file type of :data:`GGUF_DTYPES` other than the K-quants.
        head: The tensor that computes the logits (``output.weight``, or ``token_embd.weight``
            when the file has no separate head).
    """
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) == 1 or name in ALWAYS_F32 or not name.endswith(".weight") or dtype == "f32":
        return Q.F32, None
    if dtype == "f16":
        return Q.F16, None
    want = Q[dtype.upper()]
    why = None
    if name == head and want != Q.Q8_0:
        want, why = Q.Q8_0, "output head: Q8_0 (llama-quantize gives it Q6_K)"
    block = gguf.GGML_QUANT_SIZES[want][0]
    if shape[-1] % block:
        return Q.F16, f"row length {shape[-1]} is not a multiple of {block}: F16"
    return want, why


def quantized_bytes(shape: tuple[int, ...], qtype: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(byte shape, numpy dtype, size)`` of a tensor of ``shape`` stored as ``qtype``."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return shape, np.dtype(np.float32), 4 * math.prod(shape)
    if qtype == Q.F16:
        return shape, np.dtype(np.float16), 2 * math.prod(shape)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)


def encode(arr: np.ndarray, qtype: Any) -> np.ndarray:
    """``arr`` (float32) stored as ``qtype``."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return arr
    if qtype == Q.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, qtype)


def require_llama_cpp(dtype: str) -> Any:
    """The ``llama_cpp`` module, or one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise ConversionError(
            f"GGUF type {dtype!r} is made by llama.cpp's quantizer, which needs llama-cpp-python: "
            f"{INSTALL_HINT}; or pick one of f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1"
        ) from None
    return llama_cpp


def kquantize(src: Path, out: Path, dtype: str, threads: int = 0) -> dict[str, str]:
    """Quantize the F32 GGUF ``src`` to ``out`` with llama.cpp; returns its fallbacks.

    Returns:
        ``{tensor name: type}`` for the quantized tensors whose row length is not a multiple of
        256, which llama.cpp stores in a non-K type (Q5_0, Q5_1, Q8_0 or F16).
    """
    import gguf

    llama_cpp = require_llama_cpp(dtype)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{dtype.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    # llama-cpp-python prints llama.cpp's log through this logger; the quantizer's line per tensor
    # would bury the fallback report below, so only its errors get through.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    finally:
        log.setLevel(level)
    if rc != 0:
        raise ConversionError(
            f"llama.cpp's quantizer failed on {str(src)!r} (code {rc}) for {dtype!r}"
        )
    Q = gguf.GGMLQuantizationType
    k_types = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
    fallbacks = {}
    for t in gguf.GGUFReader(out).tensors:
        row = int(t.shape[0])  # gguf lists dimensions innermost first
        if t.tensor_type not in (Q.F32,) and t.tensor_type not in k_types and row % K_BLOCK:
            fallbacks[t.name] = t.tensor_type.name
    return fallbacks
