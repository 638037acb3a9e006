"""CLI verbs of the conversion area.

``gptforge convert to-hf|from-hf|from-openai|from-meta|from-torch|from-gguf|to-meta|to-gguf|merge-lora``
(in the shared ``convert`` group) and ``gptforge inspect PATH [--json]`` (on the root).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

Force = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists.")]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Output path (must not exist unless --force).")
]


def _run(action: Callable[[], Any], what: str) -> Any:
    """Run a conversion, turning its errors into a red one-line message and exit code 2."""
    from gptforge.conversion import ConversionError

    start = time.perf_counter()
    try:
        result = action()
    except (ConversionError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    typer.echo(f"{what} in {time.perf_counter() - start:.1f}s")
    return result


def to_hf(
    ckpt: Annotated[
        Path, typer.Option("--ckpt", help="A gptforge run or model directory (not a .gguf file).")
    ],
    out: Out,
    dtype: Annotated[
        str | None, typer.Option(help="float32, float16 or bfloat16 (default: as saved).")
    ] = None,
    tokenizer: Annotated[bool, typer.Option(help="Write the tokenizer files too.")] = True,
    force: Force = False,
) -> None:
    """Export a run to a Hugging Face directory (AutoModelForCausalLM / AutoTokenizer load it)."""
    from gptforge.conversion import export_hf

    _run(
        lambda: export_hf(ckpt, out, force=force, tokenizer=tokenizer, dtype=dtype), f"wrote {out}"
    )


def merge_lora(
    run: Annotated[
        Path,
        typer.Option("--run", help="A LoRA run (adapter_config.json + adapter_model.safetensors)."),
    ],
    out: Out,
    base: Annotated[
        Path | None, typer.Option(help="The base model directory (default: the run's base/).")
    ] = None,
    force: Force = False,
) -> None:
    """Fold a LoRA run's adapters into its base: a plain model directory for to-hf, to-gguf, chat."""
    import shutil

    from gptforge.conversion.peft_adapter import lora_base_dir, merge_adapter

    if out.exists() and not force:
        typer.secho(
            f"error: {out} exists; pass --force to replace it", err=True, fg=typer.colors.RED
        )
        raise typer.Exit(code=2)
    _run(lambda: merge_adapter(base or lora_base_dir(run), run, out), f"wrote {out}")
    if (run / "chat.json").is_file():  # the chat template travels with the merged weights
        shutil.copyfile(run / "chat.json", out / "chat.json")


def from_hf(
    hf: Annotated[
        Path, typer.Option("--hf", help="A GPT2LMHeadModel or LlamaForCausalLM directory.")
    ],
    out: Out,
    dtype: Annotated[
        str | None, typer.Option(help="float32, float16 or bfloat16 (default: as stored).")
    ] = None,
    tokenizer: Annotated[bool, typer.Option(help="Convert the tokenizer too.")] = True,
    force: Force = False,
) -> None:
    """Import a Hugging Face GPT-2 / Llama directory (safetensors or .bin, sharded or not)."""
    from gptforge.conversion import import_hf

    _run(lambda: import_hf(hf, out, force=force, tokenizer=tokenizer, dtype=dtype), f"wrote {out}")


def from_openai(
    dir: Annotated[
        Path, typer.Option("--dir", help="OpenAI's GPT-2 release dir (hparams.json, model.ckpt.*).")
    ],
    out: Out,
    tokenizer: Annotated[
        bool, typer.Option(help="Build the tokenizer from encoder.json + vocab.bpe.")
    ] = True,
    force: Force = False,
) -> None:
    """Import OpenAI's original GPT-2 release (TensorFlow checkpoint, read without TensorFlow)."""
    from gptforge.conversion import import_openai

    _run(lambda: import_openai(dir, out, force=force, tokenizer=tokenizer), f"wrote {out}")


def from_meta(
    dir: Annotated[
        Path, typer.Option("--dir", help="Meta LLaMA dir (params.json + consolidated.*.pth).")
    ],
    out: Out,
    tokenizer: Annotated[
        Path | None, typer.Option(help="A tokenizer dir (ours or HF tokenizer.json) to bundle.")
    ] = None,
    force: Force = False,
) -> None:
    """Import Meta's original LLaMA checkpoint, permuting q/k for rotate-half RoPE."""
    from gptforge.conversion import import_meta

    _run(lambda: import_meta(dir, out, force=force, tokenizer_dir=tokenizer), f"wrote {out}")


