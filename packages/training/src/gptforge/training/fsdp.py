"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for models that do not fit one device.

The model is sharded per transformer block (each element of a top-level ``nn.ModuleList``:
``h`` for GPT, the layer list of the other architectures) and then at the root. The root group
owns the embeddings, the final norm and the output head, so a tied ``wte``/``lm_head`` weight is
one parameter in one group and stays tied. Checkpoints are gathered into full, CPU-resident state
dicts on rank 0 (``get_model_state_dict``/``get_optimizer_state_dict`` with
``full_state_dict=True, cpu_offload=True``), so a run directory has the same files as a
single-process or DDP run.

Works with NCCL on GPU and with gloo on CPU (torch >= 2.6; checked with 2.13).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: every element of the model's top-level ``ModuleList``s."""
    blocks: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            blocks.extend(child)
    return blocks


def shard_model(model: nn.Module, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Apply ``fully_shard`` to every transformer block, then to the root (in place).

    Args:
        model: The unwrapped model, on its device, inside an initialised process group.
        param_dtype: Compute dtype of the all-gathered parameters (``torch.bfloat16`` for
            mixed precision on GPU); gradients are reduced in float32. ``None``: float32.

    Returns:
        The same module object, now holding ``DTensor`` shards.

    Raises:
        ValueError: The model has no top-level ``ModuleList`` of blocks to shard.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        children = [name for name, _ in model.named_children()]
        raise ValueError(
            f"cannot find transformer blocks to shard in {type(model).__name__} (children "
            f"{children!r}); FSDP needs a top-level nn.ModuleList of blocks; use --parallel ddp"
        )
    mp = (
        MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        if param_dtype is not None
        else MixedPrecisionPolicy()
    )
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def shard_from_rank0(
    full: nn.Module | None,
    config: Any,
    device: torch.device,
    *,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """A sharded model on ``device`` with rank 0's weights, never whole on any device.

    Every rank builds ``config``'s model on the meta device, shards it (:func:`shard_model`),
    allocates only its own shards on ``device`` and receives them from rank 0's ``full`` model
    (a broadcast; a collective, so every rank calls this). Ties are made on the meta model
    before sharding, so a tied weight stays one parameter.

    Args:
        full: rank 0's complete model (any device, usually the CPU); ``None`` on the others.
        config: the model configuration.
        device: where the shards live.
        param_dtype: see :func:`shard_model`.
    """
    from gptforge.modeling import build_model
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    with torch.device("meta"):
        model = cast(nn.Module, build_model(config))  # sharding works on modules
    shard_model(model, param_dtype=param_dtype)
    model.to_empty(device=device)
    state = full.state_dict() if full is not None else {}
    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=True))
    return model


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather the full model state dict to CPU on rank 0 (collective: every rank calls it).

    Other ranks receive an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Gather the full optimizer state (keyed by parameter name) to CPU on rank 0 (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state dict (from :func:`full_optimizer_state`) into the shards.

    Every rank passes the whole dict (each reads the checkpoint); each keeps its own shard.

    Raises:
        ValueError: ``state`` is keyed by parameter index (a DDP or single-process checkpoint).
    """
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    keys = list(state.get("state", {}))
    if keys and not isinstance(keys[0], str):
        raise ValueError(
            "the checkpoint's optimizer state is keyed by parameter index (written by a DDP or "
            "single-process run), not by name as --parallel fsdp writes it; resume with the "
            "--parallel setting the run was started with"
        )
    set_optimizer_state_dict(model, optimizer, state, options=_options())


def to_float(value: torch.Tensor) -> float:
    """A Python float from a tensor that may be a ``DTensor`` (e.g. a clipped gradient norm)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)


def all_finite(model: nn.Module) -> bool:
    """True when every local parameter shard is finite (per rank; DTensor-aware)."""
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if not bool(torch.isfinite(local).all()):
            return False
    return True
