"""``gptforge data prepare``: stream a corpus through a tokenizer into token shards.

Documents are read one at a time (:func:`gptforge.corpus.iter_documents`), encoded in batches,
joined with the end-of-text token and cut into blocks of ``block_tokens``; each block goes to
the validation split when that keeps the validation share at or under ``val_fraction``, else to
training. Nothing holds the corpus in memory: a corpus larger than RAM prepares in bounded
memory. Inputs larger than ``parallel_threshold_bytes`` are tokenized with a ``datasets``
parallel ``map`` (``num_proc`` processes) over an on-disk Arrow cache; the result is identical
to the sequential path because ``map`` keeps the order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gptforge.training.data import FORMAT, META, token_dtype
from gptforge.training.io import atomic_write_text

_WORKER_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(spec: str | Path | Any) -> Any:
    """A tokenizer from a directory, or any object with ``encode_batch`` (returned as is, e.g.
    ``gptforge.services.tokenizer.RemoteTokenizer``, which the CLI makes from grpc://host:port)."""
    if not isinstance(spec, str | Path):
        return spec
    text = str(spec)
    from gptforge.tokenizer import Tokenizer

    if not Path(text).is_dir():
        raise FileNotFoundError(
            f"tokenizer {text!r} is not a directory; train one with `gptforge tokenizer train`, "
            "or tokenize through a service: `--tokenizer grpc://host:port` on the command line, "
            "gptforge.services.tokenizer.RemoteTokenizer from Python"
        )
    return Tokenizer.from_dir(text)


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Encode documents with special-token text treated as plain text (never as control ids)."""
    return tokenizer.encode_batch(texts, allowed_special=frozenset(), disallowed_special=())


def _map_encode(batch: dict[str, list], tokenizer_dir: str) -> dict[str, list]:
    """``datasets.map`` worker: load the tokenizer once per process and encode a batch."""
    tok = _WORKER_TOKENIZERS.get(tokenizer_dir)
    if tok is None:
        tok = _WORKER_TOKENIZERS[tokenizer_dir] = load_tokenizer(tokenizer_dir)
    return {"ids": encode_texts(tok, batch["text"])}


class _ShardWriter:
    """Append ids to ``{split}_{n:06d}.bin`` files of at most ``shard_tokens`` tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._tmp: Path | None = None
        self._count = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._tmp = self.out / f".{name}.tmp"
        self._file = self._tmp.open("wb")
        self.shards.append({"file": name, "tokens": 0})

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            assert self._tmp is not None
            os.replace(self._tmp, self.out / self.shards[-1]["file"])
            self._file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._close()
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            assert self._file is not None
            self._file.write(part.astype(self.dtype).tobytes())
            self.shards[-1]["tokens"] += len(part)
            self._count += len(part)

    def close(self) -> int:
        self._close()
        return self._count


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _token_batches(
    documents: Iterator[str],
    tokenizer: Any,
    tokenizer_dir: str | None,
    *,
    batch_size: int,
    num_proc: int,
    parallel_threshold_bytes: int,
    work_dir: Path,
) -> Iterator[list[list[int]]]:
    """Yield encoded document batches in corpus order, in parallel for large inputs."""
    head: list[str] = []
    head_bytes = 0
    for doc in documents:
        head.append(doc)
        head_bytes += len(doc)
        if head_bytes > parallel_threshold_bytes:
            break
    else:  # small input: encode in this process
        for batch in _batched(head, batch_size):
            yield encode_texts(tokenizer, batch)
        return
    if tokenizer_dir is None or num_proc <= 1:  # remote tokenizer or one process: stream
        for batch in _batched(iter([*head, *documents]), batch_size):
            yield encode_texts(tokenizer, batch)
        return

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Spill the documents to Parquet in chunks (bounded memory), then map over an on-disk cache.
    parquet = work_dir / "docs.parquet"
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(parquet, schema) as writer:
        for chunk in _batched(iter([*head, *documents]), 4096):
            writer.write_table(pa.table({"text": chunk}, schema=schema))
    del head
    ds = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(work_dir / "cache"))
    ds = ds.map(
        _map_encode,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=["text"],
        fn_kwargs={"tokenizer_dir": tokenizer_dir},
        desc="tokenizing",
    )
    for batch in ds.iter(batch_size=batch_size):
        yield batch["ids"]


