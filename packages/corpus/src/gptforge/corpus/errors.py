"""The one error type of the corpus package."""

from __future__ import annotations


class CorpusError(ValueError):
    """A corpus source could not be read.

    The message names the file (and the byte offset or line where that helps) and says how to
    fix the problem. It subclasses ``ValueError`` so callers (CLI, services) can treat it as bad
    input.
    """
