"""The embedded default corpus."""

from __future__ import annotations

import json

import pytest
from gptforge.corpus import (
    DEFAULT_CORPUS,
    build_default_documents,
    default_corpus_path,
    iter_documents,
)


def test_default_corpus_is_large_real_text() -> None:
    docs = list(iter_documents(DEFAULT_CORPUS))
    size = sum(len(d.encode("utf-8")) for d in docs)
    assert size >= 400_000
    assert len(docs) > 100
    text = " ".join(docs[:50])
    # Natural language, not code or binary: common English words dominate.
    words = text.split()
    common = sum(w.lower() in {"the", "a", "of", "is", "to", "and", "in"} for w in words)
    assert common / len(words) > 0.05


def test_default_corpus_is_cached_and_read_back(monkeypatch, tmp_path) -> None:
    shared = default_corpus_path()  # built earlier, likely by another process
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path))
    path = default_corpus_path()
    assert path.parent == tmp_path / "corpus"
    assert path.suffix == ".jsonl"
    first_line = json.loads(path.open(encoding="utf-8").readline())
    assert set(first_line) == {"text"}
    mtime = path.stat().st_mtime_ns
    assert default_corpus_path() == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind
    assert list(iter_documents(DEFAULT_CORPUS)) == [
        json.loads(line)["text"] for line in path.open()
    ]
    assert path.read_bytes() == shared.read_bytes()  # a fresh build is byte-identical


@pytest.mark.slow
def test_default_corpus_build_is_deterministic() -> None:
    first = list(build_default_documents())
    assert first == list(build_default_documents())
    assert first == list(iter_documents(default_corpus_path()))
