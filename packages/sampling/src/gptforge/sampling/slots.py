"""Slot views of a model's cache buffers, for continuous batching.

``model.setup_caches(max_batch_size, ...)`` allocates cache state with the batch as dim 0
(``docs/contracts.md``). Row ``b`` of that state is one *slot*. To prefill a new sequence into
slot ``b`` while other slots hold live sequences, the model must see a batch-1 cache that *is*
row ``b``: we swap each cache buffer for the view ``buf[b:b+1]`` for the duration of one forward.
Writes through the view land in the shared tensor, so nothing is copied. The same trick runs
the decode step on the prefix ``buf[:hi]`` of slots that are in use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn


class SlotCaches:
    """Own the model's caches for ``max_batch_size`` slots and hand out row views.

    Args:
        model: a gptforge model (``setup_caches(max_batch_size, max_seq_len)``).
        max_batch_size: number of slots.
        max_seq_len: positions per slot.

    Raises:
        RuntimeError: if no cache buffer with the batch as dim 0 could be found.
    """

    def __init__(self, model: nn.Module, max_batch_size: int, max_seq_len: int) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        # Keep the old tensors alive so a new buffer cannot reuse an old one's id.
        before = dict(model.named_buffers())
        cast(Any, model).setup_caches(max_batch_size, max_seq_len)
        self._entries: list[tuple[nn.Module, str, Tensor]] = []
        fallback: list[tuple[nn.Module, str, Tensor]] = []
        for mod_name, module in model.named_modules():
            for attr, buf in module.named_buffers(recurse=False):
                if buf is None or buf.dim() < 2 or buf.shape[0] != max_batch_size:
                    continue
                full_name = f"{mod_name}.{attr}" if mod_name else attr
                entry = (module, attr, buf)
                fallback.append(entry)
                if before.get(full_name) is not buf:
                    self._entries.append(entry)
        # setup_caches may keep caches that are already big enough; then nothing changed.
        self._entries = self._entries or fallback
        # One slot needs no views, so models with other cache layouts still work at batch 1.
        if not self._entries and max_batch_size > 1:
            raise RuntimeError(
                f"{type(model).__name__}.setup_caches({max_batch_size}, {max_seq_len}) created no "
                "buffer with the batch as dim 0; continuous batching needs cache state in "
                "non-persistent buffers shaped (max_batch_size, ...) (see docs/contracts.md)"
            )

    @contextmanager
    def rows(self, lo: int, hi: int) -> Iterator[None]:
        """Within the block the model's caches are the rows ``[lo, hi)`` of the full caches."""
        if not 0 <= lo < hi <= self.max_batch_size:
            raise IndexError(f"slot rows [{lo}, {hi}) outside [0, {self.max_batch_size})")
        if (lo == 0 and hi == self.max_batch_size) or not self._entries:
            yield
            return
        for module, attr, full in self._entries:
            module._buffers[attr] = full[lo:hi]
        try:
            yield
        finally:
            for module, attr, full in self._entries:
                module._buffers[attr] = full

    def clear(self, slot: int) -> None:
        """Zero a slot's state (recurrent models start from a zero state)."""
        with torch.no_grad():
            for _, _, full in self._entries:
                full[slot].zero_()

    @property
    def num_buffers(self) -> int:
        """How many cache buffers are managed (for diagnostics)."""
        return len(self._entries)
