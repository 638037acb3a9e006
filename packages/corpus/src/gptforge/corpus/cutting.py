"""Where a long document may be cut into pieces that encode exactly like the whole.

Byte-level BPE tokenizers first split text with GPT-2's regex (``'s|'t|...| ?\\p{L}+|
?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``) and never merge across those pieces. A cut
at a position where the regex starts a new piece in the whole text gives the same ids as
encoding the whole, because no alternative looks behind and only whitespace runs look ahead.
Two kinds of position are such piece starts:

- before a whitespace character that follows a non-whitespace one (no non-whitespace piece
  extends into whitespace, and the whitespace run is matched the same from its start);
- after a letter or digit that is followed by punctuation (neither letter nor digit nor
  whitespace), the usual boundary of text written without spaces (Chinese, Japanese).

Only when a window of text has neither (a run of one symbol, random bytes) is it cut at any
UTF-8 character boundary: still valid text, only the ids at that one cut may differ.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

Segment = tuple[str, bool]
"""A piece of a document and whether the document ends with it."""

_ASCII_SPACES = (b" ", b"\n", b"\t", b"\r")
_LETTER_BEFORE_PUNCT = re.compile(r"[^\W_](?=[^\w\s])")


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def char_start(data: bytes, pos: int) -> int:
    """The largest character boundary ``<= pos`` (``data[pos]`` is not a continuation byte)."""
    while 0 < pos < len(data) and _is_continuation(data[pos]):
        pos -= 1
    return pos


def _space_cut(data: bytes, lo: int, hi: int) -> int:
    q = hi
    while q > lo:
        q = max(data.rfind(space, lo, q) for space in _ASCII_SPACES)
        if q <= 0:
            return 0
        before = data[char_start(data, q - 1) : q].decode("utf-8", "replace")
        if not before.isspace():
            return q
    return 0


def _punct_cut(data: bytes, lo: int, hi: int) -> int:
    window = data[lo:hi].decode("utf-8", "surrogateescape")
    last = None
    for last in _LETTER_BEFORE_PUNCT.finditer(window):  # noqa: B007 (the last match is wanted)
        pass
    if last is None:
        return 0
    return lo + len(window[: last.end()].encode("utf-8", "surrogateescape"))


def cut_point(data: bytes, limit: int) -> int:
    """A position in ``(0, limit]`` where ``data`` may be cut (see the module docstring).

    Args:
        data: UTF-8 bytes, longer than ``limit``.
        limit: The most bytes the first piece may hold (>= 4).

    >>> cut_point(b"hello world again", 12)
    11
    """
    hi = char_start(data, limit)
    lo = char_start(data, max(1, hi - max(hi // 4, 64)))
    return _space_cut(data, lo, hi) or _punct_cut(data, lo, hi) or hi or limit


def split_text(text: str, chunk_bytes: int) -> Iterator[Segment]:
    """One document's pieces of at most ``chunk_bytes`` UTF-8 bytes (see :func:`cut_point`)."""
    if len(text) * 4 <= chunk_bytes:
        yield text, True
        return
    data = text.encode("utf-8", "surrogatepass")
    while len(data) > chunk_bytes:
        q = cut_point(data, chunk_bytes)
        yield data[:q].decode("utf-8", "surrogatepass"), False
        data = data[q:]
    yield data.decode("utf-8", "surrogatepass"), True
