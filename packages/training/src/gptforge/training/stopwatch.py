"""A stopwatch that adds up wall time per named phase, for the loop's overhead accounting."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Stopwatch:
    """Wall time since creation, and the time spent inside each named phase.

    >>> watch = Stopwatch()
    >>> with watch("data"):
    ...     pass
    >>> watch.totals["data"] >= 0.0
    True
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.totals: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Add the time the ``with`` block takes to ``phase`` (also when it raises)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] += time.perf_counter() - began

    def elapsed(self) -> float:
        """Seconds since the stopwatch was created."""
        return time.perf_counter() - self.start

    def fraction(self, phases: Iterable[str], *, excluding: Iterable[str] = ()) -> float:
        """Share of the elapsed time spent in ``phases``, with the ``excluding`` phases taken
        out of the whole (time that is neither the measured work nor the rest)."""
        whole = self.elapsed() - sum(self.totals.get(p, 0.0) for p in excluding)
        return sum(self.totals.get(p, 0.0) for p in phases) / max(1e-9, whole)