def prepare_data(
    source: str | Path | list[str],
    tokenizer: str | Path | Any,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    field: str = "text",
    num_proc: int | None = None,
    batch_size: int = 256,
    block_tokens: int = 1024,
    shard_tokens: int = 1 << 27,
    parallel_threshold_bytes: int = 32 << 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``out`` (shards + ``meta.json`` + ``tokenizer/`` copy).

    Args:
        source: Anything :func:`gptforge.corpus.iter_documents` reads (``"default"`` included)
            or a list of document strings.
        tokenizer: Tokenizer directory, or any object with ``encode_batch`` (a ``Tokenizer``,
            or ``gptforge.services.tokenizer.RemoteTokenizer`` for a tokenizer service).
        out: Output data directory (created; existing shards are replaced).
        val_fraction: Share of tokens routed to the validation split.
        field: Text field of ``.jsonl``/parquet sources.
        num_proc: Processes of the parallel map (default: CPU count, at most 8).
        batch_size: Documents per encode call.
        block_tokens: Granularity of the train/validation routing.
        shard_tokens: Most tokens per shard file.
        parallel_threshold_bytes: Inputs larger than this use the ``datasets`` parallel map.
        progress: Show a tqdm bar of documents.

    Returns:
        The ``meta.json`` content.

    >>> prepare_data("default", "runs/demo/tokenizer", "runs/demo/data")  # doctest: +SKIP
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if block_tokens < 1 or shard_tokens < 1:
        raise ValueError(
            f"block_tokens and shard_tokens must be >= 1, got {block_tokens!r}, {shard_tokens!r}"
        )
    from gptforge.corpus import iter_documents
    from tqdm.auto import tqdm

    tok = load_tokenizer(tokenizer)
    tokenizer_dir = (
        str(tokenizer) if isinstance(tokenizer, str | Path) and Path(tokenizer).is_dir() else None
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.bin"):
        old.unlink()
    (out / META).unlink(missing_ok=True)
    dtype = token_dtype(tok.n_vocab)
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    docs = iter(source) if isinstance(source, list) else iter_documents(source, field=field)
    n_docs, max_id, total, val_total = 0, -1, 0, 0
    pending = np.empty(0, dtype=np.int64)
    eot = np.array([tok.eot_token], dtype=np.int64)

    def route(block: np.ndarray) -> None:
        nonlocal total, val_total
        split = "val" if val_total + len(block) <= val_fraction * (total + len(block)) else "train"
        writers[split].write(block)
        total += len(block)
        val_total += len(block) if split == "val" else 0

    bar = tqdm(desc="documents", unit="doc", disable=not progress)
    work_dir = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        batches = _token_batches(
            docs,
            tok,
            tokenizer_dir,
            batch_size=batch_size,
            num_proc=num_proc or min(8, os.cpu_count() or 1),
            parallel_threshold_bytes=parallel_threshold_bytes,
            work_dir=work_dir,
        )
        for ids_batch in batches:
            parts = [pending]
            for ids in ids_batch:
                parts.extend((np.asarray(ids, dtype=np.int64), eot))
                if ids:
                    max_id = max(max_id, max(ids))
            pending = np.concatenate(parts)
            n_docs += len(ids_batch)
            bar.update(len(ids_batch))
            cut = len(pending) - len(pending) % block_tokens
            for start in range(0, cut, block_tokens):
                route(pending[start : start + block_tokens])
            pending = pending[cut:]
        if len(pending):
            route(pending)
    finally:
        bar.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    counts = {split: writer.close() for split, writer in writers.items()}
    if n_docs == 0:
        raise ValueError(f"source {source!r} yielded no documents; check the path and --field")
    max_id = max(max_id, tok.eot_token)
    if max_id >= tok.n_vocab:
        raise ValueError(f"tokenizer produced id {max_id} >= its n_vocab {tok.n_vocab}")
    if tokenizer_dir is not None:
        shutil.rmtree(out / "tokenizer", ignore_errors=True)
        shutil.copytree(tokenizer_dir, out / "tokenizer")
    meta = {
        "format": FORMAT,
        "dtype": dtype.name,
        "tokenizer_fingerprint": tok.fingerprint,
        "tokenizer": str(tokenizer) if isinstance(tokenizer, str | Path) else None,
        "n_vocab": tok.n_vocab,
        "eot_token": tok.eot_token,
        "max_token_id": max_id,
        "documents": n_docs,
        "tokens": total,
        "val_fraction": val_fraction,
        "block_tokens": block_tokens,
        "source": source if isinstance(source, str) else str(source)[:200],
        "splits": {s: {"tokens": counts[s], "shards": writers[s].shards} for s in writers},
    }
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")
    return meta
