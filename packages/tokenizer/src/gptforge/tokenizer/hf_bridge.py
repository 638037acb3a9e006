"""The bridge between an HF ``tokenizers.Tokenizer`` and tiktoken's rank tables.

gptforge keeps one source of truth, an HF byte-level BPE tokenizer (what ``tokenizer.json``
holds and what ``transformers`` loads), and derives from it the tables tiktoken's fast encoder
needs: ``mergeable_ranks`` (token bytes -> id) and ``special_tokens`` (text -> id).

Why the two encoders agree: a trained byte-level BPE creates each token with exactly one merge
and gives it the next free id, so "merge the pair with the lowest merge rank" (HF) and "merge
the pair whose concatenation has the lowest id" (tiktoken) pick the same pair at every step.
The property tests in ``tests/tokenizer`` check this on arbitrary unicode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gptforge.tokenizer.byte_level import token_str_to_bytes
from gptforge.tokenizer.errors import TokenizerError
from gptforge.tokenizer.pretokenize import PATTERNS, hf_pre_tokenizer, pre_tokenizer_name
from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer


@dataclass(frozen=True)
class RankTables:
    """What tiktoken needs, plus the merges (kept for the fingerprint and the reference BPE)."""

    mergeable_ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    merges: list[tuple[str, str]]
    """Merges in priority order, as byte-level token strings (``("Ġ", "t")``)."""
    pre_tokenizer: str = "gpt2"
    """The pre-tokenizer's name (a key of :data:`gptforge.tokenizer.pretokenize.PATTERNS`)."""


def new_byte_level_bpe(
    vocab: dict[str, int] | None = None,
    merges: list[tuple[str, str]] | None = None,
    *,
    pre_tokenizer: str = "gpt2",
) -> HFTokenizer:
    """Return an HF tokenizer set up like GPT-2: byte-level BPE, no prefix space.

    Args:
        vocab: Byte-level token string -> id; ``None`` for an empty model to be trained.
        merges: The merges in priority order (required together with ``vocab``).
        pre_tokenizer: ``gpt2`` (GPT-2's regex) or ``tekken`` (see ``pretokenize``).
    """
    model = models.BPE() if vocab is None else models.BPE(vocab=vocab, merges=merges or [])
    hf = HFTokenizer(model)
    hf.pre_tokenizer = hf_pre_tokenizer(pre_tokenizer)
    hf.decoder = decoders.ByteLevel()
    return hf


def add_special(hf: HFTokenizer, tokens: list[str]) -> None:
    """Add special tokens to an HF tokenizer: matched atomically, never normalized or stripped."""
    hf.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in tokens]
    )


def _check_compatible(spec: dict[str, Any]) -> None:
    """Refuse tokenizer.json files the tiktoken fast path cannot reproduce exactly."""
    model = spec.get("model") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model.type is {model.get('type')!r}, expected 'BPE'")
    if spec.get("normalizer") is not None:
        problems.append(f"normalizer is {spec['normalizer'].get('type')!r}, expected none")
    if pre_tokenizer_name(spec) is None:
        problems.append(
            f"pre_tokenizer is {spec.get('pre_tokenizer')!r}, expected ByteLevel with "
            f"use_regex=true and no prefix space, or one of gptforge's {sorted(PATTERNS)}"
        )
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            problems.append(f"model.{key} is {model[key]!r}, expected none")
    if problems:
        raise TokenizerError(
            "tokenizer.json is not a GPT-2-style byte-level BPE that gptforge can encode with "
            f"tiktoken: {'; '.join(problems)}. Train one with Tokenizer.train or "
            "`gptforge tokenizer train`"
        )


def rank_tables(hf: HFTokenizer) -> RankTables:
    """Derive tiktoken's tables from an HF byte-level BPE tokenizer.

    Raises:
        TokenizerError: The tokenizer is not GPT-2-style byte-level BPE.
    """
    spec = json.loads(hf.to_str())
    _check_compatible(spec)
    specials = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])}
    special_ids = set(specials.values())
    ranks: dict[bytes, int] = {}
    for token, idx in spec["model"]["vocab"].items():
        if idx in special_ids:  # GPT-2's tokenizer.json also lists <|endoftext|> in the model
            continue
        try:
            ranks[token_str_to_bytes(token)] = int(idx)
        except ValueError as e:
            raise TokenizerError(str(e)) from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(
            f"vocabulary lacks {len(missing)} of the 256 single bytes (first: {missing[0]}); a "
            "byte-level BPE must contain every byte so any text can be encoded"
        )
    vocab = spec["model"]["vocab"]
    merges: list[tuple[str, str]] = []
    previous = -1
    for i, m in enumerate(spec["model"].get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merged = vocab.get(a + b)
        # tiktoken ranks a merge by the id of its result, so ids must follow merge order.
        if merged is None or merged <= previous:
            raise TokenizerError(
                f"merge {i} ({a!r}, {b!r}) produces id {merged!r} after id {previous}; tiktoken "
                "needs every merge to create a new token whose id grows with the merge order"
            )
        previous = merged
        merges.append((a, b))
    return RankTables(ranks, specials, merges, pre_tokenizer_name(spec) or "gpt2")
