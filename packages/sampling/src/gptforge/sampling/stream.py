"""Streaming text: UTF-8-safe incremental detokenization and stop strings that span tokens.

A byte-level BPE token can end in the middle of a UTF-8 character (an emoji is often split over
two or three tokens). Decoding each token on its own would print replacement characters, so
:class:`StreamingDetokenizer` keeps the trailing bytes of an unfinished character until the next
token completes it. The joined deltas equal ``tokenizer.decode(all_ids)`` exactly, including for
byte sequences that are not valid UTF-8 (they become U+FFFD the same way in both).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Protocol

REPLACEMENT = "\ufffd".encode()


class BytesDecoder(Protocol):
    """The part of the tokenizer contract the detokenizer needs."""

    def decode_bytes(self, ids: list[int]) -> bytes: ...


class StreamingDetokenizer:
    """Turn a stream of token ids into text deltas that never end in a partial character.

    Args:
        tokenizer: anything with ``decode_bytes(list[int]) -> bytes`` (``gptforge.tokenizer``).

    >>> class Bytes:
    ...     def decode_bytes(self, ids):
    ...         return bytes(ids)
    >>> d = StreamingDetokenizer(Bytes())
    >>> [d.push(b) for b in "é".encode()] + [d.flush()]
    ['', 'é', '']
    """

    def __init__(self, tokenizer: BytesDecoder) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (maybe ``""``).

        An id the tokenizer does not know (a model vocabulary padded past the tokenizer's)
        becomes U+FFFD instead of failing the stream.
        """
        try:
            data = self._tokenizer.decode_bytes([token_id])
        except (ValueError, KeyError):
            data = REPLACEMENT
        return self._decoder.decode(data)

    def push_many(self, token_ids: Iterable[int]) -> str:
        """Add several tokens at once; return the completed text."""
        return self._decoder.decode(self._tokenizer.decode_bytes(list(token_ids)))

    def flush(self) -> str:
        """End of stream: return what is left (an unfinished character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopStringMatcher:
    """Hold back text that might be the start of a stop string; report when one completes.

    Text passes through :meth:`push`; what is returned is safe to show. When a stop string
    appears (even across several pushes), ``stopped`` becomes True, the text before it is returned
    and everything from the stop string on is dropped.

    >>> m = StopStringMatcher(["\\n\\nUser:"])
    >>> m.push("Hi!\\n"), m.push("\\nUs"), m.push("er: more"), m.stopped
    ('Hi!', '', '', True)
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self.matched: str | None = None
        self._pending = ""

    def push(self, text: str, *, check: bool = True) -> str:
        """Add text; return the part that can be emitted now.

        Args:
            text: the new text delta.
            check: False passes text straight through (e.g. before ``min_new_tokens``).
        """
        if self.stopped:
            return ""
        self._pending += text
        if not self.stops or not check:
            out, self._pending = self._pending, ""
            return out
        hits = [(i, s) for s, i in ((s, self._pending.find(s)) for s in self.stops) if i >= 0]
        if hits:
            at, self.matched = min(hits)
            self.stopped = True
            out, self._pending = self._pending[:at], ""
            return out
        hold = self._held_suffix_len(self._pending)
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """End of stream without a stop string: release the held-back text."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
