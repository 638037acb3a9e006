"""What a training run carries: the fixed :class:`Job` and the step-to-step :class:`TrainState`.

:func:`prepare_state` builds the state the loop starts from: the model placed for the run (DDP,
FSDP2 or one process), the optimizer over its trainable parameters (LoRA adapters only when the
base is frozen), the fp16 loss scaler, the data sampler and, on ``--resume``, everything the
newest usable checkpoint holds.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from gptforge.training.checkpoint import set_rng_state
from gptforge.training.config import LoopConfig
from gptforge.training.data import BatchSource, EpochSampler
from gptforge.training.distributed import DistInfo
from gptforge.training.optim import make_optimizer
from gptforge.training.schedule import lr_at
from torch import nn

if TYPE_CHECKING:
    from gptforge.training.checkpointer import Checkpointer


def bf16_native() -> bool:
    """Whether the GPU computes in bf16 natively (Ampere and later; not emulated as on a V100)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_context(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU for ``auto``; explicit ``bfloat16``/``float16`` anywhere."""
    if dtype == "auto":
        use_bf16 = device.type == "cuda" and bf16_native()
        dtype = "bfloat16" if use_bf16 else "float32"
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def fsdp_param_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 FSDP mixed precision on a GPU when ``dtype`` resolves to bfloat16, else None."""
    if device.type != "cuda":
        return None
    if dtype == "bfloat16" or (dtype == "auto" and bf16_native()):
        return torch.bfloat16
    return None


def total_steps(cfg: LoopConfig, examples: int, per_step: int) -> int:
    """``cfg.max_steps``, or the steps of ``cfg.epochs`` passes over ``examples``."""
    if cfg.epochs is None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * examples / per_step))


def uses_fsdp(cfg: LoopConfig, info: DistInfo) -> bool:
    """Whether this run shards with FSDP (``--parallel fsdp`` under torchrun)."""
    return info.enabled and cfg.parallel == "fsdp"


@dataclass(frozen=True)
class Job:
    """What stays fixed for a whole run: settings, placement and the step budget."""

    cfg: LoopConfig
    info: DistInfo
    device: torch.device
    use_fsdp: bool
    examples: int  # training examples: an epoch
    per_step: int  # examples per optimizer step over all ranks
    max_steps: int

    @classmethod
    def create(
        cls, cfg: LoopConfig, info: DistInfo, device: torch.device, train: BatchSource
    ) -> Job:
        """The job of ``cfg`` on ``train``; refuses settings the placement cannot run."""
        use_fsdp = uses_fsdp(cfg, info)
        if use_fsdp and cfg.dtype == "float16":
            raise ValueError(
                "--dtype float16 with --parallel fsdp is not supported (its loss scaling needs "
                "sharded gradients); use --dtype bfloat16"
            )
        per_step = cfg.batch_size * cfg.grad_accum * info.world_size
        max_steps = total_steps(cfg, len(train), per_step)
        return cls(cfg, info, device, use_fsdp, len(train), per_step, max_steps)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context forward passes run in."""
        return autocast_context(self.cfg.dtype, self.device)

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): warmup, then decay."""
        cfg = self.cfg
        return lr_at(
            step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=self.max_steps,
            schedule=cfg.lr_schedule,
        )

    def epoch(self, step: int) -> float:
        """Passes over the training data after ``step`` steps (for the logs)."""
        return round(step * self.per_step / self.examples, 4)


@dataclass
class TrainState:
    """What changes from step to step, and the modules and optimizer that change it."""

    model: nn.Module  # unwrapped (under FSDP: this rank's shards): clipping, eval, callbacks
    train_model: nn.Module  # what runs forward and backward: DDP- or compile-wrapped if asked
    export_model: nn.Module  # rank 0's whole model: checkpoints and the top level come from it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: EpochSampler
    step: int = 0
    tokens: int = 0
    last_loss: float | None = None
    val_loss: float | None = None
    evaluated_at: int = -1  # the step val_loss was measured at

    def fresh_val_loss(self) -> float | None:
        """The validation loss if it was measured at this step (what a checkpoint is scored by)."""
        return self.val_loss if self.evaluated_at == self.step else None


