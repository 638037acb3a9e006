"""CLI verbs of the MM-Rec area: ``gptforge convert arch`` (weight transfer into MM-Rec).

Training and generation of MM-Rec go through the common verbs
(``gptforge train --arch mmrec --preset mmrec-tiny``, ``gptforge generate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

TARGETS = ("mmrec",)


def _config_overrides(config: Path | None, flags: dict[str, int | None]) -> dict[str, Any]:
    """MMRecConfig fields from the ``--config`` JSON file, then the flags that were given."""
    overrides = json.loads(config.read_text()) if config is not None else None
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"--config {str(config)!r} must hold a JSON object of config fields")
    if overrides:
        overrides.pop("arch", None)
    return {**(overrides or {}), **{k: v for k, v in flags.items() if v is not None}}


def _echo_report(report: dict[str, Any]) -> None:
    """Print the source, what transferred and the key counts of a conversion report."""
    src = report["source"]
    typer.echo(
        f"source: {src['layout']} ({src['detected_from']}), vocab {src['vocab_size']}, "
        f"d={src['n_embd']}, layers {src['n_layer']}, heads {src['n_head']}/{src['n_kv_head']}, "
        f"FFN {src['ffn']} {src['ffn_hidden']}, {src['n_params']:,} params"
    )
    typer.echo(
        f"transferred {report['transferred_params']:,} of {report['target']['n_params']:,} target "
        f"params ({100 * report['transferred_fraction']:.1f}%): {len(report['converted'])} keys "
        f"converted, {len(report['new'])} new, {len(report['unused_source'])} source keys unused, "
        f"{len(report['shape_mismatches'])} shape mismatches"
    )
    typer.echo(
        f"keys: {report['total_keys']} total, {report['converted_keys']} converted, "
        f"{report['missing_keys']} missing, {report['new_keys']} new"
    )


def arch(
    source: Annotated[
        Path,
        typer.Option(
            help="GPT-2 / LLaMA checkpoint: our model dir, a HF GPT2LMHeadModel or "
            "LlamaForCausalLM dir, a Meta consolidated.*.pth dir, or one .pt/.pth/.bin/"
            ".safetensors file."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "--output", help="New MM-Rec model directory (report written inside)."
        ),
    ],
    target: Annotated[str, typer.Option(help="Target architecture.")] = "mmrec",
    preset: Annotated[
        str,
        typer.Option(help="MM-Rec preset the target starts from (memory slots, decay MLP, ...)."),
    ] = "mmrec-tiny",
    match_source: Annotated[
        bool,
        typer.Option(
            help="Take vocab, width, layers, heads, FFN and norm from the source so "
            "everything with a counterpart transfers; --no-match-source uses the preset "
            "as it is and reports the mismatches."
        ),  # fmt: skip
    ] = True,
    config: Annotated[
        Path | None,
        typer.Option(help="JSON file of MMRecConfig fields, applied last."),
    ] = None,
    source_config: Annotated[
        Path | None,
        typer.Option(
            help="The source's config.json/params.json when it is not beside the weights."
        ),
    ] = None,
    vocab_size: Annotated[
        int | None, typer.Option("--vocab-size", "--vocab_size", help="Target vocab_size.")
    ] = None,
    model_dim: Annotated[
        int | None, typer.Option("--model-dim", "--model_dim", help="Target width (n_embd).")
    ] = None,
    num_layers: Annotated[
        int | None, typer.Option("--num-layers", "--num_layers", help="Target blocks (n_layer).")
    ] = None,
    num_heads: Annotated[
        int | None, typer.Option("--num-heads", "--num_heads", help="Target heads (n_head).")
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Fail unless every source tensor is transferred completely.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the new components' initialisation.")] = 0,
) -> None:
    """Transfer a transformer's weights into MM-Rec and write conversion_report.json beside them.

    By default the target copies every shared dimension of the source (vocab, width, layers,
    heads, FFN kind and width, norm) and takes the rest from --preset. --vocab-size,
    --model-dim, --num-layers and --num-heads (also spelt with underscores) set those fields
    last, after --config.
    """
    from gptforge.conversion.arch import REPORT_FILE, convert_to_mmrec_dir

    if target not in TARGETS:
        typer.secho(
            f"error: --target {target!r} is not supported; choose one of {list(TARGETS)}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2)
    flags = {"vocab_size": vocab_size, "n_embd": model_dim, "n_layer": num_layers,
             "n_head": num_heads}  # fmt: skip
    try:
        path, report = convert_to_mmrec_dir(
            source,
            out,
            preset=preset,
            match_source=match_source,
            config=_config_overrides(config, flags),
            source_config=source_config,
            strict=strict,
            force=force,
            seed=seed,
        )
    except (ValueError, OSError) as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from e
    _echo_report(report)
    typer.echo(f"wrote {path} (report: {path / REPORT_FILE})")


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``gptforge convert arch`` to the shared ``convert`` group."""
    groups["convert"].command("arch")(arch)
