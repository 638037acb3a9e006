"""Behaviour of the Tokenizer class: tiktoken's API grid, special tokens, errors."""

from __future__ import annotations

import pytest
import tiktoken
from gptforge.tokenizer import (
    CHAT_TOKENS,
    EOT,
    INST,
    PAD,
    SpecialTokenError,
    Tokenizer,
    TokenizerError,
)


def _copy(tok: Tokenizer, tmp_path) -> Tokenizer:
    return Tokenizer.from_dir(tok.save(tmp_path / "copy"))


def test_vocab_layout(trained: Tokenizer) -> None:
    assert trained.n_vocab == 700
    assert trained.eot_token == 699
    assert trained.special_tokens == {EOT: 699}
    assert len(trained.mergeable_ranks) == 699
    assert sorted(trained.mergeable_ranks.values()) == list(range(699))
    assert all(bytes([b]) in trained.mergeable_ranks for b in range(256))


def test_encode_decode_roundtrip(trained: Tokenizer) -> None:
    text = "The quick brown fox — déjà vu, 東京 🙂\n\tend"
    ids = trained.encode(text)
    assert all(isinstance(i, int) and 0 <= i < trained.n_vocab for i in ids)
    assert trained.decode(ids) == text
    assert trained.decode_bytes(ids) == text.encode("utf-8")
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned and used


def test_encode_matches_raw_tiktoken_encoding(trained: Tokenizer) -> None:
    enc = tiktoken.Encoding(
        "check",
        pat_str=trained.encoding._pat_str,
        mergeable_ranks=trained.mergeable_ranks,
        special_tokens=trained.special_tokens,
    )
    text = "Return the number of items; it's 42 (forty-two)."
    assert trained.encode(text) == enc.encode(text)


def test_special_token_text_refused_naming_the_argument(trained: Tokenizer) -> None:
    with pytest.raises(SpecialTokenError, match=r"allowed_special=\{'<\|endoftext\|>'\}") as e:
        trained.encode(f"hello {EOT} world")
    assert "at character 6" in str(e.value)
    assert "disallowed_special=()" in str(e.value)


def test_special_token_allowed_is_one_id(trained: Tokenizer) -> None:
    ids = trained.encode(f"a{EOT}b", allowed_special={EOT})
    assert trained.eot_token in ids
    assert ids == trained.encode(f"a{EOT}b", allowed_special="all")
    assert trained.decode(ids) == f"a{EOT}b"


def test_special_token_text_as_ordinary_text(trained: Tokenizer) -> None:
    ids = trained.encode(EOT, disallowed_special=())
    assert trained.eot_token not in ids
    assert len(ids) > 1
    assert trained.decode(ids) == EOT
    assert trained.encode_ordinary(EOT) == ids


def test_unknown_special_in_argument_lists_the_valid_ones(trained: Tokenizer) -> None:
    with pytest.raises(
        TokenizerError, match=r"allowed_special names \['<nope>'\].*'<\|endoftext\|>'"
    ):
        trained.encode("x", allowed_special={"<nope>"})
    with pytest.raises(TokenizerError, match="did you mean allowed_special=\\{'<|endoftext|>'\\}"):
        trained.encode("x", allowed_special=EOT)  # a bare string is a common slip


def test_decode_out_of_range_names_id_and_vocab_size(trained: Tokenizer) -> None:
    for bad in (700, 10**9, -1):
        with pytest.raises(TokenizerError, match=rf"token id {bad} is outside.*n_vocab=700"):
            trained.decode([1, bad])


def test_token_to_id_and_back(trained: Tokenizer) -> None:
    assert trained.token_to_id(EOT) == trained.eot_token
    for token_bytes, idx in list(trained.mergeable_ranks.items())[::50]:
        assert trained.token_to_id(token_bytes) == idx
        assert trained.id_to_token(idx) == token_bytes
    assert trained.token_to_id("a") == trained.mergeable_ranks[b"a"]
    assert trained.id_to_token(trained.eot_token) == EOT.encode()
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        trained.token_to_id("surely-not-one-token")


def test_encode_batch_and_decode_batch(trained: Tokenizer) -> None:
    texts = [f"line {i}: some text é 🙂" * (i % 5 + 1) for i in range(40)]
    batch = trained.encode_batch(texts, num_threads=4)
    assert batch == [trained.encode(t) for t in texts]
    assert trained.encode_batch(texts, num_threads=1) == batch
    assert trained.decode_batch(batch) == texts
    with pytest.raises(SpecialTokenError, match="allowed_special"):
        trained.encode_batch(["ok", EOT])
    with pytest.raises(TokenizerError, match="list of strings"):
        trained.encode_batch("not a list")  # type: ignore[arg-type]


def test_add_special_tokens(trained: Tokenizer, tmp_path) -> None:
    tok = _copy(trained, tmp_path)
    before = tok.fingerprint
    ids = tok.add_special_tokens(list(CHAT_TOKENS))
    assert ids == list(range(700, 700 + len(CHAT_TOKENS)))
    assert tok.n_vocab == 700 + len(CHAT_TOKENS)
    assert tok.fingerprint != before
    assert tok.add_special_tokens([INST, EOT]) == [700, 699]  # existing ones keep their id
    text = f"{INST} hi there </INST><RESP> ok </RESP>{PAD}"
    encoded = tok.encode(text, allowed_special="all")
    assert [i for i in encoded if i >= 699] == [700, 701, 702, 703, 704]
    assert tok.decode(encoded) == text
    with pytest.raises(SpecialTokenError, match="allowed_special=\\{'<INST>'\\}"):
        tok.encode(text, allowed_special={"</INST>", "<RESP>", "</RESP>", PAD})


def test_add_special_tokens_refusals(trained: Tokenizer, tmp_path) -> None:
    tok = _copy(trained, tmp_path)
    with pytest.raises(TokenizerError, match="already an ordinary token"):
        tok.add_special_tokens(["a"])
    with pytest.raises(TokenizerError, match="is a prefix of special token"):
        tok.add_special_tokens(["<|endoftext|>x"])
    with pytest.raises(TokenizerError, match="non-empty string"):
        tok.add_special_tokens([""])
    with pytest.raises(TokenizerError, match="list of strings"):
        tok.add_special_tokens("<X>")  # type: ignore[arg-type]
    assert tok.n_vocab == 700  # nothing was added by the refused calls


def test_eot_token_missing_says_how_to_add(texts: list[str]) -> None:
    tok = Tokenizer.train(texts=texts[:5], vocab_size=260, special_tokens=[], show_progress=False)
    assert tok.special_tokens == {}
    with pytest.raises(TokenizerError, match=r"add_special_tokens\(\['<\|endoftext\|>'\]\)"):
        _ = tok.eot_token


def test_lone_surrogates_are_replaced_like_tiktoken(trained: Tokenizer) -> None:
    assert trained.decode(trained.encode("a\ud800b")) == "a\ufffdb"
