"""Build configs from flags (with ``--resume``) and run a job: shared by the CLI and ``-m``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptforge.training.config import FinetuneConfig, TrainConfig


def build_config(
    kind: str, flags: dict[str, Any], resume: str | None
) -> TrainConfig | FinetuneConfig:
    """The config of a ``train``/``finetune`` job: the saved one on resume, overlaid by ``flags``.

    Args:
        kind: ``pretrain`` or ``finetune``.
        flags: Field values given on the command line.
        resume: Run directory to continue (its ``train_config.json`` is the base), or ``None``.
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
    values.update({k: v for k, v in flags.items() if v is not None})
    if resume and Path(values["out"]).resolve() != Path(resume).resolve():
        raise ValueError(f"--out {values['out']!r} differs from --resume {resume!r}; drop --out")
    return cls.from_dict(values)  # type: ignore[return-value]


def run_job(kind: str, flags: dict[str, Any], resume: str | None) -> Any:
    """Build the config and run pre-training or fine-tuning."""
    cfg = build_config(kind, flags, resume)
    if kind == "pretrain":
        from gptforge.training.pretrain import pretrain

        if not cfg.data:  # type: ignore[union-attr]
            raise ValueError("--data DATA_DIR is required (make one with `gptforge data prepare`)")
        return pretrain(cfg, resume=bool(resume))  # type: ignore[arg-type]
    from gptforge.training.finetune import finetune

    if not cfg.from_run:  # type: ignore[union-attr]
        raise ValueError("--from-run RUN_DIR is required (the output of `gptforge train`)")
    return finetune(cfg, resume=bool(resume))  # type: ignore[arg-type]
