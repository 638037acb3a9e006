"""Tokenizer directories: save/from_dir, and loading them with transformers and HF tokenizers."""

from __future__ import annotations

import json

import pytest
from gptforge.tokenizer import EOT, INST, PAD, Tokenizer, TokenizerError
from tokenizers import Tokenizer as HFTokenizer

SAMPLE = f"Hello wörld, 東京 🙂 {INST} it's 2024!{EOT}\n\n  indented{PAD}"


def test_save_writes_the_contract_files(chat: Tokenizer, tmp_path) -> None:
    out = chat.save(tmp_path / "tok")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "gptforge.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    meta = json.loads((out / "gptforge.json").read_text())
    assert meta["fingerprint"] == chat.fingerprint
    assert meta["n_vocab"] == chat.n_vocab
    assert meta["special_tokens"] == chat.special_tokens


def test_from_dir_roundtrip_same_ids_and_fingerprint(chat: Tokenizer, tmp_path) -> None:
    loaded = Tokenizer.from_dir(chat.save(tmp_path / "tok"))
    assert loaded.fingerprint == chat.fingerprint
    assert loaded.special_tokens == chat.special_tokens
    assert loaded.encode(SAMPLE, allowed_special="all") == chat.encode(
        SAMPLE, allowed_special="all"
    )
    # Saving the loaded copy again changes nothing.
    again = Tokenizer.from_dir(loaded.save(tmp_path / "tok2"))
    assert again.fingerprint == chat.fingerprint


def test_hf_tokenizers_from_file_gives_same_ids(chat: Tokenizer, tmp_path) -> None:
    out = chat.save(tmp_path / "tok")
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    assert hf.encode(SAMPLE).ids == chat.encode(SAMPLE, allowed_special="all")
    assert Tokenizer.from_file(out / "tokenizer.json").fingerprint == chat.fingerprint


def test_transformers_autotokenizer_gives_same_ids(chat: Tokenizer, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    out = chat.save(tmp_path / "tok")
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = chat.encode(SAMPLE, allowed_special="all")
    assert auto(SAMPLE, add_special_tokens=False)["input_ids"] == ids
    assert auto.decode(ids) == SAMPLE
    assert auto.eos_token_id == chat.eot_token
    assert auto.pad_token_id == chat.special_tokens[PAD]
    assert auto.convert_tokens_to_ids(INST) == chat.special_tokens[INST]


def test_fingerprint_mismatch_is_detected(trained: Tokenizer, tmp_path) -> None:
    out = trained.save(tmp_path / "tok")
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]  # an edit after saving
    (out / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(
        TokenizerError, match="does not match the fingerprint.*delete gptforge.json"
    ):
        Tokenizer.from_dir(out)
    (out / "gptforge.json").unlink()
    edited = Tokenizer.from_dir(out)  # accepted once the recorded fingerprint is gone
    assert edited.fingerprint != trained.fingerprint
    assert len(edited.merges) == len(trained.merges) - 1


def test_from_dir_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(
        TokenizerError, match="does not exist; create one with `gptforge tokenizer train"
    ):
        Tokenizer.from_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="could not be parsed"):
        Tokenizer.from_dir(tmp_path / "bad")


def test_non_byte_level_tokenizer_is_refused(tmp_path) -> None:
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(TokenizerError, match="pre_tokenizer is .*Whitespace.*expected ByteLevel"):
        Tokenizer(hf)


def test_save_onto_a_file_is_refused(trained: Tokenizer, tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(TokenizerError, match="it is a file, not a directory"):
        trained.save(tmp_path / "f")
