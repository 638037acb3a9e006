"""``gptforge demo``: the whole pipeline, from raw text to a served model, in one run folder.

The stages, their checks and the printed report live in the ``gptforge-demo`` package
(:mod:`gptforge.demo`); this is the verb.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from gptforge.cli.options import DeviceOpt
from gptforge.cli.training import with_shape_flags


def demo(
    run_dir: Annotated[
        Path, typer.Option("--run-dir", help="Run folder that receives everything.")
    ] = Path("runs/demo"),
    preset: Annotated[
        str, typer.Option("--preset", help="Model preset: tiny (default), debug, llama-tiny, ...")
    ] = "tiny",
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Corpus: file, directory, glob, .jsonl, parquet, saved dataset, or 'default'.",
        ),
    ] = "default",
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Pre-training steps (default: 200 for tiny, fits 10 min on 2 CPU cores).",
        ),
    ] = None,
    redo: Annotated[
        list[str] | None,
        typer.Option(
            "--redo",
            help="Run this stage again even if done, and the stages after it (repeatable): tokenizer, pretrain, finetune, export, serve.",
        ),
    ] = None,
    finetune_steps: Annotated[int | None, typer.Option("--finetune-steps", hidden=True)] = None,
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", hidden=True)] = None,
    eval_examples: Annotated[int, typer.Option("--eval-examples", hidden=True)] = 100,
    device: DeviceOpt = "auto",
    **shape: Any,
) -> None:
    """The whole pipeline in one command: tokenizer, pre-training, fine-tuning, HF/GGUF export, gRPC services.

    Everything lands in --run-dir; a second run skips the stages already done. The model is
    --preset or --config FILE.json, with --n-layer, --n-embd, ... on top as in `gptforge train`.
    Example: gptforge demo --run-dir runs/demo --preset tiny
    """
    from gptforge.demo import DemoError, DemoSettings, StageFailed, run_demo

    start = time.perf_counter()
    try:
        settings = DemoSettings(
            run_dir=run_dir,
            preset=preset,
            data=data,
            steps=steps,
            finetune_steps=finetune_steps,
            vocab_size=vocab_size,
            eval_examples=eval_examples,
            device=device,
            shape={k: v for k, v in shape.items() if v is not None},
        )
        run_demo(settings, redo=list(redo or ()))
    except (DemoError, StageFailed, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.secho(f"demo finished in {time.perf_counter() - start:.1f}s", dim=True)


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``gptforge demo`` to the root app."""
    root.command("demo")(with_shape_flags(demo, skip=("preset",)))
