"""GPT-2 encoding from offline files, checked against tiktoken's own GPT-2 file reader."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import tiktoken
from gptforge.tokenizer import EOT, Tokenizer, TokenizerError
from gptforge.tokenizer import gpt2 as gpt2_module
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

SAMPLE = "Hello world! It's a test of GPT-2 files: 123 + 456 = 579.\n\n  Ünïcödé 🙂 end"


@pytest.fixture()
def offline(tmp_path, monkeypatch) -> Path:
    """No tiktoken cache, no HF cache: only what the test writes exists."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    return tmp_path


@pytest.fixture()
def gpt2_dir(offline: Path, gpt2_source: Path) -> Path:
    """A private copy of the small GPT-2 files (tests may edit it)."""
    return Path(shutil.copytree(gpt2_source, offline / "gpt2-small"))


def _tiktoken_reference(directory: Path, monkeypatch) -> tiktoken.Encoding:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(directory / "vocab.bpe"),
        encoder_json_file=str(directory / "encoder.json"),
    )
    from tiktoken_ext.openai_public import r50k_pat_str

    return tiktoken.Encoding(
        "gpt2-small", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)}
    )


def test_gpt2_files_encode_like_tiktoken(gpt2_dir: Path, monkeypatch) -> None:
    tok = Tokenizer.gpt2(gpt2_dir)
    enc = _tiktoken_reference(gpt2_dir, monkeypatch)
    assert tok.n_vocab == enc.n_vocab == 256 + 60 + 1
    assert tok.eot_token == enc.eot_token
    assert tok.mergeable_ranks == enc._mergeable_ranks
    assert tok.encode(SAMPLE) == enc.encode(SAMPLE)
    assert tok.encode(SAMPLE + EOT, allowed_special="all") == enc.encode(
        SAMPLE + EOT, allowed_special="all"
    )
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.name == "gpt2"


def test_gpt2_hf_file_names_and_save_roundtrip(offline: Path, gpt2_dir: Path) -> None:
    hf_names = offline / "hf-names"
    hf_names.mkdir()
    (hf_names / "vocab.json").write_bytes((gpt2_dir / "encoder.json").read_bytes())
    (hf_names / "merges.txt").write_bytes((gpt2_dir / "vocab.bpe").read_bytes())
    tok = Tokenizer.gpt2(hf_names)
    assert tok.fingerprint == Tokenizer.gpt2(gpt2_dir).fingerprint
    loaded = Tokenizer.from_dir(tok.save(offline / "saved"))
    assert loaded.name == "gpt2"
    assert loaded.fingerprint == tok.fingerprint
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)


def test_gpt2_found_in_tiktoken_cache(offline: Path, gpt2_dir: Path, monkeypatch) -> None:
    cache = offline / "tiktoken-cache"
    cache.mkdir()
    files = {}
    for name, (url, _) in gpt2_module.TIKTOKEN_FILES.items():
        data = (gpt2_dir / name).read_bytes()
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
        files[name] = (url, hashlib.sha256(data).hexdigest())
    with pytest.raises(TokenizerError):  # the hash is not the real GPT-2's: not accepted
        Tokenizer.gpt2()
    monkeypatch.setattr(gpt2_module, "TIKTOKEN_FILES", files)
    assert Tokenizer.gpt2().fingerprint == Tokenizer.gpt2(gpt2_dir).fingerprint


def test_gpt2_found_in_hf_hub_cache(offline: Path, gpt2_dir: Path) -> None:
    snapshot = offline / "hf-hub" / "models--openai-community--gpt2" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "vocab.json").write_bytes((gpt2_dir / "encoder.json").read_bytes())
    (snapshot / "merges.txt").write_bytes((gpt2_dir / "vocab.bpe").read_bytes())
    assert Tokenizer.gpt2().fingerprint == Tokenizer.gpt2(gpt2_dir).fingerprint


def test_gpt2_missing_files_error_says_how_to_provide_them(offline: Path) -> None:
    with pytest.raises(
        TokenizerError, match="never downloads.*encoder.json \\+ vocab.bpe.*TIKTOKEN_CACHE_DIR"
    ):
        Tokenizer.gpt2()
    with pytest.raises(TokenizerError, match="does not hold GPT-2's tokenizer files"):
        Tokenizer.gpt2(offline)


def test_gpt2_mismatched_files_are_refused(gpt2_dir: Path) -> None:
    with (gpt2_dir / "vocab.bpe").open("a") as f:
        f.write("zz qq\n")
    with pytest.raises(TokenizerError, match="line 62 .*'zz qq'.*do not belong together"):
        Tokenizer.gpt2(gpt2_dir)


def _real_gpt2_available() -> bool:
    try:
        gpt2_module.find_gpt2_files()
    except TokenizerError:
        return False
    return True


@pytest.mark.skipif(not _real_gpt2_available(), reason="GPT-2's files are not cached offline")
def test_against_tiktoken_gpt2() -> None:
    tok = Tokenizer.gpt2()
    enc = tiktoken.get_encoding("gpt2")
    assert tok.n_vocab == enc.n_vocab == 50257
    assert tok.eot_token == enc.eot_token == 50256
    text = SAMPLE * 3 + " the cat sat on the mat, 東京"
    assert tok.encode(text) == enc.encode(text)
