"""The optimisation loop shared by pre-training and fine-tuning.

One call of :func:`train_loop` runs (or resumes) a job to ``cfg.max_steps``: micro-batches with
gradient accumulation, the warmup + decay schedule, clipping, evaluation on a fixed validation
subset, sample generations, ``metrics.jsonl``, plots, checkpoints, the top-level model directory
and, under ``torchrun``, DDP or FSDP2 (``cfg.parallel``). It is deliberately model- and
data-agnostic: it takes a module whose ``forward(x, targets)`` returns ``(logits, loss)`` and
:class:`~gptforge.training.data.BatchSource` objects.

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
from typing import Any

import torch
from gptforge.modeling.device import auto_device_name
from gptforge.modeling.device import resolve_device as modeling_device
from gptforge.training.checkpoint import (
    LOCK_FILE,
    CheckpointInfo,
    CheckpointManager,
    lock_run,
    remove_leftovers,
    rng_state,
    set_rng_state,
)
from gptforge.training.config import LoopConfig
from gptforge.training.data import BatchSource, EpochSampler, eval_indices
from gptforge.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_from_main,
    gather_to_main,
)
from gptforge.training.fsdp import to_float
from gptforge.training.metrics import MetricsLogger, write_plots
from gptforge.training.optim import make_optimizer
from gptforge.training.schedule import lr_at
from torch import nn

Callback = Callable[[int, nn.Module, dict[str, Any]], None]


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


def uses_fsdp(cfg: LoopConfig, info: DistInfo) -> bool:
    """Whether this run shards with FSDP (``--parallel fsdp`` under torchrun)."""
    return info.enabled and cfg.parallel == "fsdp"


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


def _grad_norm(model: nn.Module, clip: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    return to_float(norm)  # a DTensor under FSDP


def _fsdp_param_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 FSDP mixed precision on a GPU when ``dtype`` resolves to bfloat16, else None."""
    if device.type != "cuda":
        return None
    if dtype == "bfloat16" or (dtype == "auto" and bf16_native()):
        return torch.bfloat16
    return None


def _all_finite(model: nn.Module, info: DistInfo, device: torch.device) -> bool:
    """Every parameter (every rank's shard under FSDP) is finite; the same answer on all ranks."""
    from gptforge.training.fsdp import all_finite

    ok = torch.tensor(float(all_finite(model)), device=device)  # NCCL reduces CUDA tensors
    return bool(all_reduce_mean(ok, info) == 1.0)


def _token_weights(
    targets: list[torch.Tensor], info: DistInfo, device: torch.device
) -> list[float]:
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


def _load_on_rank0(
    ckpt: CheckpointManager, full: nn.Module | None, info: DistInfo
) -> tuple[CheckpointInfo, dict[str, Any]]:
    """FSDP resume: rank 0 loads the newest usable checkpoint into its whole model and tells
    the other ranks which one it was; they read that checkpoint's state only. A failure on rank
    0 reaches every rank, so none waits in a collective that will not come."""
    chosen: list[Any] = [None]
    if full is not None:
        try:
            found, state = ckpt.load(full, map_location=next(full.parameters()).device)
            chosen = [found.path.name]
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            chosen = [exc]
    chosen = broadcast_from_main(chosen, info)
    if isinstance(chosen[0], Exception):
        raise chosen[0]
    if full is not None:
        return found, state
    info_ = next(c for c in ckpt.list() if c.path.name == chosen[0])
    return ckpt.load(None, info=info_)


def _oom_message(cfg: LoopConfig, exc: BaseException) -> str:
    return (
        f"out of memory with batch_size={cfg.batch_size} ({exc}); lower --batch-size (and raise "
        f"--grad-accum to keep the global batch) or lower --context-length"
    )


def total_steps(cfg: LoopConfig, examples: int, per_step: int) -> int:
    """``cfg.max_steps``, or the steps of ``cfg.epochs`` passes over ``examples``."""
    if cfg.epochs is None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * examples / per_step))


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


def keep_best(
    ckpt: CheckpointManager,
    model: nn.Module,
    run_dir: Path,
    save_model: Callable[[nn.Module, Path], None],
    write: Callable[[str], None],
) -> None:
    """Load the best-by-validation checkpoint into ``model`` and make it the run's top level."""
    best = ckpt.best()
    if best is None:
        write("--keep best: no checkpoint has a validation loss; the last weights stay")
        return
    ckpt.load(model, info=best, map_location=next(model.parameters()).device)
    save_model(model, run_dir)
    write(
        f"kept the best checkpoint as the run's model: step {best.step}, val loss {best.val_loss:.4f}"
    )


