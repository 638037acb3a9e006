"""CLI verbs of the tokenizer area: ``gptforge tokenizer train|encode|decode|info``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from gptforge.tokenizer import Tokenizer

app = typer.Typer(
    help="Train, inspect and use byte-level BPE tokenizers.",
    no_args_is_help=True,
)


def _fail(error: Exception) -> typer.Exit:
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _load(tokenizer: str) -> Tokenizer:
    """A tokenizer directory, a directory of GPT-2 files (encoder.json + vocab.bpe), or
    ``gpt2`` for OpenAI's GPT-2 from the offline caches."""
    from gptforge.tokenizer import Tokenizer

    path = Path(tokenizer)
    if tokenizer == "gpt2" and not path.exists():
        return Tokenizer.gpt2()
    if path.is_dir() and not (path / "tokenizer.json").exists():
        gpt2_names = ("encoder.json", "vocab.json")
        if any((path / name).exists() for name in gpt2_names):
            return Tokenizer.gpt2(path)
    return Tokenizer.from_dir(path)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the tokenizer to.")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="Corpus source: file, directory, glob, .jsonl, .parquet, .arrow, saved "
            "dataset, or 'default' (repeatable). Default: the embedded default corpus.",
        ),
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Total vocabulary size.")] = 8192,
    min_frequency: Annotated[int, typer.Option(help="Minimum count of a pair to merge.")] = 2,
    special_tokens: Annotated[
        list[str] | None,
        typer.Option("--special-token", help="Special token (repeatable). Default: <|endoftext|>."),
    ] = None,
    chat_tokens: Annotated[
        bool, typer.Option(help="Also add <INST> </INST> <RESP> </RESP> <|pad|>.")
    ] = False,
    field: Annotated[
        str, typer.Option(help="Text field of .jsonl records / dataset rows.")
    ] = "text",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    pre_tokenizer: Annotated[
        str,
        typer.Option(
            "--pre-tokenizer",
            help="How text is cut before merging: gpt2 (GPT-2's regex, English contractions: "
            "\"İstanbul'da\" -> 'İstanbul' \"'d\" 'a') or tekken (no contractions, apostrophe "
            "suffixes stay whole: 'İstanbul' \"'da\"; llama.cpp's tekken in GGUF).",
        ),
    ] = "gpt2",
) -> None:
    """Train a byte-level BPE with HF tokenizers and save it to --out."""
    from gptforge.tokenizer import CHAT_TOKENS, EOT, Tokenizer

    specials = list(special_tokens) if special_tokens else [EOT]
    if chat_tokens:
        specials += [t for t in CHAT_TOKENS if t not in specials]
    sources = list(input) if input else ["default"]
    start = time.perf_counter()
    try:
        tok = Tokenizer.train(
            sources,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            field=field,
            show_progress=progress,
            pre_tokenizer=pre_tokenizer,
        )
        tok.save(out)
    except ValueError as e:
        raise _fail(e) from None
    seconds = time.perf_counter() - start
    typer.echo(
        f"trained {tok.name} ({tok.pre_tokenizer} pre-tokenizer) in {seconds:.1f}s: n_vocab={tok.n_vocab}, "
        f"merges={len(tok.merges)}, special_tokens={tok.special_tokens}"
    )
    typer.echo(f"saved to {out} (fingerprint {tok.fingerprint[:16]})")


