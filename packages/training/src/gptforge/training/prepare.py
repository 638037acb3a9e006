"""``gptforge data prepare``: stream a corpus through a tokenizer into token shards.

The corpus arrives as pieces of at most ``chunk_bytes`` (:func:`gptforge.corpus.iter_segments`:
a long document comes in several pieces, cut where the tokenizer splits anyway, and only a
document's end gets the end-of-text id). Pieces are grouped into batches of about
``batch_bytes`` characters and encoded on ``num_proc`` worker processes straight into numpy
arrays (tiktoken holds the GIL while it encodes, so threads would take turns instead of running
side by side); results are taken in corpus order, so the ids do not depend on ``num_proc``. At
most ``2 * num_proc`` batches are in flight: memory is bounded by the batch and piece sizes,
never by the corpus.

Everything is written into a temporary folder beside ``out`` that replaces it only when the run
succeeds (:func:`gptforge.fileio.atomic_dir`): a failed or killed run leaves the previous data
directory as it was, and the next run removes what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from gptforge.corpus import Segment
from gptforge.fileio import TEMP_SUFFIX, atomic_dir, atomic_write_json
from gptforge.training.shards import FORMAT, META, BlockSink, data_checksum, token_dtype

_OWNER = ".prepare-owner"  # the pid of the run writing a temporary folder


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


_TOKENIZER: Any = None  # the tokenizer of a worker process (inherited on fork, loaded on spawn)


def _start_worker(tokenizer_dir: str | None) -> None:
    global _TOKENIZER
    if tokenizer_dir is not None:
        _TOKENIZER = load_tokenizer(tokenizer_dir)


def _encode_in_worker(texts: list[str]) -> list[np.ndarray]:
    return [_TOKENIZER.encode_to_numpy(t, disallowed_special=()) for t in texts]


def _text_encoder(tok: Any) -> Callable[[list[str]], list[np.ndarray]]:
    """Texts to id arrays in this process."""
    if hasattr(tok, "encode_to_numpy"):
        return lambda texts: [tok.encode_to_numpy(t, disallowed_special=()) for t in texts]
    return lambda texts: [np.asarray(ids, dtype=np.int64) for ids in encode_texts(tok, texts)]


def _encoding_pool(
    tok: Any, tokenizer_dir: str | None, workers: int
) -> tuple[Executor | None, Callable[[list[str]], list[np.ndarray]]]:
    """Where batches are encoded: ``(pool, function)``; no pool means this process encodes.

    A local tokenizer runs in worker processes: forked on Linux (they inherit it, nothing to
    import or load), spawned elsewhere (they load it from its directory). A tokenizer without a
    directory on a platform without fork stays in this process, and a tokenizer service's
    client runs on threads, which overlap its waits on the network.
    """
    global _TOKENIZER
    if workers <= 1:
        return None, _text_encoder(tok)
    if not hasattr(tok, "encode_to_numpy"):
        return ThreadPoolExecutor(workers), _text_encoder(tok)
    if sys.platform.startswith("linux"):
        _TOKENIZER = tok
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        pool.submit(int).result()  # fork every worker now, before the progress bar's thread starts
        return pool, _encode_in_worker
    if tokenizer_dir is None:
        return None, _text_encoder(tok)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(tokenizer_dir,)
    )
    return pool, _encode_in_worker


@contextlib.contextmanager
def _running(pool: Executor | None) -> Iterator[None]:
    """Shut ``pool`` down after the work: waiting for it on success, and on an error or
    Ctrl-C dropping the batches no worker has started, so a failed prepare does not wait
    for them."""
    try:
        yield
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    if pool is not None:
        pool.shutdown()


def _assemble(
    batch: list[Segment], arrays: list[np.ndarray], tok: Any, dtype: np.dtype
) -> np.ndarray:
    """One batch's ids in order, end-of-text after each document end."""
    eot = np.array([tok.eot_token], dtype=dtype)
    parts: list[np.ndarray] = []
    for (_, end), ids in zip(batch, arrays, strict=True):
        parts.append(ids)
        if end:
            parts.append(eot)
    ids = np.concatenate(parts) if parts else eot[:0]
    if len(ids) and int(ids.max()) >= tok.n_vocab:
        raise ValueError(f"tokenizer produced id {int(ids.max())} >= its n_vocab {tok.n_vocab}")
    return ids.astype(dtype, copy=False)


def _batches(segments: Iterable[Segment], batch_bytes: int) -> Iterator[list[Segment]]:
    """Pieces grouped into batches of at most ``batch_bytes`` characters (or one piece)."""
    batch: list[Segment] = []
    size = 0
    for segment in segments:
        if batch and size + len(segment[0]) > batch_bytes:
            yield batch
            batch, size = [], 0
        batch.append(segment)
        size += len(segment[0])
    if batch:
        yield batch


