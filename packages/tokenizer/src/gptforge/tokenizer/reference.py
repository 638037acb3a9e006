"""A pure-Python byte-level BPE, short enough to read in one sitting.

This is how byte-pair encoding works, without any of the engineering that makes HF
``tokenizers`` and tiktoken fast. gptforge's tests use it as an oracle: trained on the same text
it learns the same merges as HF ``tokenizers``, and given the same merges it encodes exactly
like the tiktoken fast path.

Training:
    1. Split the text into *pieces* with the GPT-2 regex (words with their leading space,
       numbers, punctuation runs, whitespace) and count each distinct piece once.
    2. Write every piece as a list of single-byte tokens.
    3. Repeatedly count adjacent token pairs over all pieces (weighted by piece count), merge
       the most frequent pair everywhere into a new token, until the vocabulary is full.
Encoding:
    Split the text into pieces the same way; in each piece repeatedly merge the adjacent pair
    that was learned earliest, until no learned pair is left.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import regex
from gptforge.tokenizer.byte_level import byte_to_char
from gptforge.tokenizer.specials import GPT2_PATTERN


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[bytes]:
    """Split ``text`` with the GPT-2 regex and return the UTF-8 bytes of every piece."""
    return [piece.encode("utf-8") for piece in regex.findall(pattern, text)]


def initial_vocab() -> dict[bytes, int]:
    """The 256 single bytes, numbered like HF does: in the order of their byte-level characters
    (so ``b"!"`` is 0 and the space byte, written ``"Ġ"``, comes late)."""
    chars = byte_to_char()
    order = sorted(range(256), key=lambda b: chars[b])
    return {bytes([b]): i for i, b in enumerate(order)}


def _merge_word(word: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    """Replace every non-overlapping occurrence of ``pair`` in ``word``, left to right."""
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


@dataclass
class ReferenceBPE:
    """Merges in learning order plus the id of every token."""

    merges: list[tuple[bytes, bytes]]
    vocab: dict[bytes, int] = field(default_factory=initial_vocab)
    pattern: str = GPT2_PATTERN

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2
    ) -> ReferenceBPE:
        """Learn merges until ``vocab_size`` tokens exist or no pair occurs ``min_frequency``
        times. Ties between equally frequent pairs go to the pair with the smaller ids, as in
        HF ``tokenizers``."""
        pieces = Counter(p for text in texts for p in pretokenize(text))
        words = [([bytes([b]) for b in piece], count) for piece, count in pieces.items()]
        vocab = initial_vocab()
        merges: list[tuple[bytes, bytes]] = []
        while len(vocab) < vocab_size:
            pair_counts: Counter[tuple[bytes, bytes]] = Counter()
            for word, count in words:
                for pair in zip(word, word[1:], strict=False):
                    pair_counts[pair] += count
            if not pair_counts:
                break
            best = min(pair_counts, key=lambda p: (-pair_counts[p], vocab[p[0]], vocab[p[1]]))
            if pair_counts[best] < min_frequency:
                break
            merges.append(best)
            vocab.setdefault(best[0] + best[1], len(vocab))
            words = [(_merge_word(word, best), count) for word, count in words]
        return cls(merges, vocab)

    def _ranks(self) -> dict[tuple[bytes, bytes], int]:
        if getattr(self, "_rank_cache", (None,))[0] is not self.merges:
            self._rank_cache = (self.merges, {pair: i for i, pair in enumerate(self.merges)})
        return self._rank_cache[1]

    def encode_piece(self, piece: bytes) -> list[int]:
        """Encode one pre-tokenized piece: merge the earliest-learned pair until none is left."""
        rank = self._ranks()
        word = [bytes([b]) for b in piece]
        while len(word) > 1:
            pairs = [p for p in zip(word, word[1:], strict=False) if p in rank]
            if not pairs:
                break
            word = _merge_word(word, min(pairs, key=rank.__getitem__))
        return [self.vocab[token] for token in word]

    def encode(self, text: str) -> list[int]:
        """Encode text (no special tokens) to ids."""
        return [i for piece in pretokenize(text, self.pattern) for i in self.encode_piece(piece)]

    def decode(self, ids: list[int]) -> bytes:
        """Concatenate the bytes of the tokens ``ids``."""
        inverse = {i: token for token, i in self.vocab.items()}
        return b"".join(inverse[i] for i in ids)
