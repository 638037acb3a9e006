"""Build configs from flags (with ``--resume``) and run a job: shared by the CLI and ``-m``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptforge.training.config import SHAPE_FIELDS, FinetuneConfig, TrainConfig

# Settings a resumed run cannot change: they decide the model's shape or what it learns from.
FIXED_ON_RESUME = (
    "preset",
    "config",
    "arch",
    "init_from",
    "from_run",
    "data",
    "tokenizer",
    "template",
    "max_length",
    "stride",
    "lora_rank",  # the adapters' shapes and places: the checkpoints hold those adapters
    "lora_alpha",
    "lora_targets",
    *SHAPE_FIELDS,
)


# Settings a resumed run may change without --override.
FREE_ON_RESUME = {"device", "progress", "sample_interval", "sample_prompt", "sample_tokens"}


def resume_changes(saved: dict[str, Any], flags: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved, given)}`` for each flag whose value differs from the run's."""
    return {
        k: (saved.get(k), v)
        for k, v in flags.items()
        if v is not None and k != "out" and saved.get(k) != v
    }


def check_resume_changes(
    changes: dict[str, tuple[Any, Any]], resume: str, step: int | None, override: bool
) -> None:
    """Refuse architecture or data changes; name setting changes and ask for ``--override``."""
    fixed = {k: v for k, v in changes.items() if k in FIXED_ON_RESUME}
    if fixed:
        what = ", ".join(
            f"--{k.replace('_', '-')} {old!r} -> {new!r}" for k, (old, new) in fixed.items()
        )
        raise ValueError(
            f"--resume {resume!r} cannot change the model or its data ({what}): the checkpoints "
            "hold that run's model; drop these flags, or start a new run from its weights with "
            f"gptforge train --init-from {resume} --out NEW_DIR"
        )
    if not changes:
        return
    harmless = set(changes) <= FREE_ON_RESUME
    longer = "max_steps" in changes and step is not None and changes["max_steps"][1] > step
    if harmless or (longer and set(changes) - {"max_steps"} <= FREE_ON_RESUME):
        override = True  # where it runs, what it prints, or training longer: nothing to confirm
    what = ", ".join(
        f"--{k.replace('_', '-')} {old!r} -> {new!r}" for k, (old, new) in changes.items()
    )
    below = step is not None and "max_steps" in changes and changes["max_steps"][1] <= step
    note = (
        f" (--max-steps is not above the run's step {step}: nothing left to train)" if below else ""
    )
    if not override:
        raise ValueError(
            f"--resume {resume!r} with settings that differ from the run's: {what}{note}; "
            "add --override to continue with them, or drop them to continue as it was"
        )
    print(f"resuming {resume} with changed settings: {what}{note}")


def build_config(
    kind: str, flags: dict[str, Any], resume: str | None, *, override: bool = False
) -> TrainConfig | FinetuneConfig:
    """The config of a ``train``/``finetune`` job: the saved one on resume, overlaid by ``flags``.

    Args:
        kind: ``pretrain`` or ``finetune``.
        flags: Field values given on the command line.
        resume: Run directory to continue (its ``train_config.json`` is the base), or ``None``.
        override: Accept flags that change the resumed run's settings (the architecture and
            data can never change).
    """
    from gptforge.training.pretrain import load_run_config

    cls = TrainConfig if kind == "pretrain" else FinetuneConfig
    values: dict[str, Any] = {}
    if resume:
        saved = load_run_config(resume)
        if saved["kind"] != kind:
            raise ValueError(
                f"{resume!r} is a {saved['kind']} run; resume it with "
                f"`gptforge {'train' if saved['kind'] == 'pretrain' else 'finetune'} --resume`"
            )
        values = dict(saved["config"])
        values["out"] = str(resume)
        given = {k: v for k, v in flags.items() if v is not None}
        if given.get("out") and Path(given["out"]).resolve() != Path(resume).resolve():
            raise ValueError(f"--out {given['out']!r} differs from --resume {resume!r}; drop --out")
        check_resume_changes(resume_changes(values, given), resume, last_step(resume), override)
    values.update({k: v for k, v in flags.items() if v is not None})
    return cls.from_dict(values)  # type: ignore[return-value]


def last_step(run_dir: str | Path) -> int | None:
    """The step of the newest checkpoint of ``run_dir`` (None without one)."""
    from gptforge.training.checkpoint import CheckpointManager

    infos = CheckpointManager(run_dir, warn=lambda _: None).list()
    return infos[-1].step if infos else None


def run_job(kind: str, flags: dict[str, Any], resume: str | None, *, override: bool = False) -> Any:
    """Build the config and run pre-training or fine-tuning."""
    cfg = build_config(kind, flags, resume, override=override)
    if kind == "pretrain":
        from gptforge.training.pretrain import pretrain

        if not cfg.data:  # type: ignore[union-attr]
            raise ValueError("--data DATA_DIR is required (make one with `gptforge data prepare`)")
        return pretrain(cfg, resume=bool(resume))  # type: ignore[arg-type]
    from gptforge.training.finetune import finetune

    if not cfg.from_run:  # type: ignore[union-attr]
        raise ValueError("--from-run RUN_DIR is required (the output of `gptforge train`)")
    return finetune(cfg, resume=bool(resume))  # type: ignore[arg-type]