def _ordered_map(
    fn: Callable[[list[str]], list[np.ndarray]],
    batches: Iterator[list[Segment]],
    pool: Executor | None,
    in_flight: int,
) -> Iterator[tuple[list[Segment], list[np.ndarray]]]:
    """``fn`` over the texts of ``batches`` on ``pool``, results in input order, at most
    ``in_flight`` batches submitted and not yet taken."""
    if pool is None:
        for batch in batches:
            yield batch, fn([text for text, _ in batch])
        return
    queue: deque[tuple[list[Segment], Future[list[np.ndarray]]]] = deque()
    for batch in batches:
        queue.append((batch, pool.submit(fn, [text for text, _ in batch])))
        if len(queue) >= in_flight:
            done, future = queue.popleft()
            yield done, future.result()
    while queue:
        done, future = queue.popleft()
        yield done, future.result()


def _pin_mmap_threshold() -> None:
    """Keep glibc's mmap threshold fixed at 256 KiB for this process.

    By default glibc raises the threshold each time a mapped block is freed, so the 1-2 MiB
    texts and id arrays of later batches land in the heap instead, which fragments and grows
    with the corpus. Pinned, they are mapped and unmapped whole and memory stays flat.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to pin
            ctypes.CDLL("libc.so.6").mallopt(-3, 256 << 10)  # -3 is M_MMAP_THRESHOLD


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def clean_leftovers(out: Path, log: Callable[[str], None] | None = None) -> int:
    """Remove the temporary folders a killed ``prepare`` left beside ``out``; bytes freed.

    A folder whose writer is still running is kept. A previous ``out`` that a kill caught
    mid-swap (moved aside, the new one not yet in place) is moved back instead of deleted.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    freed, removed = 0, 0
    for tmp in sorted(out.parent.glob(f".{out.name}.*{TEMP_SUFFIX}")):
        owner = tmp / _OWNER
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            pid = 0
        if not tmp.is_dir() or (pid and pid != os.getpid() and _pid_alive(pid)):
            continue
        freed += _tree_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        removed += 1
    for old in sorted(out.parent.glob(f".{out.name}.*.old")):
        if not out.exists() and (old / out.name).is_dir():
            os.replace(old / out.name, out)
            log(f"restored {out} from {old.name}, left by a run killed while swapping it in")
        freed += _tree_bytes(old)
        shutil.rmtree(old, ignore_errors=True)
        removed += 1
    if removed:
        log(
            f"removed {removed} leftover folder(s) of an interrupted `data prepare` beside "
            f"{out} ({freed / 1e6:.1f} MB freed)"
        )
    return freed


def claim(tmp: Path) -> None:
    """Mark a temporary output folder as this process's, so :func:`clean_leftovers` keeps it
    while the process runs (remove the mark before the folder is swapped in)."""
    (tmp / _OWNER).write_text(str(os.getpid()))


def release(tmp: Path) -> None:
    """Remove the mark :func:`claim` left."""
    (tmp / _OWNER).unlink()


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that holds something other than prepared data (it is replaced)."""
    if out.is_file() or (out.is_dir() and not (out / META).exists() and any(out.iterdir())):
        raise ValueError(
            f"--out {str(out)!r} exists and is not a prepared data directory (no {META}); "
            "prepare replaces the whole folder, so pass a new or empty directory"
        )


def _parse_part(part: tuple[int, int] | str | None) -> tuple[int, int]:
    if part is None:
        return (0, 1)
    if isinstance(part, str):
        index, _, count = part.partition("/")
        try:
            part = (int(index), int(count))
        except ValueError:
            raise ValueError(
                f"--shard {part!r} is not INDEX/COUNT; write e.g. --shard 0/4 for the first of "
                "four parts"
            ) from None
    if not 0 <= part[0] < part[1]:
        raise ValueError(
            f"--shard {part[0]}/{part[1]}: INDEX must be in [0, COUNT), e.g. 0/{max(part[1], 2)}"
        )
    return part


def _segments(
    source: Any, field: str, chunk_bytes: int, paragraphs: bool, part: tuple[int, int]
) -> Iterator[Segment]:
    from gptforge.corpus import iter_segments, segment_documents

    if isinstance(source, str | os.PathLike):
        return iter_segments(
            source, field=field, chunk_bytes=chunk_bytes, paragraphs=paragraphs, part=part
        )
    if part != (0, 1):
        raise ValueError(
            "--shard needs a corpus of files (parts are byte ranges of them); documents given "
            "in Python, or a streaming dataset, are prepared whole"
        )
    return segment_documents(source, field=field, chunk_bytes=chunk_bytes)


def _check_sizes(
    val_fraction: float, block_tokens: int, shard_tokens: int, batch_bytes: int
) -> None:
    """Refuse a validation share outside [0, 1) and sizes below one."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if block_tokens < 1 or shard_tokens < 1 or batch_bytes < 1:
        raise ValueError(
            f"block_tokens, shard_tokens and batch_bytes must be >= 1, got {block_tokens!r}, "
            f"{shard_tokens!r}, {batch_bytes!r}"
        )


def _directory_of(tokenizer: str | Path | Any) -> str | None:
    """The directory a tokenizer was given as, or None for a tokenizer object."""
    is_dir = isinstance(tokenizer, str | Path) and Path(tokenizer).is_dir()
    return str(tokenizer) if is_dir else None


