"""The optimisation loop shared by pre-training and fine-tuning.

One call of :func:`train_loop` runs (or resumes) a job to ``cfg.max_steps``: micro-batches with
gradient accumulation, the warmup + decay schedule, clipping, evaluation on a fixed validation
subset, sample generations, ``metrics.jsonl``, plots, checkpoints, the top-level model directory
and, under ``torchrun``, DDP or FSDP2 (``cfg.parallel``). It is deliberately model- and
data-agnostic: it takes a module whose ``forward(x, targets)`` returns ``(logits, loss)`` and
:class:`~gptforge.training.data.BatchSource` objects.

:func:`train_loop` only decides the cadence; the work is done by components:
:func:`~gptforge.training.state.prepare_state` (placement, optimizer, resume),
:func:`~gptforge.training.step.train_step` (one optimizer step),
:class:`~gptforge.training.checkpointer.Checkpointer` (save, resume, ``--keep best``),
:class:`Progress` (metrics rows, the progress bar) and
:class:`~gptforge.training.stopwatch.Stopwatch` (the overhead accounting).

Exact resume: everything that decides step ``k+1`` (weights, AdamW moments, RNG streams, data
position, counters) is in checkpoint ``k``; the schedule is a function of the step, and sample
generations use their own generator so they never disturb the training RNG.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from gptforge.modeling.device import auto_device_name
from gptforge.modeling.device import resolve_device as modeling_device
from gptforge.training.checkpointer import Checkpointer, SaveModel, claim_run_dir
from gptforge.training.config import LoopConfig
from gptforge.training.data import BatchSource, eval_indices
from gptforge.training.distributed import DistInfo, all_reduce_mean
from gptforge.training.fsdp import all_finite
from gptforge.training.metrics import MetricsLogger, write_plots
from gptforge.training.state import Job, TrainState, prepare_state, uses_fsdp
from gptforge.training.step import StepStats, next_micro_batches, train_step
from gptforge.training.stopwatch import Stopwatch
from torch import nn

__all__ = [
    "Callback",
    "LoopResult",
    "TrainingDiverged",
    "resolve_device",
    "train_loop",
    "uses_fsdp",
]

Callback = Callable[[int, nn.Module, dict[str, Any]], None]
# Phases of the loop's own work (the overhead it reports), and the useful work besides training
# steps that the overhead is not measured against.
OVERHEAD_PHASES = ("data", "log", "checkpoint")
EXCLUDED_PHASES = ("eval", "sample")


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the last good checkpoint was kept."""


