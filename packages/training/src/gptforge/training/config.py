"""Training settings as plain dataclasses (importable without torch).

Three dataclasses, one per job: :class:`LoopConfig` holds what every optimisation loop needs
(batch, schedule, optimiser, logging, checkpointing), :class:`TrainConfig` adds what pre-training
needs (architecture, preset, data) and :class:`FinetuneConfig` what instruction fine-tuning needs.
CLI flags are these field names with ``_`` spelled ``-`` (``--grad-accum``, ``--min-lr``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LR_SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TEMPLATES = ("inst", "alpaca")
PARALLELS = ("ddp", "fsdp")
KEEP_CHOICES = ("last", "best")
DEVICE_CHOICES = "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps"
_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """``name`` if it names a device gptforge runs on (checked without importing torch).

    >>> check_device_name("cuda:1")
    'cuda:1'
    """
    if not _DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}: pass --device {DEVICE_CHOICES}")
    return name


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}; pass --{name.replace('_', '-')}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{name}={value!r} is not one of {list(allowed)}; "
            f"pass --{name.replace('_', '-')} {allowed[0]}"
        )


@dataclass
class LoopConfig:
    """Settings shared by pre-training and fine-tuning.

    Args:
        out: Run directory (a model directory at the top, ``checkpoints/``, ``metrics.jsonl``,
            ``plots/``).
        max_steps: Optimiser steps to run (a resumed run continues up to this step).
        epochs: Passes over the training data to run instead of ``max_steps`` (may be
            fractional, e.g. 0.5).
        batch_size: Sequences per micro-batch per process.
        grad_accum: Micro-batches accumulated per optimiser step; the global batch is
            ``batch_size * grad_accum * world_size`` sequences.
        lr: Peak learning rate, reached after ``warmup_steps``.
        min_lr: Learning rate at the end of the decay.
        warmup_steps: Linear warmup steps from 0 to ``lr``.
        lr_schedule: ``cosine`` or ``linear`` decay from ``lr`` to ``min_lr`` over the run,
            or ``constant``.
        weight_decay: Decoupled AdamW weight decay on matrices (never biases, norms, embeddings).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: Clip the global gradient norm to this value (0 disables clipping).
        eval_interval: Evaluate on validation data every this many steps (0: only at the end).
        eval_batches: Validation batches per evaluation.
        sample_interval: Print a sample generation every this many steps (0: never).
        sample_prompt: Prompt of the sample generations.
        sample_tokens: New tokens per sample generation.
        checkpoint_interval: Save a checkpoint every this many steps (and always at the end).
        keep_last: Number of recent checkpoints kept (the best-by-validation is kept as well).
        keep: What the run directory's top-level model holds at the end: ``last`` (the final
            weights) or ``best`` (the checkpoint with the lowest validation loss).
        log_interval: Write a train row to ``metrics.jsonl`` every this many steps.
        dtype: ``auto`` (bf16 autocast on a GPU that supports it, else float32), ``float32``,
            ``bfloat16`` or ``float16`` autocast.
        compile: Wrap the model in ``torch.compile``.
        seed: Seed of weights, data order and dropout.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: Show a tqdm progress bar.
        parallel: Multi-process strategy under ``torchrun``: ``ddp`` (a full replica per rank,
            gradients all-reduced) or ``fsdp`` (FSDP2: parameters, gradients and AdamW state
            sharded across ranks, for models that do not fit one device). Ignored in one process.
    """

    out: str = "runs/train"
    max_steps: int = 300
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    lr_schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 8
    sample_interval: int = 0
    sample_prompt: str = "The"
    sample_tokens: int = 48
    checkpoint_interval: int = 100
    keep_last: int = 2
    keep: str = "last"
    log_interval: int = 10
    dtype: str = "auto"
    compile: bool = False
    seed: int = 1337
    device: str = "auto"
    progress: bool = True
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "keep_last", "log_interval"):
            _check_positive(name, getattr(self, name))
        _check_positive("lr", self.lr)
        for name in (
            "min_lr",
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "eval_interval",
            "eval_batches",
            "sample_interval",
            "sample_tokens",
            "checkpoint_interval",
        ):
            _check_positive(name, getattr(self, name), allow_zero=True)
        if self.min_lr > self.lr:
            raise ValueError(
                f"min_lr={self.min_lr!r} is above lr={self.lr!r}; pass --min-lr <= --lr"
            )
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.epochs is not None:
            _check_positive("epochs", self.epochs)
        _check_choice("keep", self.keep, KEEP_CHOICES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("dtype", self.dtype, DTYPES)
        check_device_name(self.device)
        _check_choice("parallel", self.parallel, PARALLELS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown!r}; allowed: {sorted(names)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON atomically."""
        from gptforge.training.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class ModelShape:
    """The model to build: a preset or a config file, with field overrides on top.

    Args:
        preset: Model preset name (``gptforge model presets``: ``debug``, ``tiny``, ``gpt2``,
            ``llama-tiny``, ...); the architecture follows from it.
        config: A JSON model config instead of the preset: a model directory's ``config.json``
            (or the directory) or the LLMs-from-scratch dict (``emb_dim``, ``n_heads``,
            ``n_layers``, ``context_length``, ``drop_rate``, ``qkv_bias``).
        n_layer: Override the number of transformer blocks.
        n_head: Override the number of attention heads.
        n_embd: Override the embedding width.
        context_length: Override the context (the config's ``block_size``).
        n_kv_head: Override the key/value heads (grouped-query attention; llama).
        ffn_hidden: Override the feed-forward hidden width (llama, mmrec; gpt uses 4 * n_embd).
        dropout: Override the dropout rate.
        bias: Override biases in linear layers (gpt, mmrec; llama: attention biases).
        qkv_bias: Override the bias of the query/key/value projection alone (gpt).
        tie_weights: Override tying of the input embedding and the output head.
    """

    preset: str = "tiny"
    config: str | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    context_length: int | None = None
    n_kv_head: int | None = None
    ffn_hidden: int | None = None
    dropout: float | None = None
    bias: bool | None = None
    qkv_bias: bool | None = None
    tie_weights: bool | None = None

    def __post_init__(self) -> None:
        self.check_shape()

    def check_shape(self) -> None:
        """Refuse non-positive sizes and a dropout outside [0, 1)."""
        for name in SHAPE_SIZES:
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}; pass --dropout 0.1")

    def shape_overrides(self) -> dict[str, Any]:
        """The override fields that were set (``None`` means: the preset's or config's value)."""
        return {
            name: getattr(self, name) for name in SHAPE_FIELDS if getattr(self, name) is not None
        }


