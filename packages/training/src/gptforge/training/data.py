"""Token data: the shard format, memory-mapped loading, windows, sampling and small-text datasets.

A prepared data directory (``gptforge data prepare``) holds

- ``meta.json``: format version, token ``dtype`` (``uint16`` when the vocabulary fits, else
  ``uint32``), tokenizer fingerprint, vocabulary size, end-of-text id, the largest id written,
  and per split (``train``, ``val``) the shard files with their token counts;
- ``{split}_{index:06d}.bin``: raw little-endian token ids; documents are separated by the
  end-of-text token;
- ``tokenizer/``: a copy of the tokenizer directory (when prepared from a directory).

Shards are memory-mapped, so a corpus larger than RAM trains without being loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

# The shard format lives in the torch-free ``shards`` module (what ``data prepare`` imports);
# it is re-exported here, beside the readers.
from gptforge.training.shards import (  # noqa: F401
    FORMAT,
    META,
    SPLITS,
    DataError,
    check_resume_data,
    read_meta,
    token_dtype,
    verify_checksums,
)


class TokenShards:
    """The memory-mapped shards of one split, seen as one long token sequence per shard.

    Args:
        data_dir: Prepared data directory.
        split: ``train`` or ``val``.
    """

    def __init__(self, data_dir: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
        self.data_dir = Path(data_dir)
        self.meta = read_meta(data_dir)
        self.split = split
        self.dtype = np.dtype(self.meta["dtype"])
        self.shards: list[np.memmap] = []
        for shard in self.meta["splits"][split]["shards"]:
            path = self.data_dir / shard["file"]
            expect = shard["tokens"] * self.dtype.itemsize
            if not path.exists() or path.stat().st_size != expect:
                size = path.stat().st_size if path.exists() else None
                raise DataError(
                    f"shard {path} has {size} bytes, meta.json expects {expect}; "
                    "the data directory is incomplete, prepare it again"
                )
            if shard["tokens"]:
                self.shards.append(np.memmap(path, dtype=self.dtype, mode="r"))

    @property
    def num_tokens(self) -> int:
        """Tokens in this split."""
        return sum(len(s) for s in self.shards)

    def check_vocab(self, n_vocab: int, *, chunk: int = 1 << 24) -> None:
        """Refuse ids ``>= n_vocab`` (scans every shard; never clamps).

        Raises:
            DataError: Naming the shard, the offending id, its offset and the vocabulary size.
        """
        recorded = self.meta.get("max_token_id")
        if recorded is not None and recorded >= n_vocab:
            raise DataError(
                f"{self.data_dir} holds token id {recorded} but the model vocabulary has "
                f"{n_vocab} ids; prepare the data with the model's tokenizer"
            )
        for shard_meta, shard in zip(
            self.meta["splits"][self.split]["shards"], self.shards, strict=False
        ):
            for start in range(0, len(shard), chunk):
                part = np.asarray(shard[start : start + chunk])
                top = int(part.max())
                if top >= n_vocab:
                    offset = start + int(np.argmax(part >= n_vocab))
                    raise DataError(
                        f"token id {top} at offset {offset} of {shard_meta['file']} is outside "
                        f"the vocabulary (size {n_vocab}); prepare the data with the model's "
                        "tokenizer instead of clamping ids"
                    )


class BatchSource(Protocol):
    """What the training loop draws batches from: a number of examples and a batch getter."""

    def __len__(self) -> int: ...

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, T)`` and targets ``(B, T)`` (``-100`` = ignored) as int64 tensors."""
        ...