@dataclass
class LoopResult:
    """What a finished (or resumed-and-finished) run reached."""

    run_dir: Path
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    seconds: float
    overhead_fraction: float


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` picks CUDA, else MPS, else the CPU; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = auto_device_name()
    if info.enabled and name.startswith("cuda:"):
        raise ValueError(
            f"device {name!r} under torchrun would put every rank on one GPU; pass --device cuda "
            "(each rank takes cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if name == "cuda" and info.enabled:
        name = f"cuda:{info.local_rank}"
    return modeling_device(name)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    source: BatchSource,
    *,
    batch_size: int,
    batches: int,
    device: torch.device,
    ctx: Callable[[], contextlib.AbstractContextManager],
) -> float:
    """Token-weighted mean loss over a fixed, evenly spread subset of ``source``."""
    was_training = model.training
    model.eval()
    indices = eval_indices(len(source), batch_size * max(1, batches))
    total, count = 0.0, 0
    for start in range(0, len(indices), batch_size):
        x, y = source.batch(indices[start : start + batch_size])
        x, y = x.to(device), y.to(device)
        with ctx():
            _, loss = model(x, y, return_logits=False)
        weight = int((y != -100).sum())
        total += float(loss) * weight
        count += weight
    model.train(was_training)
    return total / max(1, count)


def warn_small_val(val: BatchSource | None, batch_size: int, write: Callable[[str], None]) -> None:
    """Say so when validation is empty or smaller than one batch: its loss would mislead."""
    n = len(val) if val is not None else 0
    if n == 0:
        write(
            "warning: the validation split is empty, so no validation loss will be reported "
            "(and --keep best has nothing to choose from); hold out more data "
            "(`gptforge data prepare --val-fraction`, `gptforge finetune --val-fraction`)"
        )
    elif n < batch_size:
        write(
            f"warning: the validation split holds {n} examples, fewer than one batch of "
            f"{batch_size}; its loss is noisy. Hold out more data or lower --batch-size"
        )


class Progress:
    """What the run reports: ``metrics.jsonl`` rows (rank 0), the progress bar, tokens/s.

    Args:
        job: The run.
        state: The prepared state (a resumed run drops metric rows past its step).
        resume: Whether the run resumed (keep ``metrics.jsonl``) or starts it afresh.
        watch: The run's stopwatch; rows carry its elapsed time.
        write: Where messages go.
    """

    def __init__(
        self,
        job: Job,
        state: TrainState,
        *,
        resume: bool,
        watch: Stopwatch,
        write: Callable[[str], None],
    ) -> None:
        from tqdm.auto import tqdm

        self.job, self.watch, self.write = job, watch, write
        self.path = Path(job.cfg.out) / "metrics.jsonl"
        resume_step = state.step if resume else None
        main = job.info.is_main
        self.metrics = MetricsLogger(self.path, resume_step=resume_step) if main else None
        self.bar = tqdm(
            total=job.max_steps,
            initial=state.step,
            desc="train",
            unit="step",
            disable=not (job.cfg.progress and main),
            dynamic_ncols=True,
        )
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def log(self, kind: str, state: TrainState, **values: Any) -> None:
        """A ``metrics.jsonl`` row at the state's step (rank 0)."""
        if self.metrics is not None:
            self.metrics.log(kind, state.step, tokens=state.tokens, **values)

    def train_row(self, state: TrainState, stats: StepStats) -> dict[str, Any]:
        """The row callbacks see; every ``cfg.log_interval`` steps also a ``train`` metric."""
        step, cfg = state.step, self.job.cfg
        # A step the loss scaler skipped (fp16 overflow) has no gradient norm to log.
        norm = stats.grad_norm if math.isfinite(stats.grad_norm) else None
        row: dict[str, Any] = {"loss": stats.loss, "lr": stats.lr, "grad_norm": norm}
        self.window_tokens += stats.tokens
        if step % cfg.log_interval == 0 or step == self.job.max_steps:
            tok_s = self.window_tokens / max(1e-9, time.perf_counter() - self.window_start)
            row["tok_per_s"] = tok_s
            ppl = math.exp(min(stats.loss, 30.0))
            self.log(
                "train",
                state,
                epoch=self.job.epoch(step),
                loss=stats.loss,
                ppl=ppl,
                lr=stats.lr,
                grad_norm=norm,
                tok_per_s=tok_s,
                elapsed=self.watch.elapsed(),
            )
            self.bar.set_postfix(
                loss=f"{stats.loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{stats.lr:.2e}"
            )
            self.window_tokens, self.window_start = 0, time.perf_counter()
        self.bar.update(1)
        return row

    def eval_row(self, state: TrainState, train_loss: float, val_loss: float) -> None:
        """An ``eval`` metric and a line in the log."""
        epoch = self.job.epoch(state.step)
        self.log(
            "eval",
            state,
            epoch=epoch,
            val_loss=val_loss,
            val_ppl=math.exp(min(val_loss, 30.0)),
            train_loss=train_loss,
            elapsed=self.watch.elapsed(),
        )
        if self.job.info.is_main:
            self.write(
                f"step {state.step} (epoch {epoch:.2f}): train loss {train_loss:.4f}, "
                f"val loss {val_loss:.4f}"
            )

    def finish(self, state: TrainState) -> LoopResult:
        """The ``finished`` event, the plots, and what the run reached."""
        seconds = self.watch.elapsed()
        overhead = self.watch.fraction(OVERHEAD_PHASES, excluding=EXCLUDED_PHASES)
        self.log("event", state, event="finished", seconds=seconds, overhead_fraction=overhead)
        if self.metrics is not None:
            write_plots(self.path, self.path.parent / "plots")
        return LoopResult(
            Path(self.job.cfg.out),
            state.step,
            state.tokens,
            state.last_loss,
            state.val_loss,
            seconds,
            overhead,
        )


def run_eval(
    job: Job, state: TrainState, train: BatchSource, val: BatchSource | None, progress: Progress
) -> dict[str, Any]:
    """Train and validation loss, each over ``cfg.eval_batches`` fixed batches; the fields it
    adds to the step's row (none without validation data)."""
    if val is None or not len(val):
        return {}
    kw: dict[str, Any] = dict(
        batch_size=job.cfg.batch_size,
        batches=job.cfg.eval_batches,
        device=job.device,
        ctx=job.autocast,
    )
    train_loss = evaluate(state.model, train, **kw)
    state.val_loss, state.evaluated_at = evaluate(state.model, val, **kw), state.step
    progress.eval_row(state, train_loss, state.val_loss)
    return {"val_loss": state.val_loss}


def stop_diverged(
    job: Job, state: TrainState, stats: StepStats, ckpt: Checkpointer, progress: Progress
) -> NoReturn:
    """Keep the last good weights (checkpointed if newer than the last checkpoint), log how to
    recover, and raise :class:`TrainingDiverged`."""
    # Every rank's shards are checked, and every rank takes the same branch (NCCL: CUDA tensor).
    finite = torch.tensor(float(all_finite(state.model)), device=job.device)
    if bool(all_reduce_mean(finite, job.info) == 1.0) and state.step > ckpt.last_step:
        ckpt.save(state, None)  # the weights before this step are still good
    cfg = job.cfg
    message = (
        f"loss became {stats.loss!r} (gradient norm {stats.grad_norm!r}) at step "
        f"{state.step + 1} with lr={stats.lr:.3g}; training stopped. Last good checkpoint: "
        f"{ckpt.newest()}. Lower --lr (now {cfg.lr}), keep --grad-clip at about 1.0 (now "
        f"{cfg.grad_clip}), raise --warmup-steps (now {cfg.warmup_steps}) or use "
        "--dtype float32, then resume with --resume."
    )
    progress.log("event", state, event="diverged", message=message)
    raise TrainingDiverged(message)


def _every(interval: int, step: int) -> bool:
    """Whether ``step`` falls on the cadence ``interval`` (0 turns it off)."""
    return bool(interval) and step % interval == 0


def train_loop(
    cfg: LoopConfig,
    model: nn.Module,
    train: BatchSource,
    val: BatchSource | None,
    *,
    info: DistInfo,
    device: torch.device,
    resume: bool,
    save_model: SaveModel,
    manifest: dict[str, Any] | None = None,
    sample: Callable[[nn.Module], str] | None = None,
    callbacks: Sequence[Callback] = (),
    write: Callable[[str], None] | None = None,
) -> LoopResult:
    """Run (or resume) the optimisation to ``cfg.max_steps`` and return what it reached.

    Args:
        cfg: Loop settings.
        model: The model, already on ``device`` and seeded; ``forward(x, y) -> (logits, loss)``.
        train: Training examples.
        val: Validation examples (``None``: no evaluation).
        info: Distributed placement (rank 0 writes everything).
        device: Where batches go.
        resume: Continue from the newest usable checkpoint in ``cfg.out``.
        save_model: ``save_model(model, directory)`` writes a model directory (config,
            weights, tokenizer): the run's top level and every checkpoint (rank 0).
        manifest: Extra JSON fields stored in every checkpoint manifest.
        sample: Returns a sample generation for the log (``cfg.sample_interval``).
        callbacks: ``cb(step, model, row)`` after each step (tests, custom stopping).
        write: Where messages go (default: ``tqdm.write``).

    Raises:
        TrainingDiverged: The loss or gradient norm became NaN/Inf.
    """
    from tqdm.auto import tqdm

    write = write or tqdm.write
    if info.is_main:
        claim_run_dir(Path(cfg.out), write)
    job = Job.create(cfg, info, device, train)
    ckpt = Checkpointer(job, save_model=save_model, manifest=manifest, write=write)
    state = prepare_state(job, model, ckpt, resume=resume)
    if info.is_main:
        warn_small_val(val, cfg.batch_size, write)
    watch = Stopwatch()
    progress = Progress(job, state, resume=resume, watch=watch, write=write)
    if not info.is_main or job.use_fsdp:  # generation on rank 0 alone stalls FSDP's all-gathers
        sample = None
    try:
        if state.step == 0:
            run_eval(job, state, train, val, progress)  # the untrained model: where curves start
        while state.step < job.max_steps:
            with watch("data"):
                micro_batches = next_micro_batches(job, state, train)
            stats = train_step(job, state, micro_batches)
            if not stats.finite:
                stop_diverged(job, state, stats, ckpt, progress)
            step, last = state.step, state.step == job.max_steps
            with watch("log"):
                row = progress.train_row(state, stats)
            with watch("eval"):
                if _every(cfg.eval_interval, step) or last:
                    row.update(run_eval(job, state, train, val, progress))
            with watch("sample"):
                if sample is not None and _every(cfg.sample_interval, step):
                    write(f"step {step} sample: {sample(state.model)!r}")
            with watch("checkpoint"):
                if _every(cfg.checkpoint_interval, step) or last:
                    ckpt.save(state, state.fresh_val_loss())
            for callback in callbacks:
                callback(step, state.model, row)
    finally:
        progress.bar.close()
    if ckpt.last_step < state.step:  # e.g. resumed at max_steps already
        ckpt.save(state, state.fresh_val_loss())
    if cfg.keep == "best" and info.is_main:
        ckpt.keep_best(state.export_model)
    return progress.finish(state)
