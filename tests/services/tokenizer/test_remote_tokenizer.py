"""RemoteTokenizer (`--tokenizer grpc://host:port`): shards made through the real tokenizer
service are identical to local ones."""

from __future__ import annotations

import pytest
from gptforge.services.tokenizer import server, servicer
from gptforge.services.tokenizer.remote import RemoteTokenizer, _split_long
from gptforge.training.prepare import prepare_data

from tests.training.helpers import corpus_texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_texts()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, texts):
    from gptforge.tokenizer import Tokenizer

    tok = Tokenizer.train(texts=texts, vocab_size=420, show_progress=False)
    return tok.save(tmp_path_factory.mktemp("remote-tok") / "tok")


@pytest.fixture(scope="module")
def service(tokenizer_dir):
    from gptforge.tokenizer import Tokenizer

    # Small limits force the client to split batches and long texts.
    limits = servicer.TokenizerLimits(max_batch_size=7, max_text_bytes=300)
    bg = server.serve_in_background(Tokenizer.from_dir(tokenizer_dir), limits=limits)
    try:
        yield f"grpc://{bg.address}"
    finally:
        bg.stop()


def test_grpc_tokenizer_gives_identical_shards(tmp_path, service, tokenizer_dir, texts):
    docs = [*texts[:60], "special <|endoftext|> text stays text"]
    local = prepare_data(docs, tokenizer_dir, tmp_path / "local", block_tokens=128, progress=False)
    remote_tok = RemoteTokenizer(service)
    remote = prepare_data(docs, remote_tok, tmp_path / "remote", block_tokens=128, progress=False)
    remote_tok.close()
    assert local["tokenizer_fingerprint"] == remote["tokenizer_fingerprint"]
    assert local["splits"] == remote["splits"]
    for split in ("train", "val"):
        for shard in local["splits"][split]["shards"]:
            name = shard["file"]
            assert (tmp_path / "local" / name).read_bytes() == (
                tmp_path / "remote" / name
            ).read_bytes()


def test_remote_reports_vocab_and_splits_long_texts(service, tokenizer_dir, texts):
    from gptforge.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    remote = RemoteTokenizer(service)
    assert (remote.n_vocab, remote.eot_token, remote.fingerprint) == (
        tok.n_vocab,
        tok.eot_token,
        tok.fingerprint,
    )
    long_text = "\n".join(texts[:5])  # > 300 bytes: sent in pieces, joined back
    assert len(long_text.encode()) > 300
    assert remote.encode(long_text) == tok.encode(long_text)
    remote.close()


def test_split_long_cuts_between_words_only():
    text = "alpha\nbeta gamma\ndelta\n\nepsilon " * 20
    parts = _split_long(text, 40)
    assert "".join(parts) == text
    assert all(len(p.encode()) <= 40 for p in parts)


def test_unreachable_service_names_the_fix():
    with pytest.raises(ConnectionError, match="gptforge serve tokenizer"):
        RemoteTokenizer("grpc://127.0.0.1:1", timeout=2)
    with pytest.raises(ValueError, match="grpc://host:port"):
        RemoteTokenizer("grpc://nohostport")