def from_torch(
    ckpt: Annotated[
        Path,
        typer.Option(
            "--ckpt",
            help="A nanoGPT ckpt.pt / best_model.pt or a state dict of the LLMs-from-scratch "
            "book's GPTModel (.pt/.pth).",
        ),
    ],
    out: Out,
    n_head: Annotated[
        int | None,
        typer.Option(help="Attention heads, when the file does not store them (the book's model)."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="A tokenizer dir to bundle (ours or HF tokenizer.json / GPT-2 files)."),
    ] = None,
    force: Force = False,
) -> None:
    """Import a nanoGPT or LLMs-from-scratch GPT checkpoint (read with weights_only=True)."""
    from gptforge.conversion import import_pytorch

    _run(
        lambda: import_pytorch(ckpt, out, n_head=n_head, tokenizer_dir=tokenizer, force=force),
        f"wrote {out}",
    )


def from_gguf(
    gguf: Annotated[
        Path, typer.Option("--gguf", help="A .gguf file gptforge wrote (gpt2 or llama).")
    ],
    out: Out,
    force: Force = False,
) -> None:
    """Recover a model and its tokenizer from a GGUF file (q8_0/f16 tensors dequantized)."""
    from gptforge.conversion import import_gguf

    _run(lambda: import_gguf(gguf, out, force=force), f"wrote {out}")


def to_meta(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Our Llama run/model directory.")],
    out: Out,
    force: Force = False,
) -> None:
    """Export a Llama-family run as Meta's consolidated.00.pth + params.json."""
    from gptforge.conversion import export_meta

    _run(lambda: export_meta(ckpt, out, force=force), f"wrote {out}")


def to_gguf(
    out: Out,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Our run/model directory.")] = None,
    hf: Annotated[
        Path | None, typer.Option("--hf", help="Or a Hugging Face GPT-2 / Llama directory.")
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, or the K-quants q4_k_m, q5_k_m, q6_k "
            "(llama.cpp's quantizer: pip install 'gptforge-conversion[llama-cpp]')."
        ),
    ] = "f16",
    modelfile: Annotated[
        bool, typer.Option(help="Write an Ollama Modelfile beside the .gguf.")
    ] = True,
    name: Annotated[
        str | None, typer.Option(help="general.name (default: the source dir name).")
    ] = None,
    force: Force = False,
) -> None:
    """Write a GGUF file for llama.cpp / Ollama, tokenizer embedded, plus an Ollama Modelfile."""
    from gptforge.conversion.gguf_export import export_gguf

    if (ckpt is None) == (hf is None):
        typer.secho(
            "error: pass exactly one of --ckpt RUN_DIR or --hf HF_DIR",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=2)
    src = ckpt if ckpt is not None else hf
    assert src is not None
    _run(
        lambda: export_gguf(
            src,
            out,
            dtype=dtype,  # type: ignore[arg-type]  # export_gguf names the valid types
            force=force,
            modelfile=modelfile,
            name=name,
            report=lambda line: typer.echo(f"fallback: {line}"),
        ),
        f"wrote {out}",
    )


def inspect(
    path: Annotated[
        Path, typer.Argument(help="A .pt/.pth/.bin/.safetensors/.gguf file or a model directory.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Describe a checkpoint: family, vocab, width, layers, heads, FFN, parameters, dtypes, ties."""
    from gptforge.conversion import ConversionError
    from gptforge.conversion.inspect import format_info, inspect_checkpoint

    try:
        info = inspect_checkpoint(path)
    except (ConversionError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(info.to_dict(), indent=2) if as_json else format_info(info))


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the root app and the shared groups."""
    convert = groups["convert"]
    convert.command("to-hf")(to_hf)
    convert.command("from-hf")(from_hf)
    convert.command("from-openai")(from_openai)
    convert.command("from-meta")(from_meta)
    convert.command("to-meta")(to_meta)
    convert.command("from-torch")(from_torch)
    convert.command("from-gguf")(from_gguf)
    convert.command("to-gguf")(to_gguf)
    convert.command("merge-lora")(merge_lora)
    root.command("inspect")(inspect)
