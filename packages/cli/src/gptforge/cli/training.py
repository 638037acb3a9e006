"""CLI verbs of the training area: ``data prepare``, ``train``, ``finetune``, ``chat``.

The ``train`` and ``finetune`` flags are generated from the fields of
:class:`gptforge.training.TrainConfig` / :class:`~gptforge.training.FinetuneConfig` (``_`` spelled
``-``), with each flag's help taken from the dataclass docstring, so the CLI cannot drift from
the config. Flags left out keep the dataclass default, or on ``--resume`` the resumed run's value.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Optional

import typer
from gptforge.cli.generation import SlideOpt, slide_for
from gptforge.cli.options import DeviceOpt, check_device
from gptforge.training.config import FinetuneConfig, LoopConfig, TrainConfig

# Flag spellings that differ from the field name (`--from` reads as the verb it completes).
# `--block-size` is nanoGPT's name for the context.
ALIASES = {
    "from_run": ["--from", "--from-run"],
    "context_length": ["--context-length", "--block-size"],
}


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def field_help(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Args:`` sections of ``cls`` and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) or ""
        if "Args:" not in doc:
            continue
        current = None
        for line in doc.split("Args:", 1)[1].splitlines():
            match = re.match(r"^\s{4}(\w+): (.*)$", line)
            if match:
                current = match.group(1)
                out[current] = match.group(2).strip().replace("``", "")
            elif current and line.startswith(" " * 8):
                out[current] += " " + line.strip().replace("``", "")
            elif line.strip() and not line.startswith(" "):
                break
    return out


def config_params(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One typer option per field of dataclass ``cls`` (default None: not given)."""
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base = _base_type(hints[f.name])
        names = ALIASES.get(f.name, ["--" + f.name.replace("_", "-")])
        if base is bool:
            names = [f"{names[0]}/--no-{names[0][2:]}"]
        default = f.default
        help_text = f"{docs.get(f.name, '')} [default: {default}]"
        check = check_device if f.name == "device" else None
        option = typer.Option(None, *names, help=help_text, show_default=False, callback=check)
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option,
                annotation=Optional[base],  # noqa: UP045
            )
        )
    return params


def _with_config_flags(
    cls: type, fn: Callable[..., None], extra: list[inspect.Parameter]
) -> Callable[..., None]:
    """``fn(**kwargs)`` whose signature (what typer reads) is the dataclass fields + ``extra``."""

    def command(**kwargs: Any) -> None:
        fn(**kwargs)

    command.__signature__ = inspect.Signature([*extra, *config_params(cls)])  # type: ignore[attr-defined]
    command.__doc__ = fn.__doc__
    return command


def with_shape_flags(fn: Callable[..., None], skip: tuple[str, ...]) -> Callable[..., None]:
    """``fn`` (which takes ``**shape``) with one option per :class:`ModelShape` field added."""
    from gptforge.training.config import ModelShape

    params = inspect.signature(fn, eval_str=True).parameters.values()
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in params
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]

    def command(**kwargs: Any) -> None:
        fn(**kwargs)

    sig = inspect.Signature([*own, *config_params(ModelShape, skip=skip)])
    command.__signature__ = sig  # type: ignore[attr-defined]
    command.__doc__ = fn.__doc__
    return command


def _resume_params() -> list[inspect.Parameter]:
    return [
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--resume", help="Continue this run directory bit-exactly."),
            annotation=Optional[str],  # noqa: UP045
        ),
        inspect.Parameter(
            "override",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False,
                "--override",
                help="With --resume: continue with flags that differ from the run's settings.",
            ),
            annotation=bool,
        ),
    ]


def _fail(exc: BaseException) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _run(kind: str, cls: type[LoopConfig], kwargs: dict[str, Any]) -> None:
    from gptforge.training.checkpoint import CheckpointError
    from gptforge.training.data import DataError
    from gptforge.training.loop import TrainingDiverged
    from gptforge.training.runner import run_job

    resume = kwargs.pop("resume", None)
    override = bool(kwargs.pop("override", False))
    try:
        result = run_job(kind, kwargs, resume, override=override)
    except (TrainingDiverged, DataError, CheckpointError, ValueError, OSError) as exc:
        _fail(exc)
    loop = getattr(result, "loop", result)
    typer.echo(
        f"done: step {loop.step}, {loop.tokens:,} tokens, train loss {loop.train_loss}, "
        f"val loss {loop.val_loss}, {loop.seconds:.1f}s; run directory {loop.run_dir}"
    )