SHAPE_SIZES = ("n_layer", "n_head", "n_embd", "context_length", "n_kv_head", "ffn_hidden")
SHAPE_FIELDS = (*SHAPE_SIZES, "dropout", "bias", "qkv_bias", "tie_weights")


@dataclass
class TrainConfig(LoopConfig, ModelShape):
    """Pre-training settings (adds the model and the data to :class:`LoopConfig`).

    Args:
        arch: Refuse a preset or config of another family (``gpt``, ``llama``, ``mmrec``);
            default: whatever the preset or config is.
        init_from: Start from this model directory (a run, an HF/OpenAI/Meta import, a
            converted MM-Rec model) with a new optimiser at step 0 instead of random weights.
        data: Prepared data directory (``gptforge data prepare``) holding ``meta.json``.
        tokenizer: Tokenizer directory; default: the copy inside the data directory.
        stride: Distance between training windows in tokens (default: ``context_length``).
    """

    arch: str | None = None
    init_from: str | None = None
    data: str = ""
    tokenizer: str | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)
        self.check_shape()
        if self.arch is not None:
            _check_choice("arch", self.arch, ("gpt", "llama", "mmrec"))
        if self.stride is not None:
            _check_positive("stride", self.stride)
        if self.init_from and (self.config or set(self.shape_overrides()) - {"context_length"}):
            raise ValueError(
                f"--init-from {self.init_from!r} takes the architecture of that model; drop "
                f"--config and the shape flags {sorted(set(self.shape_overrides()) - {'context_length'})}"
            )