@app.command()
def encode(
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", "-t", help="Tokenizer directory, or 'gpt2'.")
    ],
    text: Annotated[str | None, typer.Argument(help="Text to encode ('-' reads stdin).")] = None,
    file: Annotated[Path | None, typer.Option(help="Encode this file's text instead.")] = None,
    allow_special: Annotated[
        bool, typer.Option(help="Encode special-token text as the special ids.")
    ] = False,
    pieces: Annotated[
        bool,
        typer.Option(
            help="Also print each token as text; bytes of a character split across tokens "
            "show as <0xC4> and the token is marked (partial UTF-8)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Encode text to token ids."""
    from gptforge.tokenizer import SpecialTokenError

    if (text is None) == (file is None):
        raise _fail(ValueError("pass exactly one of TEXT and --file (use TEXT '-' for stdin)"))
    if file is not None:
        body = file.read_text(encoding="utf-8")
    else:
        body = sys.stdin.read() if text == "-" else str(text)
    try:
        tok = _load(tokenizer)
        ids = tok.encode(body, allowed_special="all" if allow_special else frozenset())
    except SpecialTokenError as e:
        raise _fail(ValueError(f"{e} (CLI: pass --allow-special)")) from None
    except ValueError as e:
        raise _fail(e) from None
    from gptforge.tokenizer.byte_level import readable_piece

    shown = [readable_piece(tok.id_to_token(i)) for i in ids] if pieces else []
    if as_json:
        record: dict[str, object] = {"ids": ids, "count": len(ids)}
        if pieces:
            record["pieces"] = [text for text, _ in shown]
            record["partial"] = [partial for _, partial in shown]
        typer.echo(json.dumps(record, ensure_ascii=False))
        return
    typer.echo(" ".join(map(str, ids)))
    for i, (text, partial) in zip(ids, shown, strict=False):  # shown is empty unless --pieces
        typer.echo(f"{i:>7}  {text!r}" + ("  (partial UTF-8)" if partial else ""))
    typer.echo(f"{len(ids)} tokens, {len(body.encode('utf-8'))} bytes", err=True)


def _plain_or_quoted(text: str) -> str:
    # Bare text reads best ("a + n -> an"); quotes only where spaces or controls would vanish.
    return text if text.isprintable() and text.strip() == text else repr(text)


@app.command()
def merges(
    tokenizer: Annotated[str, typer.Argument(help="Tokenizer directory, or 'gpt2'.")],
    limit: Annotated[
        int | None, typer.Option("--limit", help="Show only the first N merges.")
    ] = None,
) -> None:
    """List the merges in rank order as text ("Merge 50/424: a + n -> an").

    Bytes of a character split by a merge show as <0xC4>; such merges are marked.
    """
    from gptforge.tokenizer.byte_level import readable_piece

    if limit is not None and limit < 0:
        raise _fail(ValueError(f"--limit must be >= 0, got {limit}"))
    try:
        pairs = _load(tokenizer).merges
    except ValueError as e:
        raise _fail(e) from None
    total = len(pairs)
    for rank, (a, b) in enumerate(pairs[:limit] if limit is not None else pairs, 1):
        (left, p1), (right, p2), (both, p3) = map(readable_piece, (a, b, a + b))
        left, right, both = map(_plain_or_quoted, (left, right, both))
        mark = "  (partial UTF-8)" if p1 or p2 or p3 else ""
        typer.echo(f"Merge {rank}/{total}: {left} + {right} -> {both}{mark}")


@app.command()
def decode(
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", "-t", help="Tokenizer directory, or 'gpt2'.")
    ],
    ids: Annotated[list[int], typer.Argument(help="Token ids.")],
) -> None:
    """Decode token ids to text."""
    try:
        typer.echo(_load(tokenizer).decode(ids))
    except ValueError as e:
        raise _fail(e) from None


@app.command()
def info(
    tokenizer: Annotated[str, typer.Argument(help="Tokenizer directory, or 'gpt2'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a tokenizer's name, vocabulary size, special tokens and fingerprint."""
    try:
        tok = _load(tokenizer)
    except ValueError as e:
        raise _fail(e) from None
    sample = "The quick brown fox jumps over the lazy dog."
    record = {
        "path": tokenizer,
        "name": tok.name,
        "n_vocab": tok.n_vocab,
        "merges": len(tok.merges),
        "pre_tokenizer": tok.pre_tokenizer,
        "special_tokens": tok.special_tokens,
        "fingerprint": tok.fingerprint,
        "sample": sample,
        "sample_ids": tok.encode(sample),
    }
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    longest = max(tok.mergeable_ranks, key=len)
    for key, value in record.items():
        typer.echo(f"{key:>15}: {value}")
    typer.echo(f"{'longest token':>15}: {longest!r}")


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``gptforge tokenizer ...`` to the root app."""
    root.add_typer(app, name="tokenizer")
