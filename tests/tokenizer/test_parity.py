"""The tiktoken fast path against HF tokenizers (the real library) and the pure-Python oracle."""

from __future__ import annotations

import os

import pytest
from gptforge.tokenizer import EOT, INST, INST_END, PAD, RESP, RESP_END, Tokenizer
from gptforge.tokenizer.reference import ReferenceBPE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

FRAGMENTS = [
    # emoji, including ZWJ sequences, skin tones and flags
    "🙂",
    "🚀🚀",
    "👩‍💻",
    "👍🏽",
    "🇹🇷",
    "\ufe0f",
    # CJK and other scripts
    "東京",
    "日本語",
    "한국어",
    "中文",
    "Привет",
    "مرحبا",
    "שלום",
    "ภาษาไทย",
    # Turkish dotted/dotless i, combining marks
    "İ",
    "ı",
    "i̇",
    "I",
    "İstanbul",
    "ıslak",
    "e\u0301",
    "ﬁ",
    # whitespace runs of every kind
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "\u2028",
    " \n ",
    "\x0b",
    # contractions, digits, punctuation
    "'s",
    "'S",
    "'ll",
    "n't",
    "123",
    "٣٤",
    "3.14",
    "...",
    "!!",
    "`",
    # special-token text and near misses
    EOT,
    INST,
    INST_END,
    RESP,
    RESP_END,
    PAD,
    "<|endoftext",
    "<INST",
    "</",
    "<|",
]
texts_strategy = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(FRAGMENTS)), max_size=20
).map("".join)
SETTINGS = settings(
    max_examples=int(os.environ.get("GPTFORGE_HYPOTHESIS_EXAMPLES", 300)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


_HF_CACHE: dict[tuple[str, bool], HFTokenizer] = {}


def _hf_fresh(tok: Tokenizer, *, split_specials: bool) -> HFTokenizer:
    """A separate HF tokenizer from the serialized JSON, so the comparison is not with itself."""
    key = (tok.fingerprint, split_specials)
    if key not in _HF_CACHE:
        hf = HFTokenizer.from_str(tok.hf.to_str())
        hf.encode_special_tokens = split_specials  # True: special text is ordinary text
        _HF_CACHE[key] = hf
    return _HF_CACHE[key]


@SETTINGS
@given(text=texts_strategy)
def test_hyp_ids_identical_to_hf_with_specials(chat: Tokenizer, text: str) -> None:
    hf = _hf_fresh(chat, split_specials=False)
    assert chat.encode(text, allowed_special="all") == hf.encode(text).ids


@SETTINGS
@given(text=texts_strategy)
def test_hyp_ids_identical_to_hf_ordinary(chat: Tokenizer, text: str) -> None:
    hf = _hf_fresh(chat, split_specials=True)
    assert chat.encode(text, disallowed_special=()) == hf.encode(text).ids


@SETTINGS
@given(text=texts_strategy)
def test_hyp_roundtrip(chat: Tokenizer, text: str) -> None:
    assert chat.decode(chat.encode(text, allowed_special="all")) == text


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=texts_strategy)
def test_hyp_reference_encodes_like_fast_path(trained: Tokenizer, text: str) -> None:
    reference = ReferenceBPE(trained.merges, trained.mergeable_ranks)
    assert reference.encode(text) == trained.encode(text, disallowed_special=())


def test_ids_identical_to_hf_on_corpus_text(trained: Tokenizer, texts: list[str]) -> None:
    sample = "\n".join(texts[:20])
    hf = _hf_fresh(trained, split_specials=True)
    assert trained.encode(sample, disallowed_special=()) == hf.encode(sample).ids


def test_reference_train_learns_hf_merges(texts: list[str]) -> None:
    docs = texts[:12] + texts[-6:]
    reference = ReferenceBPE.train(docs, vocab_size=330)
    fast = Tokenizer.train(texts=docs, vocab_size=331, show_progress=False)  # +1: <|endoftext|>
    assert len(reference.merges) == 330 - 256
    assert fast.merges == reference.merges
    assert fast.mergeable_ranks == reference.vocab


@pytest.mark.slow
def test_default_vocab_on_default_corpus_identical_to_hf() -> None:
    """The real-size case: 8192 tokens trained on the whole default corpus."""
    from gptforge.corpus import iter_documents

    docs = list(iter_documents("default"))
    tok = Tokenizer.train(texts=docs, vocab_size=8192, show_progress=False)
    tok.add_special_tokens([INST, INST_END, RESP, RESP_END, PAD])
    hf_plain = _hf_fresh(tok, split_specials=True)
    assert [tok.encode(d, disallowed_special=()) for d in docs] == [
        e.ids for e in hf_plain.encode_batch(docs, add_special_tokens=False)
    ]
    hf_special = _hf_fresh(tok, split_specials=False)

    @settings(max_examples=2000, deadline=None)
    @given(text=texts_strategy)
    def check(text: str) -> None:
        assert tok.encode(text, allowed_special="all") == hf_special.encode(text).ids

    check()
