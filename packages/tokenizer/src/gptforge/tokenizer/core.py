"""The ``Tokenizer`` class: HF ``tokenizers`` for training and files, tiktoken for speed.

One HF byte-level BPE tokenizer is the source of truth (it is what ``tokenizer.json`` stores
and what ``transformers`` loads). Encoding and decoding run on a ``tiktoken.Encoding`` built
from the same ranks, which gives identical ids several times faster.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import tiktoken
from gptforge.corpus import Source
from gptforge.tokenizer.errors import SpecialTokenError, TokenizerError
from gptforge.tokenizer.hf_bridge import RankTables, add_special, rank_tables
from gptforge.tokenizer.pretokenize import PATTERNS
from gptforge.tokenizer.specials import EOT
from gptforge.tokenizer.train import check_special_tokens, train_hf
from tokenizers import Tokenizer as HFTokenizer

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

AllowedSpecial = Literal["all"] | Collection[str]


class Tokenizer:
    """A byte-level BPE tokenizer with tiktoken's API.

    Build one with :meth:`train`, :meth:`from_dir` or :meth:`gpt2`; or wrap an HF
    ``tokenizers.Tokenizer`` that is GPT-2-style byte-level BPE.

    >>> tok = Tokenizer.train(texts=["hello world, hello tokens"] * 10, vocab_size=300)
    >>> tok.decode(tok.encode("hello world"))
    'hello world'
    """

    def __init__(self, hf: HFTokenizer, *, name: str | None = None) -> None:
        """Wrap an HF tokenizer (GPT-2-style byte-level BPE).

        Args:
            hf: The HF tokenizer; it is used as is, not copied.
            name: A label for messages and ``info``; defaults to ``bpe-<n_vocab>``.
        """
        self._hf = hf
        self._name = name
        self._rebuild()

    def _rebuild(self) -> None:
        tables: RankTables = rank_tables(self._hf)
        self._tables = tables
        self._enc = tiktoken.Encoding(
            self._name or "gptforge-bpe",
            pat_str=PATTERNS[tables.pre_tokenizer],
            mergeable_ranks=tables.mergeable_ranks,
            special_tokens=tables.special_tokens,
        )
        self._core = self._enc._core_bpe  # the Rust object; skips per-call Python checks
        self._all_special = frozenset(tables.special_tokens)
        self._special_re: dict[frozenset[str], re.Pattern[str]] = {}
        self.__dict__.pop("fingerprint", None)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        source: Source | None = None,
        *,
        texts: Iterable[str] | None = None,
        vocab_size: int = 8192,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = (EOT,),
        field: str = "text",
        show_progress: bool = True,
        pre_tokenizer: str = "gpt2",
    ) -> Tokenizer:
        """Train a byte-level BPE on a corpus source (or on ``texts``) with HF ``tokenizers``.

        Args:
            source: A file, directory, glob, ``.jsonl``, parquet/arrow, saved dataset,
                ``"default"``, or a list of those.
            texts: Instead of ``source``: an iterable of documents.
            vocab_size: Total size: 256 bytes + merges + ``special_tokens``.
            min_frequency: Minimum count of a pair to be merged.
            special_tokens: Appended after the merges (``<|endoftext|>`` by default).
            field: Text field of ``.jsonl`` records and dataset rows.
            show_progress: Show progress bars while reading and merging.
            pre_tokenizer: How text is cut before merging: ``gpt2`` (GPT-2's regex, English
                contractions) or ``tekken`` (no contractions: "İstanbul'da" keeps "'da"
                whole); recorded in ``tokenizer.json``.

        >>> tok = Tokenizer.train("default", vocab_size=4096, show_progress=False)
        >>> tok.n_vocab
        4096
        """
        hf = train_hf(
            source,
            texts=texts,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            field=field,
            show_progress=show_progress,
            pre_tokenizer=pre_tokenizer,
        )
        return cls(hf)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer directory written by :meth:`save` (or any GPT-2-style
        ``tokenizer.json``)."""
        from gptforge.tokenizer.files import load_dir

        return load_dir(cls, Path(path))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load an HF ``tokenizer.json`` file (byte-level BPE with the GPT-2 regex)."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def gpt2(cls, path: str | Path | None = None) -> Tokenizer:
        """Return OpenAI's GPT-2 tokenizer from files already on this machine (no download).

        Args:
            path: A directory with ``encoder.json`` + ``vocab.bpe`` (or ``vocab.json`` +
                ``merges.txt``). Without it, tiktoken's cache and the Hugging Face cache are
                searched.

        Raises:
            TokenizerError: No GPT-2 files were found; the message says how to provide them.
        """
        from gptforge.tokenizer.gpt2 import load_gpt2

        return cls(load_gpt2(path), name="gpt2")

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
        ``gptforge.json`` into ``path`` (created if needed; each file written atomically).

        The directory loads with :meth:`from_dir`, ``transformers.AutoTokenizer`` and
        ``tokenizers.Tokenizer.from_file(path / "tokenizer.json")``, all with the same ids.
        """
        from gptforge.tokenizer.files import save_dir

        return save_dir(self, Path(path))

    # --- vocabulary ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A label: ``gpt2`` or ``bpe-<n_vocab>``."""
        return self._name or f"bpe-{self.n_vocab}"

    @property
    def pre_tokenizer(self) -> str:
        """How text is cut before merging: ``gpt2`` or ``tekken`` (see ``pretokenize``)."""
        return self._tables.pre_tokenizer

    @property
    def hf(self) -> HFTokenizer:
        """The underlying HF tokenizer (the source of truth; do not mutate it directly)."""
        return self._hf

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tiktoken encoding that does the fast path."""
        return self._enc

    @property
    def n_vocab(self) -> int:
        """Number of ids: every id in ``range(n_vocab)`` decodes."""
        return self._enc.max_token_value + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id (a copy)."""
        return dict(self._tables.special_tokens)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Ordinary token bytes -> id (a copy); the id is also the merge priority."""
        return dict(self._tables.mergeable_ranks)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges in priority order, as byte pairs."""
        from gptforge.tokenizer.byte_level import token_str_to_bytes

        return [(token_str_to_bytes(a), token_str_to_bytes(b)) for a, b in self._tables.merges]

    @property
    def eot_token(self) -> int:
        """The id of ``<|endoftext|>``."""
        try:
            return self._tables.special_tokens[EOT]
        except KeyError:
            raise TokenizerError(
                f"this tokenizer has no {EOT!r} token (special tokens: "
                f"{sorted(self._all_special)}); add it with add_special_tokens([{EOT!r}])"
            ) from None

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the pattern, vocabulary, merges and special tokens (stable across save and
        load, independent of file formatting)."""
        h = hashlib.sha256()
        h.update(PATTERNS[self._tables.pre_tokenizer].encode())
        by_id = sorted((i, b) for b, i in self._tables.mergeable_ranks.items())
        h.update(json.dumps([[i, b.hex()] for i, b in by_id]).encode())
        h.update(json.dumps(self._tables.merges, ensure_ascii=False).encode())
        h.update(json.dumps(sorted(self._tables.special_tokens.items())).encode())
        return h.hexdigest()

    def token_to_id(self, token: str | bytes) -> int:
        """Return the id of a special token's text, or of an ordinary token's text or bytes."""
        if isinstance(token, str) and token in self._tables.special_tokens:
            return self._tables.special_tokens[token]
        data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        try:
            return self._tables.mergeable_ranks[data]
        except KeyError:
            raise TokenizerError(
                f"token {token!r} is not in the vocabulary (n_vocab={self.n_vocab}); "
                "encode() splits arbitrary text into tokens"
            ) from None

    def id_to_token(self, token_id: int) -> bytes:
        """Return the bytes of one token (special tokens as their UTF-8 text)."""
        return self.decode_bytes([token_id])

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add special tokens (e.g. ``<INST>``, ``<|pad|>``) and return their ids.

        Tokens already present keep their id. New ones get the next free ids, encode as one
        token when allowed, decode back to their text and persist through :meth:`save`.

        Raises:
            TokenizerError: A token is empty, already an ordinary token, or a prefix of another
                special token (or has one as prefix).
        """
        wanted = check_special_tokens(tokens, "tokens")
        new = [t for t in wanted if t not in self._tables.special_tokens]
        for t in new:
            if t.encode("utf-8") in self._tables.mergeable_ranks:
                raise TokenizerError(
                    f"{t!r} is already an ordinary token (id {self.token_to_id(t)}); special "
                    "tokens need text that is not in the vocabulary, e.g. '<|name|>'"
                )
        check_special_tokens([*self._tables.special_tokens, *new], "tokens + existing specials")
        if new:
            add_special(self._hf, new)
            self._rebuild()
        return [self._tables.special_tokens[t] for t in wanted]

    # --- encoding -----------------------------------------------------------------------
    def _specials_arg(self, value: AllowedSpecial, argument: str) -> frozenset[str]:
        if value == "all":
            return self._all_special
        if isinstance(value, str):
            raise TokenizerError(
                f"{argument}={value!r} must be 'all' or a set of special tokens, not a string; "
                f"did you mean {argument}={{{value!r}}}?"
            )
        chosen = frozenset(value)
        unknown = chosen - self._all_special
        if unknown:
            raise TokenizerError(
                f"{argument} names {sorted(unknown)} which are not special tokens of this "
                f"tokenizer; its special tokens are {sorted(self._all_special)}"
            )
        return chosen

    def _check_disallowed(self, text: str, disallowed: frozenset[str]) -> None:
        pattern = self._special_re.get(disallowed)
        if pattern is None:
            # Longest first, so a token is reported whole.
            alternatives = sorted(disallowed, key=len, reverse=True)
            pattern = re.compile("|".join(re.escape(t) for t in alternatives))
            self._special_re[disallowed] = pattern
        match = pattern.search(text)
        if match:
            token = match.group()
            raise SpecialTokenError(
                f"text contains the special token {token!r} at character {match.start()}; pass "
                f"allowed_special={{{token!r}}} (or allowed_special='all') to encode it as a "
                f"special token, or disallowed_special=() to encode it as ordinary text"
            )

    def encode(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: AllowedSpecial = "all",
    ) -> list[int]:
        """Encode text to token ids (tiktoken's semantics).

        Args:
            text: Any string.
            allowed_special: Special tokens whose text becomes the special id (``"all"`` or a
                set).
            disallowed_special: Special tokens whose text raises :class:`SpecialTokenError`
                (default ``"all"``; ``()`` encodes such text as ordinary text).

        >>> tok = Tokenizer.train(texts=["aaa bbb"] * 5, vocab_size=300, show_progress=False)
        >>> tok.decode(tok.encode("<|endoftext|>", allowed_special="all"))
        '<|endoftext|>'
        """
        allowed, disallowed = self._resolve(allowed_special, disallowed_special)
        return self._encode(text, allowed, disallowed)

    def _resolve(
        self, allowed_special: AllowedSpecial, disallowed_special: AllowedSpecial
    ) -> tuple[frozenset[str], frozenset[str]]:
        allowed = self._specials_arg(allowed_special, "allowed_special")
        disallowed = self._specials_arg(disallowed_special, "disallowed_special") - allowed
        return allowed, disallowed

    def _encode(self, text: str, allowed: frozenset[str], disallowed: frozenset[str]) -> list[int]:
        if disallowed:
            self._check_disallowed(text, disallowed)
        try:
            if allowed:
                return self._core.encode(text, allowed)
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8 encoded; replace them like tiktoken does.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            if allowed:
                return self._core.encode(text, allowed)
            return self._core.encode_ordinary(text)

    def encode_to_numpy(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: AllowedSpecial = "all",
    ) -> npt.NDArray[np.uint32]:
        """:meth:`encode` into a ``uint32`` array, with no Python list in between (tiktoken's
        ``encode_to_numpy``): what bulk encoding uses to keep memory compact.

        >>> tok = Tokenizer.train(texts=["aaa bbb"] * 5, vocab_size=300, show_progress=False)
        >>> tok.encode_to_numpy("aaa bbb").tolist() == tok.encode("aaa bbb")
        True
        """
        import numpy as np

        allowed, disallowed = self._resolve(allowed_special, disallowed_special)
        if disallowed:
            self._check_disallowed(text, disallowed)
        try:
            buffer = self._core.encode_to_tiktoken_buffer(text, allowed)
        except UnicodeEncodeError:  # lone surrogates, replaced as in _encode
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            buffer = self._core.encode_to_tiktoken_buffer(text, allowed)
        return np.frombuffer(buffer, dtype=np.uint32)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling at all (special text is plain text)."""
        return self.encode(text, disallowed_special=())

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int = 8,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: AllowedSpecial = "all",
    ) -> list[list[int]]:
        """Encode many texts on ``num_threads`` threads (tiktoken releases the GIL)."""
        if isinstance(texts, str):
            raise TokenizerError("encode_batch takes a list of strings; use encode() for one")

        allowed, disallowed = self._resolve(allowed_special, disallowed_special)
        if num_threads <= 1 or len(texts) <= 1:
            return [self._encode(t, allowed, disallowed) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(self._encode, texts, repeat(allowed), repeat(disallowed)))

    # --- decoding -----------------------------------------------------------------------
    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """Decode ids to the raw bytes they stand for (may be partial UTF-8).

        Raises:
            TokenizerError: An id is outside ``range(n_vocab)``.
        """
        try:
            return self._core.decode_bytes(tokens)
        except (KeyError, OverflowError, TypeError) as error:
            for t in tokens:
                if not isinstance(t, int) or not 0 <= t < self.n_vocab:
                    raise TokenizerError(
                        f"token id {t!r} is outside the vocabulary: valid ids are "
                        f"0..{self.n_vocab - 1} (n_vocab={self.n_vocab})"
                    ) from None
            # Only tokenizer.json files with holes in their ids get here.
            raise TokenizerError(
                f"a token id is not assigned in this vocabulary: {error}"
            ) from None

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD (``errors``)."""
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_batch(
        self, batch: Sequence[Sequence[int]], *, errors: str = "replace", num_threads: int = 8
    ) -> list[str]:
        """Decode many id lists on ``num_threads`` threads."""
        if num_threads <= 1 or len(batch) <= 1:
            return [self.decode(t, errors) for t in batch]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(lambda t: self.decode(t, errors), batch))

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        """tiktoken's name for :meth:`id_to_token`."""
        return self.decode_bytes([token_id])

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab}, "
            f"special_tokens={self.special_tokens!r})"
        )