@dataclass
class FinetuneConfig(LoopConfig):
    """Instruction fine-tuning settings (lower learning rate, response-only loss).

    Args:
        from_run: Run or model directory to start from.
        data: Alpaca-style ``.jsonl`` (``instruction``, ``input``, ``output``); default: the
            generated task set of :mod:`gptforge.training.tasks`.
        template: ``inst`` (``<INST>..</INST><RESP>..</RESP>``) or ``alpaca`` prompt style.
        val_fraction: Held-out fraction of the records for loss and exact-match evaluation.
        num_examples: Size of the generated task set when ``data`` is not given.
        tasks: Comma-separated task families of the generated set (default:
            ``first,last,next_letter,opposite,count``; all: ``TASK_NAMES`` of
            :mod:`gptforge.training.tasks`).
        eval_examples: Held-out records scored for exact match before and after training.
        max_length: Longest rendered record in tokens (at most the model's context + 1);
            a longer record is refused naming its file and line, unless ``truncate`` or
            ``skip_long`` is set.
        truncate: Cut over-long records to fit (the prompt's middle first; the response's end
            is kept where possible).
        skip_long: Leave over-long records out and report how many.
        max_samples: Use only the first N records of the data (before the split).
        lora_rank: Train LoRA adapters of this rank instead of every weight (0: full
            fine-tuning); the run directory then holds PEFT's adapter_config.json and
            adapter_model.safetensors plus the frozen base under base/.
        lora_alpha: LoRA scale numerator (update scaled by alpha / rank; default: 2 x rank).
        lora_dropout: Dropout on the adapters' inputs while training.
        lora_targets: Comma-separated layer groups to adapt: attn, mlp, head.
        merge: With lora_rank, also fold the adapters into the weights and write the merged
            model at the top of the run directory (exports to HF and GGUF like any run).
    """

    out: str = "runs/finetune"
    from_run: str = ""
    data: str | None = None
    template: str = "inst"
    val_fraction: float = 0.1
    num_examples: int = 2000
    tasks: str | None = None
    eval_examples: int = 100
    max_length: int = 96
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: str = "attn,mlp,head"
    merge: bool = False
    truncate: bool = False
    skip_long: bool = False
    max_samples: int | None = None
    # Chosen by measurement on the demo's `tiny` model (docs/training.md): 500 steps at lr 1e-3
    # learn the default task mix best; fewer steps learn less, and 3e-3 and 1e-2 learn less.
    max_steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_interval: int = 100
    checkpoint_interval: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("template", self.template, TEMPLATES)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("num_examples", "eval_examples", "max_length"):
            _check_positive(name, getattr(self, name))
        _check_positive("lora_rank", self.lora_rank, allow_zero=True)
        if self.merge and not self.lora_rank:
            raise ValueError("--merge folds LoRA adapters; pass it with --lora-rank R")
        if self.lora_rank:
            self.lora_config()  # validates alpha, dropout and targets
        if self.max_samples is not None:
            _check_positive("max_samples", self.max_samples)
        if self.truncate and self.skip_long:
            raise ValueError("--truncate and --skip-long exclude each other; pass one of them")
        if self.tasks is not None:
            from gptforge.training.tasks import TASK_NAMES

            unknown = sorted(set(self.task_names) - set(TASK_NAMES))
            if unknown or not self.task_names:
                raise ValueError(
                    f"tasks={self.tasks!r} names unknown tasks {unknown}; choose from "
                    f"{list(TASK_NAMES)}, comma-separated"
                )

    def lora_config(self) -> Any:
        """The :class:`gptforge.modeling.lora.LoraConfig` of the ``lora_*`` fields."""
        from gptforge.modeling.lora import LoraConfig, parse_targets

        alpha = self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank
        return LoraConfig(
            rank=self.lora_rank,
            alpha=alpha,
            dropout=self.lora_dropout,
            targets=parse_targets(self.lora_targets),
        )

    @property
    def task_names(self) -> tuple[str, ...]:
        """The generated task families to use (all when ``tasks`` is None)."""
        from gptforge.training.tasks import DEFAULT_TASKS

        if self.tasks is None:
            return DEFAULT_TASKS
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip())
