"""Name-map helpers shared by the format modules.

A weight map is a module-level ``dict`` from a source name template to a target name template,
``{}`` standing for the layer index and ``None`` marking a source tensor that is dropped (a
causal-mask buffer, a rotary cache). The reverse map is the inverted dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.weights import PlannedTensor, TensorInfo

__all__ = ["WeightMap", "invert", "map_key", "plan_conversion", "split_layer"]

WeightMap = Mapping[str, str | None]
_LAYER = re.compile(r"\.(\d+)\.")


def split_layer(key: str) -> tuple[str, int | None]:
    """Replace the first ``.N.`` of ``key`` with ``.{}.``; return the template and ``N``.

    >>> split_layer("h.3.attn.c_attn.weight")
    ('h.{}.attn.c_attn.weight', 3)
    >>> split_layer("wte.weight")
    ('wte.weight', None)
    """
    m = _LAYER.search(key)
    if m is None:
        return key, None
    return key[: m.start()] + ".{}." + key[m.end() :], int(m.group(1))


def invert(weight_map: WeightMap) -> dict[str, str]:
    """The reverse of a weight map (dropped keys have no reverse)."""
    out: dict[str, str] = {}
    for src, dst in weight_map.items():
        if dst is None:
            continue
        if dst in out:
            raise AssertionError(f"weight map is not invertible: {dst!r} has two sources")
        out[dst] = src
    return out


def map_key(key: str, weight_map: WeightMap, what: str) -> str | None:
    """Map one tensor name through ``weight_map``; ``None`` if the tensor is dropped.

    Raises:
        ConversionError: naming the key when the map has no entry for it.
    """
    template, layer = split_layer(key)
    if template not in weight_map:
        raise ConversionError(
            f"unmapped tensor {key!r} in the {what} checkpoint (template {template!r}); known "
            f"templates: {sorted(weight_map)}. The checkpoint is probably of another architecture "
            "or variant; check the source with `gptforge inspect`"
        )
    target = weight_map[template]
    if target is None:
        return None
    return target.format(layer) if layer is not None else target


def plan_conversion(
    source: Mapping[str, TensorInfo],
    get: Callable[[str], torch.Tensor],
    weight_map: WeightMap,
    expected: Mapping[str, TensorInfo],
    transform: Callable[[str, torch.Tensor], torch.Tensor],
    *,
    what: str,
    fill: Callable[[str, TensorInfo], Callable[[], torch.Tensor] | None] | None = None,
    dtype: torch.dtype | None = None,
) -> list[PlannedTensor]:
    """Plan a tensor-by-tensor conversion from ``source`` to the ``expected`` target tensors.

    Every source tensor must map to an expected target (or be dropped by the map) and every
    expected target must be produced, either from a source tensor or by ``fill`` (e.g. zero
    biases for a format that always has them). Shapes are checked at planning time, from the
    tensor infos alone, so a mismatch fails before anything is written.

    Args:
        source: names, shapes and dtypes of the source tensors.
        get: loads one source tensor by name (memory-mapped readers keep this cheap).
        weight_map: source template -> target template (``None`` drops the tensor).
        expected: names, shapes and dtypes of the target tensors.
        transform: ``(target_name, source_tensor) -> target_tensor`` (transposes, permutes,
            vocab padding); must produce the expected shape.
        what: how to name the source in errors (``"Hugging Face GPT-2"``).
        fill: for a target without a source tensor, returns a function making it (zero biases,
            an untied head copied from the embedding) or ``None`` to make it an error.
        dtype: cast every produced tensor to this dtype (default: the expected dtype).
    """
    by_target: dict[str, str] = {}
    for key in source:
        target = map_key(key, weight_map, what)
        if target is None:
            continue
        if target not in expected:
            raise ConversionError(
                f"tensor {key!r} of the {what} checkpoint maps to {target!r}, which the target "
                f"model does not have (it has {len(expected)} tensors, e.g. {sorted(expected)[:6]}); "
                "the configuration does not match the weights (layers, bias or tying)"
            )
        if target in by_target:
            raise ConversionError(
                f"tensors {by_target[target]!r} and {key!r} both map to {target!r}"
            )
        by_target[target] = key
        # Run the transform on a meta tensor: shapes are checked before any data is read.
        probe = torch.empty(source[key].shape, dtype=source[key].dtype, device="meta")
        shape = tuple(transform(target, probe).shape)
        if shape != expected[target].shape:
            raise ConversionError(
                f"shape mismatch for {key!r} -> {target!r}: source {source[key].shape} converts to "
                f"{shape}, the target model expects {expected[target].shape}; the configuration "
                "(width, heads, vocab, context) does not match the weights"
            )
    plan = []
    for target, info in expected.items():
        out_dtype = dtype or info.dtype
        if target in by_target:
            src = by_target[target]
            plan.append(
                PlannedTensor(
                    target,
                    info.shape,
                    out_dtype,
                    _producer(src, target, get, transform, info, out_dtype),
                )
            )
            continue
        made = fill(target, info) if fill is not None else None
        if made is None:
            raise ConversionError(
                f"the {what} checkpoint has no tensor for {target!r} (shape {info.shape}); "
                f"present: {len(source)} tensors, e.g. {sorted(source)[:6]}. The checkpoint is "
                "incomplete or the configuration does not match it"
            )
        plan.append(PlannedTensor(target, info.shape, out_dtype, _cast_to(made, out_dtype)))
    return plan


def _cast_to(make: Callable[[], torch.Tensor], dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: make().to(dtype)


def _producer(
    src: str,
    target: str,
    get: Callable[[str], torch.Tensor],
    transform: Callable[[str, torch.Tensor], torch.Tensor],
    info: TensorInfo,
    dtype: torch.dtype,
) -> Callable[[], torch.Tensor]:
    def produce() -> torch.Tensor:
        out = transform(target, get(src))
        if tuple(out.shape) != info.shape:
            raise ConversionError(
                f"shape mismatch for {src!r} -> {target!r}: got {tuple(out.shape)}, expected {info.shape}"
            )
        return out.to(dtype)

    return produce


def materialize(plan: list[PlannedTensor]) -> dict[str, torch.Tensor]:
    """Run a plan in memory (the dict-level API)."""
    return {t.name: t.produce() for t in plan}
