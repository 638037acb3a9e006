"""``gptforge data merge``: join the parts of a corpus prepared with ``--shard INDEX/COUNT``.

Each part's blocks are replayed in stream order (:func:`gptforge.training.shards.replay`), the
parts' streams are concatenated in part order and routed again, so the result has the ids,
shards and checksums that one ``prepare`` over the whole corpus writes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gptforge.fileio import atomic_dir, atomic_write_json
from gptforge.training.prepare import check_out, claim, clean_leftovers, release
from gptforge.training.shards import META, BlockSink, data_checksum, read_meta, replay

# Settings every part must share for the merge to equal one run.
_SAME = ("tokenizer_fingerprint", "dtype", "n_vocab", "eot_token", "val_fraction", "block_tokens")


def _ordered_parts(dirs: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    parts = [(Path(d), read_meta(d)) for d in dirs]
    if not parts:
        raise ValueError("data merge needs at least one prepared directory")
    first = parts[0][1]
    for path, meta in parts[1:]:
        for key in _SAME:
            if meta.get(key) != first.get(key):
                raise ValueError(
                    f"{str(path)!r} has {key}={meta.get(key)!r} but {str(parts[0][0])!r} has "
                    f"{first.get(key)!r}; prepare every part with the same tokenizer and options"
                )
    counts = {tuple(meta.get("part") or (0, 1))[1] for _, meta in parts}
    parts.sort(key=lambda p: tuple(p[1].get("part") or (0, 1))[0])
    indices = [tuple(meta.get("part") or (0, 1))[0] for _, meta in parts]
    if len(counts) != 1 or indices != list(range(len(parts))) or len(parts) != counts.pop():
        raise ValueError(
            f"the parts given are {indices} (of {sorted(counts)}); pass every part of one "
            "`--shard INDEX/COUNT` preparation exactly once"
        )
    return parts


def merge_data(
    dirs: Sequence[str | Path], out: str | Path, *, shard_tokens: int | None = None
) -> dict[str, Any]:
    """Merge prepared parts into ``out`` (written whole, only on success).

    Args:
        dirs: The part directories, in any order (each knows its index from ``meta.json``).
        out: The merged data directory.
        shard_tokens: Most tokens per shard (default: the parts' setting).

    Returns:
        The merged ``meta.json`` content.
    """
    parts = _ordered_parts(dirs)
    first = parts[0][1]
    out = Path(out)
    if any(out.resolve() == path.resolve() for path, _ in parts):
        raise ValueError(f"--out {str(out)!r} is one of the parts; merge into a new directory")
    check_out(out)
    clean_leftovers(out)
    dtype = np.dtype(first["dtype"])
    with atomic_dir(out) as tmp:
        claim(tmp)
        sink = BlockSink(
            tmp,
            dtype,
            val_fraction=first["val_fraction"],
            block_tokens=int(first["block_tokens"]),
            shard_tokens=shard_tokens or int(first.get("shard_tokens") or 1 << 27),
        )
        for path, meta in parts:
            for block in replay(path, meta):
                sink.feed(block)
        splits = sink.finish()
        if (parts[0][0] / "tokenizer").is_dir():
            shutil.copytree(parts[0][0] / "tokenizer", tmp / "tokenizer")
        meta = {
            **{k: v for k, v in first.items() if k not in ("part", "splits", "checksum")},
            "shard_tokens": shard_tokens or first.get("shard_tokens"),
            "max_token_id": max(int(m["max_token_id"]) for _, m in parts),
            "documents": sum(int(m["documents"]) for _, m in parts),
            "tokens": sum(s["tokens"] for s in splits.values()),
            "part": [0, 1],
            "checksum": data_checksum(splits),
            "splits": splits,
        }
        atomic_write_json(tmp / META, meta)
        release(tmp)
    return meta