def prepare_state(job: Job, model: nn.Module, ckpt: Checkpointer, *, resume: bool) -> TrainState:
    """Place ``model`` for ``job``, build its optimizer and scaler and, with ``resume``, restore
    the newest usable checkpoint; the returned state is in training mode at its first step."""
    cfg, info, device = job.cfg, job.info, job.device
    model, export_model, saved = _place(job, model, ckpt, resume=resume)
    state = TrainState(
        model=model,
        train_model=model,  # wrapped below, once the state is restored
        export_model=export_model,
        optimizer=make_optimizer(  # over parameters with requires_grad: LoRA freezes the base
            model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=(cfg.beta1, cfg.beta2),
            device_type=device.type,
        ),
        # float16 gradients underflow without loss scaling; bf16 and fp32 need none (disabled).
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16"),
        sampler=EpochSampler(job.examples, cfg.seed),
    )
    if saved is not None:
        _restore(job, state, saved)
        ckpt.write(f"resumed from {ckpt.resumed_from} at step {state.step}")
    else:
        torch.manual_seed(cfg.seed + info.rank)
    state.train_model = _wrap(job, model)
    state.train_model.train()
    return state


def _place(
    job: Job, model: nn.Module, ckpt: Checkpointer, *, resume: bool
) -> tuple[nn.Module, nn.Module, dict[str, Any] | None]:
    """The model to train, the whole model checkpoints are written from, and the resumed
    checkpoint's state (None on a fresh run)."""
    if not job.use_fsdp:
        saved = ckpt.load(model) if resume else None
        return model, model, saved
    from gptforge.training import fsdp

    # Rank 0 holds the whole model (on the CPU when pretrain built it there), the other ranks
    # at most a meta one; the checkpoint's weights go into rank 0's, which then seeds every
    # rank's shards and is the copy checkpoints are written from.
    full = model if job.info.is_main else None
    if full is None:
        model.to("meta")  # free a whole model the caller may have built here
    saved = ckpt.load(full) if resume else None
    export_model = full.to("cpu") if full is not None else model
    param_dtype = fsdp_param_dtype(job.cfg.dtype, job.device)
    sharded = fsdp.shard_from_rank0(full, model.config, job.device, param_dtype=param_dtype)
    return sharded, export_model, saved


def _wrap(job: Job, model: nn.Module) -> nn.Module:
    """DDP around a replicated model (FSDP shards instead), then ``torch.compile`` if asked."""
    wrapped = model
    if job.info.enabled and not job.use_fsdp:
        from torch.nn.parallel import DistributedDataParallel

        ids = [job.device.index] if job.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    if job.cfg.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def _restore(job: Job, state: TrainState, saved: dict[str, Any]) -> None:
    """Put a checkpoint's optimizer, data position, loss scale, RNG streams and counters back."""
    if job.use_fsdp:
        from gptforge.training import fsdp

        fsdp.load_full_optimizer_state(state.model, state.optimizer, saved["optimizer"])
    else:
        state.optimizer.load_state_dict(saved["optimizer"])
    state.sampler.load_state_dict(saved["sampler"])
    if state.scaler.is_enabled() and saved.get("scaler"):  # {} from a run without fp16
        state.scaler.load_state_dict(saved["scaler"])
    rank, ranks = job.info.rank, saved.get("rng_ranks") or []
    set_rng_state(ranks[rank] if rank < len(ranks) else saved["rng"], job.device)
    if 0 < len(ranks) <= rank:  # more ranks than the run had: a stream of its own
        torch.manual_seed(job.cfg.seed + rank + 7919 * int(saved["step"]))
    state.step, state.tokens = int(saved["step"]), int(saved["tokens"])