class TokenWindows:
    """Fixed-length training windows over memory-mapped shards.

    Window ``i`` of a shard covers ``tokens[i*stride : i*stride + context + 1]``; inputs are its
    first ``context`` tokens and targets the last ``context`` (next-token prediction).
    Windows never straddle two shards.

    Args:
        shards: The split to read.
        context: Tokens per training example.
        stride: Distance between window starts (``context`` gives non-overlapping windows).
    """

    def __init__(self, shards: TokenShards, context: int, stride: int | None = None) -> None:
        self.shards = shards
        self.context = context
        self.stride = stride or context
        counts = [max(0, (len(s) - context - 1) // self.stride + 1) for s in shards.shards]
        self.offsets = np.cumsum([0, *counts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(len(indices), context)``."""
        rows = np.empty((len(indices), self.context + 1), dtype=np.int64)
        for row, index in enumerate(indices):
            shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
            start = (index - int(self.offsets[shard])) * self.stride
            rows[row] = self.shards.shards[shard][start : start + self.context + 1]
        tokens = torch.from_numpy(rows)  # (B, T+1)
        return tokens[:, :-1], tokens[:, 1:]


class SlidingWindowDataset(torch.utils.data.Dataset):
    """Windows of ``max_length`` tokens every ``stride`` tokens over one in-memory id list.

    The behaviour of the seed project's ``GPTDatasetV1``: item ``i`` is
    ``(ids[i*stride : i*stride+max_length], ids[i*stride+1 : i*stride+max_length+1])``.

    >>> ds = SlidingWindowDataset(list(range(10)), max_length=4, stride=4)
    >>> len(ds), ds[1][0].tolist(), ds[1][1].tolist()
    (2, [4, 5, 6, 7], [5, 6, 7, 8])
    """

    def __init__(self, token_ids: list[int], max_length: int, stride: int) -> None:
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be >= 1, got {max_length!r}, {stride!r}")
        if len(token_ids) <= max_length:
            raise DataError(
                f"{len(token_ids)} tokens cannot fill one window of max_length={max_length} "
                "plus its next-token target; give more text or a smaller max_length"
            )
        self.ids = torch.tensor(token_ids, dtype=torch.long)
        starts = range(0, len(token_ids) - max_length, stride)
        self.starts = list(starts)
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[index]
        chunk = self.ids[start : start + self.max_length + 1]  # (T+1,)
        return chunk[:-1], chunk[1:]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked inputs and targets ``(B, max_length)``."""
        pairs = [self[i] for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def split_text(text: str, train_ratio: float = 0.9) -> tuple[str, str]:
    """Split raw text by characters into train (first ``train_ratio``) and validation parts."""
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio!r}")
    cut = int(train_ratio * len(text))
    return text[:cut], text[cut:]


def text_datasets(
    text: str,
    tokenizer: Any,
    *,
    max_length: int,
    stride: int,
    train_ratio: float = 0.9,
) -> tuple[SlidingWindowDataset, SlidingWindowDataset]:
    """Train and validation :class:`SlidingWindowDataset` of a small in-memory text (90/10)."""
    train_text, val_text = split_text(text, train_ratio)
    encode = lambda s: tokenizer.encode(s, allowed_special="all")  # noqa: E731
    return (
        SlidingWindowDataset(encode(train_text), max_length, stride),
        SlidingWindowDataset(encode(val_text), max_length, stride),
    )


@dataclass
class EpochSampler:
    """Deterministic shuffled order over ``n`` examples, epoch after epoch.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``; the position is ``(epoch, cursor)``,
    so saving :meth:`state_dict` is all a resumed run needs to see the same batches.
    """

    n: int
    seed: int
    epoch: int = 0
    cursor: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise DataError("no training examples: the data is shorter than one context window")
        self._perm: list[int] | None = None
        self._perm_epoch = -1

    def _permutation(self) -> list[int]:
        if self._perm_epoch != self.epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=gen).tolist()
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def take(self, count: int) -> list[int]:
        """The next ``count`` example indices (wrapping into the next epoch)."""
        out: list[int] = []
        while len(out) < count:
            perm = self._permutation()
            grab = min(count - len(out), self.n - self.cursor)
            out.extend(perm[self.cursor : self.cursor + grab])
            self.cursor += grab
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        """Position in the data: ``epoch`` and ``cursor``."""
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict` (same data and seed required)."""
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise DataError(
                f"the checkpoint was taken over {int(state['n'])} examples with seed "
                f"{int(state['seed'])}, this run has {self.n} with seed {self.seed}; "
                "resume with the same data, context length and seed"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def eval_indices(n: int, count: int) -> list[int]:
    """``count`` evenly spread example indices: a fixed validation subset across evaluations."""
    if n <= count:
        return list(range(n))
    return [int(i * n / count) for i in range(count)]
