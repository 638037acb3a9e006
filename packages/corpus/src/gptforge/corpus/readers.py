"""Streamed readers for every corpus source gptforge accepts.

A *source* is a text file, a directory (walked recursively in sorted order), a glob pattern, a
JSON-lines file (one document per line, text under a named field), a parquet or arrow file, a
directory written by ``datasets.Dataset.save_to_disk``, the name ``"default"`` (the embedded
default corpus), or a list of any of those. Everything is streamed: a corpus larger than RAM is
read piece by piece.

What a *document* is depends on the format: one JSON line, one table row, one text file, or
(asked for) one blank-line-separated paragraph of a text file. Documents longer than
``chunk_bytes`` come in pieces cut where the tokenizer splits anyway, so memory stays bounded by
the piece size whatever the shape of the corpus (one huge line included).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gptforge.corpus.cutting import Segment, cut_point, split_text
from gptforge.corpus.default import DEFAULT_CORPUS, default_corpus_path
from gptforge.corpus.errors import CorpusError
from gptforge.corpus.tables import arrow_segments, check_text, parquet_segments, saved_dataset_files

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


def iter_segments(
    source: Source,
    *,
    field: str = "text",
    chunk_bytes: int = 1 << 20,
    paragraphs: bool = False,
    part: tuple[int, int] = (0, 1),
) -> Iterator[Segment]:
    """Stream a corpus as ``(text, ends_document)`` pieces of at most ``chunk_bytes`` bytes.

    A document is a text file (or, with ``paragraphs``, each run of lines between blank lines),
    a ``.jsonl`` record or a table row. Documents longer than ``chunk_bytes`` come in several
    pieces cut where the tokenizer would split anyway (:mod:`gptforge.corpus.cutting`); only
    the last piece of a document has ``ends_document`` set. Empty documents are skipped.

    Args:
        source: A path, a glob pattern, ``"default"``, or a list of those (read in order).
        field: The text field of ``.jsonl`` records and table rows.
        chunk_bytes: The most UTF-8 bytes per piece (>= 64): what bounds memory.
        paragraphs: Split text files into documents at blank lines.
        part: ``(index, count)``: read only the documents that start in the ``index``-th of
            ``count`` equal byte ranges of the whole source (files laid end to end; table rows
            spread evenly over their file's bytes). The parts are disjoint, in order, and
            together give the whole source.

    Raises:
        CorpusError: A path is missing, a file is not UTF-8 (the message gives the byte offset),
            a record lacks ``field``, or the whole source holds no text.

    >>> next(iter_segments("default"))[1]
    True
    """
    index, count = part
    if chunk_bytes < 64:
        raise ValueError(f"chunk_bytes must be >= 64, got {chunk_bytes!r}")
    if not 0 <= index < count:
        raise ValueError(f"part index must be in [0, {count}), got {index!r} of {count!r}")
    files = _source_files(source, field)
    sizes = [_size(path) for path, _ in files]
    total = sum(sizes)
    lo, hi = index * total // count, (index + 1) * total // count
    start, found = 0, False
    for (path, fld), size in zip(files, sizes, strict=True):
        a, b = max(lo - start, 0), min(hi - start, size)
        start += size
        if a < b:
            for segment in _read_file(path, fld, chunk_bytes, a, b, paragraphs):
                found = True
                yield segment
    if not found and count == 1:
        raise CorpusError(
            f"corpus source {_describe(source)} is empty: it holds no non-empty document "
            f"(field={field!r}); add text to it or point at another source"
        )


def segment_documents(
    documents: Iterable[str | Mapping[str, Any]], *, field: str = "text", chunk_bytes: int = 1 << 20
) -> Iterator[Segment]:
    """:func:`iter_segments` for documents already in Python: strings or rows (``row[field]``),
    such as a ``datasets`` dataset loaded with ``streaming=True``; empty ones are skipped."""
    for i, doc in enumerate(documents):
        text = doc if isinstance(doc, str) else check_text(doc.get(field), f"row {i}", field)
        if text:
            yield from split_text(text, chunk_bytes)


def iter_documents(
    source: Source, *, field: str = "text", chunk_bytes: int = 1 << 20, paragraphs: bool = False
) -> Iterator[str]:
    """Stream the texts of :func:`iter_segments` (a long document comes in several pieces).

    >>> docs = iter_documents("default")
    >>> len(next(docs)) > 0
    True
    """
    for text, _ in iter_segments(
        source, field=field, chunk_bytes=chunk_bytes, paragraphs=paragraphs
    ):
        yield text


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


def _source_files(source: Source, field: str) -> list[tuple[Path, str]]:
    """Every file to read with its text field; a saved dataset becomes its Arrow files."""
    if isinstance(source, str | os.PathLike):
        sources: Sequence[str | os.PathLike[str]] = [source]
    elif isinstance(source, Sequence) and not isinstance(source, bytes):
        sources = source
    else:
        raise CorpusError(
            f"corpus source {source!r} has type {type(source).__name__}; pass {_ACCEPTED}"
        )
    files: list[tuple[Path, str]] = []
    for item in sources:
        # The default corpus always stores its documents under "text".
        fld = "text" if str(item) == DEFAULT_CORPUS else field
        for path in resolve_files(item):
            if path.is_dir():
                files.extend((arrow, fld) for arrow in saved_dataset_files(path, fld))
            else:
                files.append((path, fld))
    return files


def _size(path: Path) -> int:
    return path.stat().st_size


def _read_file(
    path: Path, field: str, chunk: int, a: int, b: int, paragraphs: bool
) -> Iterator[Segment]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _iter_jsonl(path, field, chunk, a, b)
    if suffix == ".parquet":
        return parquet_segments(path, field, chunk, a, b)
    if suffix == ".arrow":
        return arrow_segments(path, field, chunk, a, b)
    return _iter_text_file(path, chunk, a, b, paragraphs)


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


# A paragraph ends at a line holding only whitespace; any run of such lines separates two.
_BLANK_LINES = re.compile(rb"\n[ \t\r\f\v]*\n(?:[ \t\r\f\v]*\n)*")
_BOM = b"\xef\xbb\xbf"


def _iter_text_file(path: Path, chunk: int, a: int, b: int, paragraphs: bool) -> Iterator[Segment]:
    """A text file as one document, or as blank-line paragraphs, in pieces of <= ``chunk``."""
    if not paragraphs and a > 0:
        return  # the file's one document starts at byte 0, which is another part's
    with open(path, "rb") as f:
        buf = f.read(len(_BOM))
        base = len(_BOM) if buf == _BOM else 0  # file offset of buf[0]
        buf = b"" if base else buf
        pos, eof, keep, has_text = 0, False, a == 0, False

        def piece(end: int, last: bool) -> Iterator[Segment]:
            nonlocal has_text
            try:
                text = buf[pos:end].decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, base + pos + e.start, buf[pos:end], e.start) from None
            if keep and (text or (last and has_text)):
                yield text, last
            has_text = False if last else has_text or bool(text)

        while True:
            match = _BLANK_LINES.search(buf, pos) if paragraphs else None
            complete = match is not None and (match.end() < len(buf) or eof)
            if not eof and (len(buf) - pos <= chunk or (match is not None and not complete)):
                more = f.read(max(chunk, 1 << 16))
                eof = not more
                buf, base, pos = buf[pos:] + more, base + pos, 0
                continue
            if match is not None and complete and match.start() - pos <= chunk:
                yield from piece(match.start(), True)
                pos = match.end()
                keep = a <= base + pos < b
                if base + pos >= b:
                    return
                continue
            if eof and len(buf) - pos <= chunk:
                yield from piece(len(buf), True)
                return
            cut = pos + cut_point(buf[pos : pos + chunk + 1], chunk)
            yield from piece(cut, False)
            pos = cut


def _iter_jsonl(path: Path, field: str, chunk: int, a: int, b: int) -> Iterator[Segment]:
    """``record[field]`` of every line of a JSON-lines file that starts in bytes ``[a, b)``."""
    with open(path, "rb") as f:
        if a > 0:  # skip the record that straddles ``a``: it belongs to the part before
            f.seek(a - 1)
            f.readline()
        offset = f.tell()
        where = (lambda n, off: f"line {n} (byte offset {off})") if a == 0 else _at_offset
        lineno = 0
        while offset < b:
            raw = f.readline()
            if not raw:
                return
            line_offset, offset, lineno = offset, offset + len(raw), lineno + 1
            text = _jsonl_text(path, raw, field, where(lineno, line_offset), line_offset)
            if text:
                yield from split_text(text, chunk)


def _at_offset(_: int, offset: int) -> str:
    return f"the line at byte offset {offset}"


def _jsonl_text(path: Path, raw: bytes, field: str, where: str, offset: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, offset + e.start, raw, e.start) from None
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(
            f"{str(path)!r} {where} is not valid JSON: {e.msg}; every line of a .jsonl file "
            "must be one JSON object"
        ) from None
    if not isinstance(record, dict):
        raise CorpusError(
            f"{str(path)!r} {where} is a JSON {type(record).__name__}, not an object; write "
            f"one {{{field!r}: ...}} object per line"
        )
    if field not in record:
        raise CorpusError(
            f"{str(path)!r} {where} has no field {field!r}; its fields are {sorted(record)}; "
            "pass the right one as field= (CLI: --field)"
        )
    return check_text(record[field], f"{str(path)!r} {where}", field)
