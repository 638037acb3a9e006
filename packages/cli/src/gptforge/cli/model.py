"""CLI verbs for the model area: ``gptforge model info`` and ``gptforge model presets``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from gptforge.cli.training import with_shape_flags

model_app = typer.Typer(help="Inspect model architectures and presets.", no_args_is_help=True)


def info(
    spec: Annotated[
        str,
        typer.Argument(help="A preset name (e.g. gpt2, llama-tiny), a config.json or a model dir."),
    ],
    seq_len: Annotated[
        int | None, typer.Option(help="Context length for FLOPs/token (default: block_size).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    **overrides: Any,
) -> None:
    """Parameters (total, non-embedding, tied/untied), weight and AdamW memory, FLOPs per token.

    Shape flags (--n-layer, --n-embd, --context-length, ...) change the preset or config first,
    as they do for `gptforge train`.
    """
    from gptforge.modeling.introspect import human, model_info
    from gptforge.training.config import ModelShape
    from gptforge.training.shape import model_config
    from rich.console import Console
    from rich.table import Table

    given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    given["config" if spec.endswith(".json") or Path(spec).exists() else "preset"] = spec
    try:
        config = model_config(ModelShape(**given))
        mi = model_info(config, name=spec, seq_len=seq_len)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(json.dumps(mi.to_dict(), indent=2))
        return
    cfg = mi.config
    shape = ", ".join(f"{k}={cfg[k]}" for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                  "vocab_size") if k in cfg)  # fmt: skip
    table = Table(title=f"{spec} ({mi.arch}: {shape})", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("exact", justify="right")
    tied = "tied" if cfg.get("tie_embeddings") else "untied"
    rows = [
        (f"parameters ({tied}, as configured)", human(mi.params), f"{mi.params:,}"),
        ("non-embedding parameters", human(mi.params_non_embedding),
         f"{mi.params_non_embedding:,}"),
        ("parameters if tied", human(mi.params_tied), f"{mi.params_tied:,}"),
        ("parameters if untied", human(mi.params_untied), f"{mi.params_untied:,}"),
        ("allocated (incl. vocab padding)", human(mi.params_allocated),
         f"{mi.params_allocated:,}"),
        ("weights fp32", human(mi.weights_fp32_bytes, "B"), f"{mi.weights_fp32_bytes:,}"),
        ("weights bf16", human(mi.weights_bf16_bytes, "B"), f"{mi.weights_bf16_bytes:,}"),
        ("AdamW fp32 state (w+g+m+v)", human(mi.adamw_fp32_bytes, "B"),
         f"{mi.adamw_fp32_bytes:,}"),
        (f"forward FLOPs/token (T={mi.seq_len})", human(mi.forward_flops_per_token),
         f"{mi.forward_flops_per_token:,}"),
        (f"train FLOPs/token (T={mi.seq_len})", human(mi.train_flops_per_token),
         f"{mi.train_flops_per_token:,}"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@model_app.command("presets")
def presets() -> None:
    """List every model preset, grouped by architecture."""
    from gptforge.modeling import preset_names

    for arch, names in preset_names().items():
        typer.echo(f"{arch}: {', '.join(names)}")


model_app.command("info")(with_shape_flags(info, skip=("preset", "config")))


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``gptforge model ...`` to the root app."""
    root.add_typer(model_app, name="model")
