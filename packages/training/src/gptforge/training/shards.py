"""The token shard format (``meta.json``, checksummed shard files) and how it is written.

This module imports no torch, so ``data prepare`` and ``data merge`` start light.

The token stream (documents' ids, each document followed by the end-of-text id) is cut into
blocks of ``block_tokens``; :class:`Router` sends each block to ``val`` while that keeps the
validation share at or under ``val_fraction``, else to ``train``. The decision depends only on
the block's position and length, so :func:`replay` can walk a prepared directory's blocks back
in stream order: what ``data merge`` concatenates parts with.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "gptforge-tokens/1"
META = "meta.json"
SPLITS = ("train", "val")


class DataError(ValueError):
    """Prepared data that cannot be used as asked (missing, mismatched, out of vocabulary)."""


def token_dtype(n_vocab: int) -> np.dtype:
    """``uint16`` when every id fits in 16 bits, else ``uint32``."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a prepared data directory."""
    path = Path(data_dir) / META
    if not path.exists():
        raise DataError(
            f"{str(data_dir)!r} is not a prepared data directory (no {META}); "
            "create one with: gptforge data prepare --input SOURCE --tokenizer DIR --out DATA_DIR"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def verify_checksums(data_dir: str | Path, *, chunk: int = 1 << 24) -> dict[str, Any]:
    """Recompute every shard's sha256 and compare it with ``meta.json``; the meta on success.

    Raises:
        DataError: A shard's bytes are not what was prepared (changed in place), naming it.
    """
    import hashlib

    meta = read_meta(data_dir)
    for split in SPLITS:
        for shard in meta["splits"][split]["shards"]:
            expect = shard.get("sha256")
            if expect is None:
                continue  # prepared before shards carried checksums
            digest = hashlib.sha256()
            with open(Path(data_dir) / shard["file"], "rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
            if digest.hexdigest() != expect:
                raise DataError(
                    f"shard {shard['file']} of {str(data_dir)!r} changed after it was prepared "
                    f"(sha256 {digest.hexdigest()[:16]}..., meta.json records {expect[:16]}...); "
                    "prepare the data again (gptforge data prepare)"
                )
    return meta


def check_resume_data(data_dir: str | Path, trained_on: str | None) -> None:
    """Refuse to resume on data other than the run's: ``trained_on`` is the ``checksum`` of
    ``meta.json`` recorded in the run's checkpoint (``None`` for runs that did not record one).

    Raises:
        DataError: The data directory now holds other tokens, with the way out.
    """
    meta = verify_checksums(data_dir)
    now = meta.get("checksum")
    if trained_on is not None and now is not None and now != trained_on:
        raise DataError(
            f"the data in {str(data_dir)!r} changed since this run was checkpointed (checksum "
            f"{now[:16]}..., the run trained on {trained_on[:16]}...); resuming would continue "
            "on other tokens. Resume with the data the run was trained on, or start a new run "
            "on this data with another --out"
        )


class Router:
    """Which split the next block goes to (val while that keeps its share <= ``val_fraction``)."""

    def __init__(self, val_fraction: float) -> None:
        self.val_fraction = val_fraction
        self.total = 0
        self.val = 0

    def split(self, n: int) -> str:
        """The split of the next block of ``n`` tokens."""
        to_val = self.val + n <= self.val_fraction * (self.total + n)
        self.total += n
        self.val += n if to_val else 0
        return "val" if to_val else "train"


class ShardWriter:
    """Append ids to ``{split}_{n:06d}.bin`` files of at most ``shard_tokens`` tokens, hashing
    each file's bytes (sha256) as they are written."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._hash: Any = None
        self.count = 0

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._file = None

    def write(self, ids: np.ndarray) -> None:
        """Append ``ids`` (already of this writer's dtype)."""
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._close()
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self._file = (self.out / name).open("wb")
                self._hash = hashlib.sha256()
                self.shards.append({"file": name, "tokens": 0})
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            data = part.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self.shards[-1]["tokens"] += len(part)
            self.count += len(part)

    def close(self) -> int:
        """Finish the last shard; the number of tokens written."""
        self._close()
        return self.count


class BlockSink:
    """Cut a token stream into blocks and route them into the ``train``/``val`` writers."""

    def __init__(
        self,
        out: Path,
        dtype: np.dtype,
        *,
        val_fraction: float,
        block_tokens: int,
        shard_tokens: int,
    ) -> None:
        self.router = Router(val_fraction)
        self.block_tokens = block_tokens
        self.writers = {s: ShardWriter(out, s, dtype, shard_tokens) for s in SPLITS}
        self.pending = np.empty(0, dtype=dtype)

    def feed(self, ids: np.ndarray) -> None:
        """Append ``ids`` to the stream, writing every complete block."""
        data = np.concatenate([self.pending, ids]) if len(self.pending) else ids
        cut = len(data) - len(data) % self.block_tokens
        for start in range(0, cut, self.block_tokens):
            block = data[start : start + self.block_tokens]
            self.writers[self.router.split(len(block))].write(block)
        self.pending = data[cut:].copy()

    def finish(self) -> dict[str, dict[str, Any]]:
        """Write the last partial block; the ``splits`` entry of ``meta.json``."""
        if len(self.pending):
            self.writers[self.router.split(len(self.pending))].write(self.pending)
        return {s: {"tokens": w.close(), "shards": w.shards} for s, w in self.writers.items()}


def data_checksum(splits: dict[str, dict[str, Any]]) -> str:
    """One sha256 over every shard's name, size and checksum: the content of a data directory."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for shard in splits[split]["shards"]:
            digest.update(f"{shard['file']}:{shard['tokens']}:{shard.get('sha256')}\n".encode())
    return digest.hexdigest()


class _SplitReader:
    """Read a split's shards front to back, ``n`` tokens at a time."""

    def __init__(self, data_dir: Path, meta: dict[str, Any], split: str) -> None:
        self.dtype = np.dtype(meta["dtype"])
        self.files = [data_dir / s["file"] for s in meta["splits"][split]["shards"]]
        self._file: BinaryIO | None = None

    def read(self, n: int) -> np.ndarray:
        parts = []
        while n:
            if self._file is None:
                self._file = self.files.pop(0).open("rb")
            data = np.frombuffer(self._file.read(n * self.dtype.itemsize), dtype=self.dtype)
            if len(data) < n:
                self._file.close()
                self._file = None
            parts.append(data)
            n -= len(data)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def replay(data_dir: Path, meta: dict[str, Any]) -> Iterator[np.ndarray]:
    """A prepared directory's blocks in the order they had in the token stream."""
    router = Router(meta["val_fraction"])
    readers = {s: _SplitReader(data_dir, meta, s) for s in SPLITS}
    block, left = int(meta["block_tokens"]), int(meta["tokens"])
    try:
        while left:
            n = min(block, left)
            yield readers[router.split(n)].read(n)
            left -= n
    finally:
        for reader in readers.values():
            reader.close()