def _encode_into(
    sink: BlockSink,
    tok: Any,
    tokenizer_dir: str | None,
    segments: Iterator[Segment],
    dtype: np.dtype,
    *,
    batch_bytes: int,
    workers: int,
    progress: bool,
) -> tuple[int, int]:
    """Encode ``segments`` in corpus order into ``sink``; the documents and the largest id seen."""
    from tqdm.auto import tqdm

    n_docs, max_id = 0, int(tok.eot_token)
    pool, encode = _encoding_pool(tok, tokenizer_dir, workers)
    with _running(pool), tqdm(desc="documents", unit="doc", disable=not progress) as bar:
        batches = _batches(segments, batch_bytes)
        for batch, arrays in _ordered_map(encode, batches, pool, 2 * workers):
            ids = _assemble(batch, arrays, tok, dtype)
            ends = sum(end for _, end in batch)
            n_docs += ends
            bar.update(ends)
            if len(ids):
                max_id = max(max_id, int(ids.max()))
            sink.feed(ids)
    return n_docs, max_id


def prepare_data(
    source: str | Path | Iterable[Any],
    tokenizer: str | Path | Any,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    field: str = "text",
    num_proc: int | None = None,
    block_tokens: int = 1024,
    shard_tokens: int = 1 << 27,
    paragraphs: bool = False,
    shard: tuple[int, int] | str | None = None,
    batch_bytes: int = 1 << 21,
    chunk_bytes: int = 1 << 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``out`` (shards + ``meta.json`` + ``tokenizer/`` copy).

    Args:
        source: Anything :func:`gptforge.corpus.iter_segments` reads (``"default"`` included),
            or documents in Python: a list of strings, or rows (``row[field]``) such as a
            ``datasets`` dataset loaded with ``streaming=True``.
        tokenizer: Tokenizer directory, or any object with ``encode_batch`` (a ``Tokenizer``,
            or ``gptforge.services.tokenizer.RemoteTokenizer`` for a tokenizer service).
        out: Output data directory; replaced whole, and only when the run succeeds.
        val_fraction: Share of tokens routed to the validation split.
        field: Text field of ``.jsonl``/parquet records and dataset rows.
        num_proc: Encoding processes (default: the CPU count, at most 8).
        block_tokens: Granularity of the train/validation routing.
        shard_tokens: Most tokens per shard file.
        paragraphs: Text files hold one document per blank-line-separated paragraph.
        shard: ``(INDEX, COUNT)`` or ``"INDEX/COUNT"``: prepare only that part of the corpus
            (see ``part`` of :func:`gptforge.corpus.iter_segments`); ``gptforge data merge``
            joins the parts into what one run over the whole corpus writes.
        batch_bytes: Characters of text per encoding batch.
        chunk_bytes: Most bytes of one piece of a long document.
        progress: Show a tqdm bar of documents.

    Returns:
        The ``meta.json`` content.

    >>> prepare_data("default", "runs/demo/tokenizer", "runs/demo/data")  # doctest: +SKIP
    """
    _check_sizes(val_fraction, block_tokens, shard_tokens, batch_bytes)
    part = _parse_part(shard)
    _pin_mmap_threshold()
    out = Path(out)
    check_out(out)
    clean_leftovers(out)
    tok = load_tokenizer(tokenizer)
    tokenizer_dir = _directory_of(tokenizer)
    dtype = token_dtype(tok.n_vocab)
    workers = num_proc or min(8, os.cpu_count() or 1)
    segments = _segments(source, field, chunk_bytes, paragraphs, part)
    with atomic_dir(out) as tmp:
        claim(tmp)
        sink = BlockSink(
            tmp,
            dtype,
            val_fraction=val_fraction,
            block_tokens=block_tokens,
            shard_tokens=shard_tokens,
        )
        n_docs, max_id = _encode_into(
            sink,
            tok,
            tokenizer_dir,
            segments,
            dtype,
            batch_bytes=batch_bytes,
            workers=workers,
            progress=progress,
        )
        splits = sink.finish()
        if n_docs == 0 and part[1] == 1:
            raise ValueError(f"source {source!r:.200} yielded no documents; check it and --field")
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        meta = {
            "format": FORMAT,
            "dtype": dtype.name,
            "tokenizer_fingerprint": tok.fingerprint,
            "tokenizer": str(tokenizer) if isinstance(tokenizer, str | Path) else None,
            "n_vocab": tok.n_vocab,
            "eot_token": tok.eot_token,
            "max_token_id": max_id,
            "documents": n_docs,
            "tokens": sum(s["tokens"] for s in splits.values()),
            "val_fraction": val_fraction,
            "block_tokens": block_tokens,
            "shard_tokens": shard_tokens,
            "paragraphs": paragraphs,
            "part": list(part),
            "source": str(source)[:200],
            "checksum": data_checksum(splits),
            "splits": splits,
        }
        atomic_write_json(tmp / META, meta)
        release(tmp)
    return meta
