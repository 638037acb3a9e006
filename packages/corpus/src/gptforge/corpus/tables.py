"""Parquet, Arrow and ``datasets.save_to_disk`` sources, read a record batch at a time.

Rows are read with pyarrow's streaming readers from ordinary file reads, never memory-mapped:
pages of a mapped file stay resident and would make a large dataset count against the
process's memory. Each row gets a byte position inside its file (rows spread evenly over the
bytes of their row group or record batch), which is what a ``part`` of the corpus selects on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gptforge.corpus.cutting import Segment, split_text
from gptforge.corpus.errors import CorpusError

_ROWS_PER_BATCH = 1024


def check_text(value: object, where: str, field: str) -> str:
    """``value`` as text (``None`` is empty), or a :class:`CorpusError` naming the field."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(
            f"{where}: field {field!r} holds a {type(value).__name__} ({value!r:.60}), not text; "
            "pass the name of a string field as field= (CLI: --field)"
        )
    return value


def check_columns(columns: Sequence[str], field: str, where: str) -> None:
    """Refuse a table without the ``field`` column, listing the columns it has."""
    if field not in columns:
        raise CorpusError(
            f"{where} has no column {field!r}; its columns are {list(columns)}; pass the right "
            "one as field= (CLI: --field)"
        )


def _rows(
    values: list[Any],
    span: tuple[int, int],
    a: int,
    b: int,
    where: str,
    row0: int,
    field: str,
    chunk: int,
) -> Iterator[Segment]:
    """The rows of one batch that sit in bytes ``[a, b)``; the batch spans ``[first, last)``."""
    first, last = span
    n = len(values)
    for i, value in enumerate(values):
        if a <= first + i * (last - first) // n < b:
            text = check_text(value, f"{where} row {row0 + i}", field)
            if text:
                yield from split_text(text, chunk)


def parquet_segments(path: Path, field: str, chunk: int, a: int, b: int) -> Iterator[Segment]:
    """Rows of one column of a parquet file that sit in bytes ``[a, b)``."""
    import pyarrow.parquet as pq

    where = repr(str(path))
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise CorpusError(f"{where} could not be read as parquet: {e}") from None
    check_columns(pf.schema_arrow.names, field, where)
    size, meta = path.stat().st_size, pf.metadata
    row = 0
    for group in range(pf.num_row_groups):
        n = meta.row_group(group).num_rows
        first, last = row * size // max(meta.num_rows, 1), (row + n) * size // max(meta.num_rows, 1)
        if n and first < b and last > a:
            batches = pf.iter_batches(_ROWS_PER_BATCH, row_groups=[group], columns=[field])
            start = row
            for batch in batches:
                values = batch.column(0).to_pylist()
                lo = first + (start - row) * (last - first) // n
                hi = first + (start - row + len(values)) * (last - first) // n
                yield from _rows(values, (lo, hi), a, b, where, start, field, chunk)
                start += len(values)
        row += n


def arrow_segments(path: Path, field: str, chunk: int, a: int, b: int) -> Iterator[Segment]:
    """Rows of one column of an Arrow IPC file (stream or file format) in bytes ``[a, b)``."""
    import pyarrow as pa

    where = repr(str(path))
    with pa.OSFile(str(path)) as src:
        try:
            reader: Any = pa.ipc.open_stream(src)
            batches = _stream_batches(reader, src)
        except pa.ArrowInvalid:
            try:
                reader = pa.ipc.open_file(str(path))
            except pa.ArrowInvalid as e:
                raise CorpusError(f"{where} could not be read as arrow: {e}") from None
            batches = _file_batches(reader, path.stat().st_size)
        check_columns(reader.schema.names, field, where)
        column = reader.schema.get_field_index(field)
        row = 0
        for batch, first, last in batches:
            if first < b and last > a:
                values = batch.column(column).to_pylist()
                yield from _rows(values, (first, last), a, b, where, row, field, chunk)
            row += batch.num_rows


def _stream_batches(reader: Any, src: Any) -> Iterator[tuple[Any, int, int]]:
    first = src.tell()
    for batch in reader:
        last = src.tell()
        yield batch, first, last
        first = last


def _file_batches(reader: Any, size: int) -> Iterator[tuple[Any, int, int]]:
    n = reader.num_record_batches
    for i in range(n):
        yield reader.get_batch(i), i * size // n, (i + 1) * size // n


def saved_dataset_files(path: Path, field: str) -> list[Path]:
    """The Arrow files of a ``datasets.save_to_disk`` directory (its ``train`` split)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        if "train" not in splits:
            raise CorpusError(
                f"dataset {str(path)!r} has splits {sorted(splits)} but no 'train' split; point "
                "at one split's directory instead"
            )
        path = path / "train"
    state = json.loads((path / "state.json").read_text())
    files = [path / f["filename"] for f in state["_data_files"]]
    features = json.loads((path / "dataset_info.json").read_text()).get("features") or {}
    if features:
        check_columns(list(features), field, f"dataset {str(path)!r}")
    return files
