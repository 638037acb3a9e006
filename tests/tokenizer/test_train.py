"""Training byte-level BPE from corpus sources."""

from __future__ import annotations

import json

import pytest
from gptforge.corpus import CorpusError
from gptforge.tokenizer import EOT, INST, Tokenizer, TokenizerError


def test_training_is_deterministic(texts: list[str]) -> None:
    a = Tokenizer.train(texts=texts, vocab_size=500, show_progress=False)
    b = Tokenizer.train(texts=list(texts), vocab_size=500, show_progress=False)
    assert a.fingerprint == b.fingerprint
    c = Tokenizer.train(texts=texts[::-1], vocab_size=500, show_progress=False)
    assert c.fingerprint == a.fingerprint  # document order does not matter, only counts


def test_train_from_jsonl_source_with_field(texts: list[str], tmp_path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    from_file = Tokenizer.train(path, field="body", vocab_size=400, show_progress=False)
    from_texts = Tokenizer.train(texts=texts, vocab_size=400, show_progress=False)
    assert from_file.fingerprint == from_texts.fingerprint
    with pytest.raises(CorpusError, match="has no field 'text'.*\\['body'\\]"):
        Tokenizer.train(path, vocab_size=400, show_progress=False)


def test_vocab_size_and_specials_layout(texts: list[str]) -> None:
    tok = Tokenizer.train(
        texts=texts, vocab_size=400, special_tokens=[EOT, INST], show_progress=False
    )
    assert tok.n_vocab == 400
    assert tok.special_tokens == {EOT: 398, INST: 399}
    assert len(tok.merges) == 400 - 256 - 2


def test_small_corpus_stops_early_at_min_frequency() -> None:
    tok = Tokenizer.train(
        texts=["abab abab"], vocab_size=1000, min_frequency=2, show_progress=False
    )
    assert 256 < tok.n_vocab < 300
    assert tok.decode(tok.encode("abab abab")) == "abab abab"


@pytest.mark.parametrize("vocab_size", [0, 256, 100.5])
def test_vocab_size_too_small_is_refused(vocab_size) -> None:
    with pytest.raises(TokenizerError, match=r"vocab_size=.* pass vocab_size >= 257"):
        Tokenizer.train(texts=["x"], vocab_size=vocab_size, show_progress=False)


def test_bad_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="exactly one of source= .* and texts="):
        Tokenizer.train(vocab_size=300)
    with pytest.raises(TokenizerError, match="min_frequency=0"):
        Tokenizer.train(texts=["x"], vocab_size=300, min_frequency=0)
    with pytest.raises(TokenizerError, match="prefix of special token"):
        Tokenizer.train(texts=["x"], vocab_size=300, special_tokens=["<a>", "<a>b"])
    with pytest.raises(CorpusError, match="does not exist"):
        Tokenizer.train(tmp_path / "nope.txt", vocab_size=300, show_progress=False)
    with pytest.raises(TokenizerError, match="texts is empty"):
        Tokenizer.train(texts=[], vocab_size=300, show_progress=False)
    with pytest.raises(TokenizerError, match="texts holds a int"):
        Tokenizer.train(texts=["ok", 3], vocab_size=300, show_progress=False)  # type: ignore[list-item]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="empty.txt'? is empty"):
        Tokenizer.train(tmp_path / "empty.txt", vocab_size=300, show_progress=False)
