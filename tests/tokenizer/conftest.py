"""Fixtures of the tokenizer tests: small tokenizers trained in a fraction of a second."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from gptforge.corpus import iter_documents
from gptforge.tokenizer import CHAT_TOKENS, EOT, Tokenizer
from gptforge.tokenizer.byte_level import byte_to_char, bytes_to_token_str
from gptforge.tokenizer.reference import ReferenceBPE

# Multilingual lines so the tiny vocabulary also learns merges inside multi-byte characters.
MULTILINGUAL = [
    "Bugün İstanbul'da hava ılık; ıslak sokaklarda İnce bir yağmur var.",
    "東京の天気は晴れです。日本語のテキストも少し必要です。東京の天気は雨です。",
    "Привет, мир! Как дела? Привет ещё раз, мир.",
    "Emoji runs: 🙂🙂 🚀🚀🚀 👩‍💻 and flags 🇹🇷🇯🇵 repeat 🙂🙂 🚀🚀🚀.",
    "Numbers 12345 67890 3.14159 and tabs\t\tand   spaces    here\n\n\nnewlines.",
    "don't won't it's we're they've I'm you'll he'd DON'T IT'S",
]


def small_texts(n_docs: int = 60) -> list[str]:
    """The first ``n_docs`` default-corpus documents plus the multilingual lines, twice."""
    docs = list(itertools.islice(iter_documents("default"), n_docs))
    return docs + MULTILINGUAL * 2


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return small_texts()


@pytest.fixture(scope="session")
def trained(texts: list[str]) -> Tokenizer:
    """A 700-token byte-level BPE; treat as read-only (copy via save/from_dir to mutate)."""
    return Tokenizer.train(texts=texts, vocab_size=700, show_progress=False)


@pytest.fixture(scope="session")
def chat(texts: list[str]) -> Tokenizer:
    """Like ``trained`` plus the chat special tokens; read-only."""
    tok = Tokenizer.train(texts=texts, vocab_size=700, show_progress=False)
    tok.add_special_tokens(list(CHAT_TOKENS))
    return tok


def write_gpt2_files(directory: Path, texts: list[str], n_merges: int = 60) -> Path:
    """Write a small vocabulary in GPT-2's file format: encoder.json + vocab.bpe.

    Like OpenAI's files: the 256 bytes first (printable ones in byte order, then the rest),
    then one token per merge, then <|endoftext|>.
    """
    merges = ReferenceBPE.train(texts, vocab_size=256 + n_merges).merges
    encoder = {char: i for i, char in enumerate(byte_to_char().values())}
    for a, b in merges:
        assert bytes_to_token_str(a + b) not in encoder
        encoder[bytes_to_token_str(a + b)] = len(encoder)
    encoder[EOT] = len(encoder)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False))
    lines = ["#version: 0.2"] + [
        f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in merges
    ]
    (directory / "vocab.bpe").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def gpt2_source(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    return write_gpt2_files(tmp_path_factory.mktemp("gpt2") / "gpt2-small", texts[:10])
