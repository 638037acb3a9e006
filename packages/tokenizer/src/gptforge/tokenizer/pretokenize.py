"""Pre-tokenizers: the regex that cuts text into groups before BPE merges within each group.

Two are offered at training time, and the choice travels inside ``tokenizer.json`` (so HF
``tokenizers`` and ``transformers`` apply it), drives the tiktoken fast path, and names the
``tokenizer.ggml.pre`` of a GGUF export (so llama.cpp applies the same regex):

- ``gpt2``: GPT-2's pattern, with English contractions: "İstanbul'da" -> "İstanbul", "'d", "a".
- ``tekken``: Mistral's Tekken pattern as llama.cpp spells it (llama.cpp's ``tekken``): no
  contractions, so an apostrophe suffix stays whole ("İstanbul'da" -> "İstanbul", "'da";
  "Ali'nin" -> "Ali", "'nin"); a run of letters splits where ASCII case changes ("HelloWorld"
  -> "Hello", "World"); digits stand alone. llama.cpp tells upper- from lowercase with
  ``[^a-z]`` / ``[^A-Z]`` among letters, so this pattern does too (``[\\p{L}&&[^a-z]]``): every
  engine then cuts the same groups.
"""

from __future__ import annotations

from typing import Any

from gptforge.tokenizer.errors import TokenizerError
from gptforge.tokenizer.specials import GPT2_PATTERN
from tokenizers import Regex, pre_tokenizers

TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Pre-tokenizer name -> its regex (tiktoken's spelling, also valid for HF's Oniguruma).
PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "tekken": TEKKEN_PATTERN}
#: Pre-tokenizer name -> llama.cpp's ``tokenizer.ggml.pre`` with the same regex.
GGUF_PRE: dict[str, str] = {"gpt2": "gpt-2", "tekken": "tekken"}


def check_pre_tokenizer(name: str) -> str:
    """Return ``name`` if it is a known pre-tokenizer, else raise naming the choices."""
    if name not in PATTERNS:
        raise TokenizerError(
            f"unknown pre-tokenizer {name!r}; choose one of {sorted(PATTERNS)} (gpt2: GPT-2's "
            "regex with English contractions; tekken: apostrophe suffixes stay whole)"
        )
    return name


def hf_pre_tokenizer(name: str) -> Any:
    """The HF pre-tokenizer for ``name``: byte-level, with ``name``'s regex."""
    check_pre_tokenizer(name)
    if name == "gpt2":  # HF's built-in GPT-2 regex: what GPT-2's own tokenizer.json holds
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERNS[name]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def pre_tokenizer_name(spec: dict[str, Any]) -> str | None:
    """The pre-tokenizer of a ``tokenizer.json`` (parsed), or None when it is none of ours."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        regex = pre.get("use_regex", True) and not pre.get("add_prefix_space")
        return "gpt2" if regex else None
    steps = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(steps) != 2:
        return None
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space")
    ):
        return None
    return next((name for name, p in PATTERNS.items() if p == pattern), None)


def gguf_pre(spec: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a ``tokenizer.json`` (parsed); raises when
    llama.cpp knows no pre-tokenizer with its regex."""
    name = pre_tokenizer_name(spec)
    if name is None:
        raise TokenizerError(
            f"tokenizer.json's pre_tokenizer {spec.get('pre_tokenizer')!r} is none of "
            f"{sorted(PATTERNS)}; llama.cpp would split its text differently. Train the "
            "tokenizer with gptforge (`gptforge tokenizer train --pre-tokenizer ...`)"
        )
    return GGUF_PRE[name]
