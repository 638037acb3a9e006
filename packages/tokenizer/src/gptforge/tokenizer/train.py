"""Training a byte-level BPE with HF ``tokenizers`` from any gptforge corpus source."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from gptforge.corpus import Source, iter_documents
from gptforge.tokenizer.errors import TokenizerError
from gptforge.tokenizer.hf_bridge import add_special, new_byte_level_bpe
from gptforge.tokenizer.specials import EOT
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers, trainers

_BATCH_DOCS = 256  # documents handed to Rust per call; fewer Python->Rust crossings


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_special_tokens(tokens: Sequence[str], argument: str) -> list[str]:
    """Validate a list of special tokens and return it without duplicates, order kept.

    A special token may not be empty and may not be a prefix of another one: tiktoken and HF
    resolve such overlaps differently, and ids would stop being identical.
    """
    if isinstance(tokens, str):
        raise TokenizerError(f"{argument} must be a list of strings, got the string {tokens!r}")
    out: list[str] = []
    for t in tokens:
        if not isinstance(t, str) or not t:
            raise TokenizerError(f"{argument} holds {t!r}; a special token is a non-empty string")
        if t not in out:
            out.append(t)
    for a in out:
        for b in out:
            if a != b and b.startswith(a):
                raise TokenizerError(
                    f"special token {a!r} is a prefix of special token {b!r} (in {argument}); "
                    "rename one so neither starts with the other"
                )
    return out


def train_hf(
    source: Source | None = None,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = (EOT,),
    field: str = "text",
    show_progress: bool = True,
    pre_tokenizer: str = "gpt2",
) -> HFTokenizer:
    """Train a GPT-2-style byte-level BPE and return the HF tokenizer.

    The 256 single bytes come first (ids 0..255 in the byte-level alphabet's order), then the
    merges in the order they were learned, then ``special_tokens``. ``vocab_size`` counts all
    three; a small corpus may stop earlier when no pair occurs ``min_frequency`` times. The
    result depends only on the input text (HF breaks ties between equally frequent pairs by
    token id), so the same corpus always gives the same tokenizer.

    Args:
        source: A corpus source (see ``gptforge.corpus.iter_documents``).
        texts: Instead of ``source``: the documents themselves.
        vocab_size: Total vocabulary size, at least ``256 + len(special_tokens)``.
        min_frequency: A pair must occur at least this often to be merged.
        special_tokens: Tokens appended after the merges.
        field: Text field of ``.jsonl`` and dataset sources.
        show_progress: Show HF's progress bars (documents read, merges learned).
        pre_tokenizer: ``gpt2`` (GPT-2's regex) or ``tekken`` (apostrophe suffixes stay
            whole); see :mod:`gptforge.tokenizer.pretokenize`.
    """
    specials = check_special_tokens(special_tokens, "special_tokens")
    floor = 256 + len(specials)
    if not isinstance(vocab_size, int) or vocab_size < floor:
        raise TokenizerError(
            f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs the 256 bytes plus "
            f"{len(specials)} special token(s); pass vocab_size >= {floor} (e.g. 4096 or 8192)"
        )
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise TokenizerError(f"min_frequency={min_frequency!r} must be an integer >= 1")
    if (source is None) == (texts is None):
        raise TokenizerError(
            "pass exactly one of source= (a corpus path, glob, 'default' or a list of those) "
            f"and texts= (an iterable of documents); got source={source!r}, "
            f"texts={'None' if texts is None else type(texts).__name__}"
        )
    docs: Iterable[str] = iter_documents(source, field=field) if source is not None else texts  # type: ignore[assignment]
    seen = [0]  # characters of text handed to the trainer

    def counted(items: Iterable[str]) -> Iterator[str]:
        for doc in items:
            if not isinstance(doc, str):
                raise TokenizerError(
                    f"texts holds a {type(doc).__name__} ({doc!r:.60}); pass strings"
                )
            seen[0] += len(doc)
            yield doc

    hf = new_byte_level_bpe(pre_tokenizer=pre_tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        min_frequency=min_frequency,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    hf.train_from_iterator(_batches(counted(docs), _BATCH_DOCS), trainer=trainer)
    if seen[0] == 0:
        raise TokenizerError("texts is empty: there is no text to train on; pass some documents")
    add_special(hf, specials)
    return hf