def train_command(**kwargs: Any) -> None:
    """Pre-train a model on prepared token shards (from gptforge data prepare).

    Writes a run directory: a model directory at the top (config.json, model.safetensors,
    tokenizer/), checkpoints/, metrics.jsonl and plots/. Example:
    gptforge train --preset tiny --data runs/data --out runs/train --max-steps 600

    The model is --preset or --config FILE.json with --n-layer, --n-embd, ... on top, or
    --init-from MODEL_DIR to continue from trained weights with a new optimiser.
    """
    _run("pretrain", TrainConfig, kwargs)


def finetune_command(**kwargs: Any) -> None:
    """Instruction fine-tune a run directory (response-only loss, special tokens added).

    Without --data it uses the generated task set with checkable answers and reports held-out
    exact match before and after. Example:
    gptforge finetune --from runs/train --out runs/sft
    """
    _run("finetune", FinetuneConfig, kwargs)


def prepare_command(
    input: str = typer.Option(
        ...,
        "--input",
        help="Corpus source: file, directory, glob, .jsonl, parquet, saved dataset, or 'default'.",
    ),  # noqa: A002
    tokenizer: str = typer.Option(
        ..., "--tokenizer", help="Tokenizer directory or grpc://host:port of a tokenizer service."
    ),
    out: str = typer.Option(..., "--out", help="Output data directory."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of tokens held out for validation."
    ),
    field: str = typer.Option("text", "--field", help="Text field of .jsonl / parquet records."),
    num_proc: int | None = typer.Option(
        None, "--num-proc", help="Encoding processes (default: CPUs, at most 8)."
    ),  # noqa: UP045
    block_tokens: int = typer.Option(
        1024, "--block-tokens", help="Granularity of the train/validation split in tokens."
    ),
    shard_tokens: int = typer.Option(1 << 27, "--shard-tokens", help="Most tokens per shard file."),
    paragraphs: bool = typer.Option(
        False, "--paragraphs", help="Text files hold one document per blank-line paragraph."
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="INDEX/COUNT: prepare one part of the corpus (join parts with `data merge`).",
    ),  # noqa: UP045
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Tokenize a corpus into uint16/uint32 shards plus meta.json (tokenizer, counts, checksums).

    --out is replaced whole, and only when the run succeeds. Example:
    gptforge data prepare --input default --tokenizer runs/tok --out runs/data
    """
    from gptforge.training.prepare import prepare_data

    try:
        meta = prepare_data(
            input,
            _tokenizer_source(tokenizer),
            out,
            val_fraction=val_fraction,
            field=field,
            num_proc=num_proc,
            block_tokens=block_tokens,
            shard_tokens=shard_tokens,
            paragraphs=paragraphs,
            shard=shard,
            progress=progress,
        )
    except (ValueError, OSError, ConnectionError) as exc:
        _fail(exc)
    _report(meta, out)


def _report(meta: dict, out: str) -> None:
    splits = meta["splits"]
    typer.echo(
        f"{meta['documents']} documents -> {splits['train']['tokens']:,} train + "
        f"{splits['val']['tokens']:,} val tokens ({meta['dtype']}) in {out}"
    )


def merge_command(
    parts: list[str] = typer.Argument(..., help="Directories of `data prepare --shard I/N`."),
    out: str = typer.Option(..., "--out", help="Merged data directory."),
) -> None:
    """Join the parts of a sharded preparation into the data one prepare over the whole corpus
    writes (same ids, shards and checksums).

    Example: gptforge data merge runs/part0 runs/part1 --out runs/data
    """
    from gptforge.training.merge import merge_data

    try:
        meta = merge_data(parts, out)
    except (ValueError, OSError) as exc:
        _fail(exc)
    _report(meta, out)


def _tokenizer_source(spec: str) -> Any:
    """A tokenizer directory as given, or a RemoteTokenizer for ``grpc://host:port``."""
    from gptforge.services.tokenizer.remote import GRPC_SCHEME, RemoteTokenizer

    return RemoteTokenizer(spec) if spec.startswith(GRPC_SCHEME) else spec


def chat_command(
    ckpt: str = typer.Option(
        ...,
        "--ckpt",
        help="Run directory written by `gptforge finetune`, or a checkpoint (RUN/checkpoints/best).",
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Answer this instruction and exit (default: interactive)."
    ),  # noqa: UP045
    input: str = typer.Option("", "--input", help="Optional input of the instruction."),  # noqa: A002
    template: str | None = typer.Option(
        None, "--template", help="inst or alpaca (default: the run's)."
    ),  # noqa: UP045
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Most tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 answers greedily."),
    device: DeviceOpt = "auto",
    slide_tokens: SlideOpt = None,
) -> None:
    """Answer instructions with a fine-tuned model using its template.

    Interactive: type an instruction; put an input after ' || ' (e.g. 'Repeat the words. || blue
    moon'); an empty line or Ctrl-D quits. Past the model's context a sliding window goes on
    (see --slide-tokens for what it costs).
    """
    from gptforge.sampling.chat import ChatModel

    try:
        bot = ChatModel(ckpt, device=device, template=template)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)

    def answer(instruction: str, extra: str) -> str:
        try:
            prompt_len = len(bot.prompt_ids(instruction, extra))
            slide = slide_for(bot.model, prompt_len, max_new_tokens, slide_tokens)
        except ValueError as exc:
            _fail(exc)
        return bot.respond(
            instruction,
            extra,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            slide_tokens=slide,
        )

    if prompt is not None:
        typer.echo(answer(prompt, input))
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            typer.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        instruction, _, extra = line.strip().partition(" || ")
        typer.echo(answer(instruction, extra))


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``data prepare``, ``train``, ``finetune`` and ``chat`` to the root app."""
    data = typer.Typer(help="Prepare training data.", no_args_is_help=True)
    data.command("prepare")(prepare_command)
    data.command("merge")(merge_command)
    root.add_typer(data, name="data")
    root.command("train")(_with_config_flags(TrainConfig, train_command, _resume_params()))
    root.command("finetune")(_with_config_flags(FinetuneConfig, finetune_command, _resume_params()))
    root.command("chat")(chat_command)
    root.command("eval")(eval_command)


def eval_command(
    ckpt: str = typer.Option(..., "--ckpt", help="Run/model directory (LoRA runs too) or HF dir."),
    text: str | None = typer.Option(None, "--text", help="Text file(s) for perplexity."),  # noqa: UP045
    data: str | None = typer.Option(None, "--data", help="Prepared data directory."),  # noqa: UP045
    dataset: str | None = typer.Option(
        None, "--dataset", help="A datasets name, NAME or NAME:CONFIG."
    ),  # noqa: UP045
    split: str | None = typer.Option(
        None, "--split", help="Split of --data (val) / --dataset (test)."
    ),  # noqa: UP045
    field: str = typer.Option("text", "--field", help="Text field of records."),
    max_length: int | None = typer.Option(
        None, "--max-length", help="Perplexity window (default: context)."
    ),  # noqa: UP045
    stride: int | None = typer.Option(
        None, "--stride", help="Window stride (default: half the window)."
    ),  # noqa: UP045
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Score at most this many."),  # noqa: UP045
    choices: str | None = typer.Option(
        None, "--choices", help="Multiple-choice .jsonl: context, choices, label."
    ),  # noqa: UP045
    exact_match: bool = typer.Option(
        False, "--exact-match", help="Instruction exact match on the fine-tune's held-out set."
    ),
    instructions: str | None = typer.Option(
        None, "--instructions", help="Alpaca-style .jsonl for exact match."
    ),  # noqa: UP045
    template: str | None = typer.Option(None, "--template", help="inst or alpaca."),  # noqa: UP045
    json_out: str | None = typer.Option(None, "--json", help="Also write the report here."),  # noqa: UP045
    device: DeviceOpt = "auto",
) -> None:
    """Perplexity and bits per byte, multiple-choice accuracy and exact match, as one report.

    Example: gptforge eval --ckpt runs/sft --data runs/data --choices mc.jsonl --exact-match
    """
    import json

    from gptforge.fileio import atomic_write_json
    from gptforge.training.evaluation import evaluate_checkpoint, format_report

    try:
        report = evaluate_checkpoint(
            ckpt,
            text=text,
            data=data,
            dataset=dataset,
            split=split,
            field=field,
            max_length=max_length,
            stride=stride,
            max_tokens=max_tokens,
            choices=choices,
            exact_match=exact_match,
            instructions=instructions,
            template=template,
            device=device,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    typer.echo(format_report(report))
    if json_out:
        atomic_write_json(json_out, report)
        typer.echo(f"wrote {json_out}")
    else:
        typer.echo(json.dumps(report))