def _clean_leftovers(run_dir: Path, write: Callable[[str], object]) -> None:
    """Lock the run, and remove what killed runs left (the lock proves their writers gone)."""
    if lock_run(run_dir) is None:
        # Two writers would interleave checkpoints and overwrite each other's model.
        holder = (run_dir / LOCK_FILE).read_text().strip() or "?"
        raise ValueError(
            f"another process (pid {holder}) is training into {str(run_dir)!r} (it holds "
            f"{LOCK_FILE}); wait for it or stop it, or pass a different --out"
        )
    count, freed = remove_leftovers(run_dir)
    if count:
        write(
            f"removed {count} temporaries left by an interrupted run in {run_dir} "
            f"({freed / 2**20:.1f} MiB freed)"
        )


def train_loop(
    cfg: LoopConfig,
    model: nn.Module,
    train: BatchSource,
    val: BatchSource | None,
    *,
    info: DistInfo,
    device: torch.device,
    resume: bool,
    save_model: Callable[[nn.Module, Path], None],
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
    run_dir = Path(cfg.out)
    ckpt = CheckpointManager(run_dir, keep_last=cfg.keep_last, warn=write)
    if info.is_main:
        _clean_leftovers(run_dir, write)
    use_fsdp = uses_fsdp(cfg, info)
    if use_fsdp and cfg.dtype == "float16":
        raise ValueError(
            "--dtype float16 with --parallel fsdp is not supported (its loss scaling needs "
            "sharded gradients); use --dtype bfloat16"
        )
    found, state = None, None
    if use_fsdp:
        # Rank 0 holds the whole model (on the CPU when pretrain built it there), the other
        # ranks at most a meta one; the checkpoint's weights go into rank 0's, which then
        # seeds every rank's shards and is the copy checkpoints are written from.
        full = model if info.is_main else None
        if not info.is_main:
            model.to("meta")  # free a whole model the caller may have built here
        if resume:
            found, state = _load_on_rank0(ckpt, full, info)
    elif resume:
        found, state = ckpt.load(model, map_location=device)
    export_model: nn.Module = model  # what rank 0 writes checkpoints from
    if use_fsdp:
        from gptforge.training import fsdp

        if full is not None:
            export_model = full.to("cpu")
        model = fsdp.shard_from_rank0(
            full, model.config, device, param_dtype=_fsdp_param_dtype(cfg.dtype, device)
        )
    optimizer = make_optimizer(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=(cfg.beta1, cfg.beta2),
        device_type=device.type,
    )
    # float16 gradients underflow without loss scaling; bf16 and fp32 need none (disabled).
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")
    world, rank = info.world_size, info.rank
    per_step = cfg.batch_size * cfg.grad_accum * world
    max_steps = total_steps(cfg, len(train), per_step)
    sampler = EpochSampler(len(train), cfg.seed)
    step, tokens, last_ckpt_step = 0, 0, -1
    if found is not None and state is not None:
        if use_fsdp:
            fsdp.load_full_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        if scaler.is_enabled() and state.get("scaler"):  # {} from a run without fp16
            scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks") or []
        set_rng_state(ranks[rank] if rank < len(ranks) else state["rng"], device)
        if 0 < len(ranks) <= rank:  # more ranks than the run had: a stream of its own
            torch.manual_seed(cfg.seed + rank + 7919 * int(state["step"]))
        step, tokens, last_ckpt_step = int(state["step"]), int(state["tokens"]), int(state["step"])
        write(f"resumed from {found.path} at step {step}")
    else:
        torch.manual_seed(cfg.seed + rank)
    metrics = (
        MetricsLogger(run_dir / "metrics.jsonl", resume_step=step if resume else None)
        if info.is_main
        else None
    )

    raw_model = model
    train_model: nn.Module = model
    if info.enabled and not use_fsdp:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    ctx = lambda: autocast_context(cfg.dtype, device)  # noqa: E731

    def save(at_step: int, val_loss: float | None) -> Path | None:
        nonlocal last_ckpt_step
        path = None
        optim_state: dict[str, Any] | None = None
        # Each rank's generators (ranks draw different dropout masks), collected on rank 0.
        rngs = gather_to_main(rng_state(device), info)
        if use_fsdp:  # collectives: every rank takes part, rank 0 receives full CPU copies
            export_state = fsdp.full_model_state(model)
            optim_state = fsdp.full_optimizer_state(model, optimizer)
            if info.is_main:
                export_model.load_state_dict(export_state)
        if info.is_main:
            assert rngs is not None  # rank 0 receives every rank's states
            state = {
                "optimizer": optim_state if use_fsdp else optimizer.state_dict(),
                "rng": rngs[0],
                "rng_ranks": rngs,
                "sampler": sampler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": at_step,
                "tokens": tokens,
            }
            extra = {**(manifest or {}), "tokens": tokens, "val_loss": val_loss}
            # The top level first: a run killed at its first save still has its tokenizer.
            save_model(export_model, run_dir)
            path = ckpt.save(
                step=at_step,
                model=export_model,
                state=state,
                manifest=extra,
                write_model=lambda d: save_model(export_model, d),
            )
        barrier(info)
        last_ckpt_step = at_step
        return path

    last_loss: float | None = None
    val_loss: float | None = None
    evaluated_at = -1
    if info.is_main:
        warn_small_val(val, cfg.batch_size, write)

    def run_eval(at_step: int, row: dict[str, Any]) -> None:
        """Train and validation loss, each over ``cfg.eval_batches`` fixed batches."""
        nonlocal val_loss, evaluated_at
        if val is None or not len(val):
            return
        kw: dict[str, Any] = dict(
            batch_size=cfg.batch_size, batches=cfg.eval_batches, device=device, ctx=ctx
        )
        train_loss = evaluate(raw_model, train, **kw)
        val_loss = evaluate(raw_model, val, **kw)
        evaluated_at = at_step
        row["val_loss"] = val_loss
        epoch = round(at_step * per_step / len(train), 4)
        if metrics is not None:
            metrics.log(
                "eval",
                at_step,
                tokens=tokens,
                epoch=epoch,
                val_loss=val_loss,
                val_ppl=math.exp(min(val_loss, 30.0)),
                train_loss=train_loss,
                elapsed=time.perf_counter() - t_start,
            )
        if info.is_main:
            write(
                f"step {at_step} (epoch {epoch:.2f}): train loss {train_loss:.4f}, "
                f"val loss {val_loss:.4f}"
            )

    bar = tqdm(
        total=max_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not (cfg.progress and info.is_main),
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    t_overhead = 0.0
    t_excluded = 0.0  # evaluation and sampling: useful work, not loop overhead
    window_tokens, window_start = 0, time.perf_counter()
    train_model.train()
    try:
        if step == 0:
            run_eval(0, row={})  # the untrained model: where the curves start
        while step < max_steps:
            lr = lr_at(
                step,
                lr=cfg.lr,
                min_lr=cfg.min_lr,
                warmup_steps=cfg.warmup_steps,
                max_steps=max_steps,
                schedule=cfg.lr_schedule,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            indices = sampler.take(per_step)
            t_overhead += time.perf_counter() - t0
            loss_sum = torch.zeros((), device=device)
            step_tokens = 0
            t0 = time.perf_counter()
            micro_batches = [
                train.batch(indices[begin : begin + cfg.batch_size])
                for begin in (
                    (micro * world + rank) * cfg.batch_size for micro in range(cfg.grad_accum)
                )
            ]
            weights = _token_weights([y for _, y in micro_batches], info, device)
            t_overhead += time.perf_counter() - t0
            for micro, (x, y) in enumerate(micro_batches):
                t0 = time.perf_counter()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                t_overhead += time.perf_counter() - t0
                step_tokens += x.numel() * world
                last_micro = micro == cfg.grad_accum - 1
                if use_fsdp:  # reduce-scatter gradients only on the last micro-batch
                    model.set_requires_gradient_sync(last_micro)  # type: ignore[operator]
                sync = (
                    train_model.no_sync()  # type: ignore[operator]
                    if info.enabled and not use_fsdp and not last_micro
                    else contextlib.nullcontext()
                )
                try:
                    with sync, ctx():
                        _, loss = train_model(x, y, return_logits=False)  # fused head + loss
                    if weights[micro] == 0.0:  # no counted target: a NaN mean, weighted out
                        loss = loss.nan_to_num(0.0)
                    scaler.scale(loss * weights[micro]).backward()
                except torch.OutOfMemoryError as exc:
                    raise RuntimeError(_oom_message(cfg, exc)) from exc
                loss_sum += loss.detach() * weights[micro]
            loss_value = float(all_reduce_mean(loss_sum, info))  # the mean over counted targets
            if scaler.is_enabled():
                scaler.unscale_(optimizer)  # clip the true gradients
            grad_norm = _grad_norm(raw_model, cfg.grad_clip)
            # With loss scaling an overflowing gradient only skips the step (and halves the
            # scale); the run diverged when the loss itself is not finite.
            grad_ok = math.isfinite(grad_norm) or scaler.is_enabled()
            if not (math.isfinite(loss_value) and grad_ok):
                optimizer.zero_grad(set_to_none=True)
                weights_ok = _all_finite(raw_model, info, device)
                if weights_ok and step > last_ckpt_step:
                    save(step, None)  # the weights before this step are still good
                good = ckpt.list()[-1].path if ckpt.list() else None
                message = (
                    f"loss became {loss_value!r} (gradient norm {grad_norm!r}) at step {step + 1} "
                    f"with lr={lr:.3g}; training stopped. Last good checkpoint: {good}. "
                    f"Lower --lr (now {cfg.lr}), keep --grad-clip at about 1.0 (now "
                    f"{cfg.grad_clip}), raise --warmup-steps (now {cfg.warmup_steps}) or use "
                    "--dtype float32, then resume with --resume."
                )
                if metrics is not None:
                    metrics.log("event", step, tokens=tokens, event="diverged", message=message)
                raise TrainingDiverged(message)
            scaler.step(optimizer)  # optimizer.step(), skipped on inf/NaN gradients under fp16
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += step_tokens
            window_tokens += step_tokens
            last_loss = loss_value

            t0 = time.perf_counter()
            # A step the loss scaler skipped (fp16 overflow) has no gradient norm to log.
            logged_norm = grad_norm if math.isfinite(grad_norm) else None
            row: dict[str, Any] = {"loss": loss_value, "lr": lr, "grad_norm": logged_norm}
            if step % cfg.log_interval == 0 or step == max_steps:
                elapsed = max(1e-9, time.perf_counter() - window_start)
                tok_s = window_tokens / elapsed
                row["tok_per_s"] = tok_s
                if metrics is not None:
                    metrics.log(
                        "train",
                        step,
                        tokens=tokens,
                        epoch=round(step * per_step / len(train), 4),
                        loss=loss_value,
                        ppl=math.exp(min(loss_value, 30.0)),
                        lr=lr,
                        grad_norm=logged_norm,
                        tok_per_s=tok_s,
                        elapsed=time.perf_counter() - t_start,
                    )
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}")
                window_tokens, window_start = 0, time.perf_counter()
            bar.update(1)
            t_overhead += time.perf_counter() - t0

            t0 = time.perf_counter()
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == max_steps:
                run_eval(step, row)
            if (
                sample is not None
                and info.is_main
                and not use_fsdp  # generation on rank 0 alone would stall the all-gathers
                and cfg.sample_interval
                and step % cfg.sample_interval == 0
            ):
                write(f"step {step} sample: {sample(raw_model)!r}")
            t_excluded += time.perf_counter() - t0

            t0 = time.perf_counter()
            if (
                cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0
            ) or step == max_steps:
                save(step, val_loss if evaluated_at == step else None)
            t_overhead += time.perf_counter() - t0
            for callback in callbacks:
                callback(step, raw_model, row)
    finally:
        bar.close()
    if last_ckpt_step < step:  # e.g. resumed at max_steps already
        save(step, val_loss if evaluated_at == step else None)
    if cfg.keep == "best" and info.is_main:
        keep_best(ckpt, export_model, run_dir, save_model, write)
    seconds = time.perf_counter() - t_start
    overhead = t_overhead / max(1e-9, seconds - t_excluded)
    if metrics is not None:
        metrics.log(
            "event",
            step,
            tokens=tokens,
            event="finished",
            seconds=seconds,
            overhead_fraction=overhead,
        )
        write_plots(run_dir / "metrics.jsonl", run_dir / "plots")
    return LoopResult(run_dir, step, tokens, last_loss, val_loss, seconds, overhead)
