"""Streamed readers for every corpus source gptforge accepts.

A *source* is a text file, a directory (walked recursively in sorted order), a glob pattern, a
JSON-lines file (one document per line, text under a named field), a parquet or arrow file, a
directory written by ``datasets.Dataset.save_to_disk``, the name ``"default"`` (the embedded
default corpus), or a list of any of those. Everything is streamed: a corpus larger than RAM is
read piece by piece.

What a *document* is depends on the format: one JSON line, one dataset row, or one text file.
Text files larger than ``whole_file_bytes`` are yielded in line-aligned pieces of about
``chunk_bytes`` so memory stays bounded.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from gptforge.corpus.default import DEFAULT_CORPUS, default_corpus_path
from gptforge.corpus.errors import CorpusError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = (".parquet", ".arrow")
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TABLE_SUFFIXES
_GLOB_CHARS = frozenset("*?[")
_ACCEPTED = (
    "a text file, a directory, a glob pattern, a .jsonl file, a .parquet/.arrow file, "
    f"a datasets.save_to_disk directory, or {DEFAULT_CORPUS!r}"
)

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def iter_documents(
    source: Source,
    *,
    field: str = "text",
    chunk_bytes: int = 1 << 20,
    whole_file_bytes: int = 8 << 20,
) -> Iterator[str]:
    """Stream the non-empty documents of a corpus source.

    Args:
        source: A path, a glob pattern, ``"default"``, or a list of those (read in order).
        field: The text field of ``.jsonl`` records and dataset rows.
        chunk_bytes: Size of the pieces a large text file is split into (line-aligned).
        whole_file_bytes: Text files up to this size are yielded as one document.

    Raises:
        CorpusError: A path is missing, a file is not UTF-8 (the message gives the byte offset),
            a record lacks ``field``, or the whole source holds no text.

    >>> docs = iter_documents("default")
    >>> len(next(docs)) > 0
    True
    """
    if chunk_bytes <= 0 or whole_file_bytes < 0:
        raise ValueError(
            f"chunk_bytes must be > 0 and whole_file_bytes >= 0, got {chunk_bytes!r} and "
            f"{whole_file_bytes!r}"
        )
    count = 0
    for doc in _iter_source(source, field, chunk_bytes, whole_file_bytes):
        if doc:
            count += 1
            yield doc
    if count == 0:
        raise CorpusError(
            f"corpus source {_describe(source)} is empty: it holds no non-empty document "
            f"(field={field!r}); add text to it or point at another source"
        )


def resolve_files(source: str | os.PathLike[str]) -> list[Path]:
    """Return the files a single path or glob source stands for, in the order they are read.

    A ``datasets.save_to_disk`` directory resolves to itself. ``"default"`` resolves to the
    default corpus file.
    """
    if str(source) == DEFAULT_CORPUS:
        return [default_corpus_path()]
    path = Path(source)
    if path.is_dir():
        if _is_saved_dataset(path):
            return [path]
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_corpus_file(p, path))
        if not files:
            raise CorpusError(
                f"directory {str(path)!r} holds no corpus file; gptforge reads files ending in "
                f"{', '.join(KNOWN_SUFFIXES)} (hidden files are skipped)"
            )
        return files
    if path.is_file():
        return [path]
    text = str(source)
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not matches:
            raise CorpusError(f"glob {text!r} matched no file; check the pattern and the directory")
        return matches
    raise CorpusError(f"corpus source {text!r} does not exist; pass {_ACCEPTED}")


def _iter_source(source: Source, field: str, chunk_bytes: int, whole: int) -> Iterator[str]:
    if isinstance(source, str | os.PathLike):
        sources: Sequence[str | os.PathLike[str]] = [source]
    elif isinstance(source, Sequence) and not isinstance(source, bytes):
        sources = source
    else:
        raise CorpusError(
            f"corpus source {source!r} has type {type(source).__name__}; pass {_ACCEPTED}"
        )
    for item in sources:
        is_default = str(item) == DEFAULT_CORPUS
        for path in resolve_files(item):
            # The default corpus always stores its documents under "text".
            yield from _iter_file(path, "text" if is_default else field, chunk_bytes, whole)


def _iter_file(path: Path, field: str, chunk_bytes: int, whole: int) -> Iterator[str]:
    suffix = path.suffix.lower()
    if path.is_dir():
        yield from _iter_saved_dataset(path, field)
    elif suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path, field)
    elif suffix in TABLE_SUFFIXES:
        yield from _iter_table_file(path, field)
    else:
        yield from _iter_text_file(path, chunk_bytes, whole)


def _is_corpus_file(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    hidden = any(part.startswith(".") for part in rel.parts)
    return not hidden and path.suffix.lower() in KNOWN_SUFFIXES


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _describe(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return repr(str(source))
    return repr([str(s) for s in source])


def _utf8_error(path: Path, offset: int, data: bytes, start: int) -> CorpusError:
    bad = data[start : start + 1].hex()
    return CorpusError(
        f"{str(path)!r} is not valid UTF-8: byte 0x{bad} at byte offset {offset}; re-encode the "
        f"file as UTF-8 (for example `iconv -f latin1 -t utf-8 in.txt > out.txt`) or remove it"
    )


def _iter_text_file(path: Path, chunk_bytes: int, whole: int) -> Iterator[str]:
    """Yield a text file whole, or in line-aligned pieces when it is larger than ``whole``."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= whole:
            data = f.read()
            start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # drop a UTF-8 BOM
            try:
                yield data[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, start + e.start, data[start:], e.start) from None
            return
        offset = 0  # file offset of pending[0]
        pending = b""
        while True:
            block = f.read(chunk_bytes)
            data = pending + block
            if offset == 0 and data.startswith(b"\xef\xbb\xbf"):
                data, offset = data[3:], 3
            # Cut after the last newline so a piece never splits a line or a UTF-8 sequence.
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if cut == 0:
                cut = len(data) if len(data) >= 4 * chunk_bytes else 0  # a huge single line
            piece, pending = data[:cut], data[cut:]
            if piece:
                try:
                    yield piece.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _utf8_error(path, offset + e.start, piece, e.start) from None
                offset += len(piece)
            if not block:
                return


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    """Yield ``record[field]`` for every line of a JSON-lines file."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line_offset, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, line_offset + e.start, raw, e.start) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(
                    f"{str(path)!r} line {lineno} (byte offset {line_offset}) is not valid JSON: "
                    f"{e.msg}; every line of a .jsonl file must be one JSON object"
                ) from None
            if not isinstance(record, dict):
                raise CorpusError(
                    f"{str(path)!r} line {lineno} (byte offset {line_offset}) is a JSON "
                    f"{type(record).__name__}, not an object; write one {{{field!r}: ...}} "
                    "object per line"
                )
            if field not in record:
                raise CorpusError(
                    f"{str(path)!r} line {lineno} (byte offset {line_offset}) has no field "
                    f"{field!r}; its fields are {sorted(record)}; pass the right one as "
                    "field= (CLI: --field)"
                )
            yield _check_text(record[field], f"{str(path)!r} line {lineno}", field)


def _check_text(value: object, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(
            f"{where}: field {field!r} holds a {type(value).__name__} ({value!r:.60}), not text; "
            "pass the name of a string field as field= (CLI: --field)"
        )
    return value


def _check_columns(columns: Sequence[str] | None, field: str, where: str) -> None:
    if columns is not None and field not in columns:
        raise CorpusError(
            f"{where} has no column {field!r}; its columns are {list(columns)}; pass the right "
            "one as field= (CLI: --field)"
        )


def _iter_table_file(path: Path, field: str) -> Iterator[str]:
    """Stream one column of a parquet or arrow file through ``datasets`` (no cache copy)."""
    import datasets

    builder = "parquet" if path.suffix.lower() == ".parquet" else "arrow"
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
        columns = list(ds.features) if ds.features is not None else None
    except Exception as e:  # datasets raises many types for unreadable files
        raise CorpusError(f"{str(path)!r} could not be read as {builder}: {e}") from None
    _check_columns(columns, field, repr(str(path)))
    for i, row in enumerate(ds.select_columns([field])):
        yield _check_text(row[field], f"{str(path)!r} row {i}", field)


def _iter_saved_dataset(path: Path, field: str) -> Iterator[str]:
    """Stream one column of a ``save_to_disk`` directory (memory-mapped, so larger than RAM)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise CorpusError(
                f"dataset {str(path)!r} has splits {sorted(ds)} but no 'train' split; point at "
                "one split's directory instead"
            )
        ds = ds["train"]
    _check_columns(ds.column_names, field, f"dataset {str(path)!r}")
    column = ds.select_columns([field])
    for start in range(0, len(column), 1024):
        batch = column[start : start + 1024][field]
        for i, value in enumerate(batch):
            yield _check_text(value, f"dataset {str(path)!r} row {start + i}", field)
