"""One optimizer step: this rank's micro-batches, forward and backward, clipping, the update.

Gradient accumulation follows nanoGPT: every micro-batch runs forward and backward, and the
gradients are reduced across ranks (DDP all-reduce, FSDP reduce-scatter) on the last one only.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from gptforge.training.config import LoopConfig
from gptforge.training.data import BatchSource
from gptforge.training.distributed import DistInfo, all_reduce_mean
from gptforge.training.fsdp import to_float
from gptforge.training.state import Job, TrainState
from torch import nn


class MicroBatch(NamedTuple):
    """Inputs and targets on the device, and the weight of their loss in the step's mean."""

    x: torch.Tensor  # (B, T)
    y: torch.Tensor  # (B, T), -100 where no loss is counted
    weight: float


@dataclass(frozen=True)
class StepStats:
    """What one step measured; ``finite`` False means it was not applied (divergence)."""

    loss: float  # mean over every counted target of the global batch
    lr: float
    grad_norm: float  # before clipping; inf/NaN on a step the fp16 scaler skips
    tokens: int  # input tokens of the step over all ranks
    finite: bool


def token_weights(targets: list[torch.Tensor], info: DistInfo, device: torch.device) -> list[float]:
    """Weights of the micro-batch losses of one step, so the step minimises the mean over every
    counted target of the global batch.

    Each micro-batch's loss is a mean over its own counted targets (not ``-100``). With a mask
    (fine-tuning's response-only loss) those counts differ, and averaging the means would
    weight tokens by how the batch was split across micro-batches and ranks. Weight ``n_i *
    world / N`` (the ranks' gradients are averaged) makes the step independent of the split;
    with no mask it is ``1 / grad_accum``.
    """
    counts = [int((y != -100).sum()) for y in targets]
    total = float(sum(counts))
    if info.enabled:  # one small all-reduce: the global count
        total = float(all_reduce_mean(torch.tensor(total, device=device), info)) * info.world_size
    return [n * info.world_size / total if total > 0 else 0.0 for n in counts]


def next_micro_batches(job: Job, state: TrainState, train: BatchSource) -> list[MicroBatch]:
    """This rank's share of the next global batch, as ``cfg.grad_accum`` micro-batches on the
    device. Ranks interleave within each micro-batch, so the global batch is the same for any
    number of ranks."""
    size, world, rank = job.cfg.batch_size, job.info.world_size, job.info.rank
    indices = state.sampler.take(job.per_step)
    starts = [(micro * world + rank) * size for micro in range(job.cfg.grad_accum)]
    batches = [train.batch(indices[s : s + size]) for s in starts]
    weights = token_weights([y for _, y in batches], job.info, job.device)
    return [
        MicroBatch(x.to(job.device, non_blocking=True), y.to(job.device, non_blocking=True), w)
        for (x, y), w in zip(batches, weights, strict=True)
    ]


def train_step(job: Job, state: TrainState, micro_batches: list[MicroBatch]) -> StepStats:
    """Accumulate the gradients of ``micro_batches``, clip them and take an optimizer step at
    the scheduled learning rate; a non-finite loss or gradient norm leaves the weights and the
    counters of ``state`` as they were (``finite=False``), so the caller can stop cleanly."""
    lr = job.lr(state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=job.device)
    for micro, (x, y, weight) in enumerate(micro_batches):
        last = micro == len(micro_batches) - 1
        try:
            with _grad_sync(job, state, last), job.autocast():
                _, loss = state.train_model(x, y, return_logits=False)  # fused head + loss
            if weight == 0.0:  # no counted target: a NaN mean, weighted out
                loss = loss.nan_to_num(0.0)
            state.scaler.scale(loss * weight).backward()
        except torch.OutOfMemoryError as exc:
            raise RuntimeError(_oom_message(job.cfg, exc)) from exc
        loss_sum += loss.detach() * weight
    loss_value = float(all_reduce_mean(loss_sum, job.info))  # the mean over counted targets
    if state.scaler.is_enabled():
        state.scaler.unscale_(state.optimizer)  # clip the true gradients
    grad_norm = _grad_norm(state.model, job.cfg.grad_clip)
    # With loss scaling an overflowing gradient only skips the step (and halves the scale);
    # the run diverged when the loss itself is not finite.
    grad_ok = math.isfinite(grad_norm) or state.scaler.is_enabled()
    finite = math.isfinite(loss_value) and grad_ok
    if finite:
        state.scaler.step(state.optimizer)  # optimizer.step(), skipped on inf/NaN under fp16
        state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    tokens = sum(x.numel() for x, _, _ in micro_batches) * job.info.world_size
    if finite:
        state.step, state.tokens, state.last_loss = (
            state.step + 1,
            state.tokens + tokens,
            loss_value,
        )
    return StepStats(loss_value, lr, grad_norm, tokens, finite)


def _grad_sync(job: Job, state: TrainState, last: bool) -> contextlib.AbstractContextManager:
    """Reduce gradients across ranks on the step's last micro-batch only."""
    if job.use_fsdp:
        state.model.set_requires_gradient_sync(last)  # type: ignore[operator]
    elif job.info.enabled and not last:
        return state.train_model.no_sync()  # type: ignore[operator]
    return contextlib.nullcontext()


def _grad_norm(model: nn.Module, clip: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    return to_float(norm)  # a DTensor under FSDP


def _oom_message(cfg: LoopConfig, exc: BaseException) -> str:
    return (
        f"out of memory with batch_size={cfg.batch_size} ({exc}); lower --batch-size (and raise "
        f"--grad-accum to keep the global batch) or lower --context-length"
    )
