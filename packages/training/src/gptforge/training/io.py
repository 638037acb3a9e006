"""Atomic file writes for training (the shared :mod:`gptforge.fileio` helpers).

A reader (or a resumed run after SIGKILL) sees either the old file or the new one, never a torn
write.
"""

from __future__ import annotations

from pathlib import Path

from gptforge.fileio import atomic_write, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
