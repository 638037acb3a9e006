"""The one exception type of the conversion package."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint could not be read, mapped or written.

    The message names the file or tensor key that failed, shows the offending value and says
    how to fix it. It subclasses ``ValueError`` so services map it to ``INVALID_ARGUMENT``.
    """
