"""The pre-tokenizer choice: recorded in tokenizer.json, honoured by HF ``tokenizers``,
``transformers``, the tiktoken fast path and the GGUF export's ``tokenizer.ggml.pre``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from gptforge.tokenizer import Tokenizer
from gptforge.tokenizer.byte_level import readable_piece
from gptforge.tokenizer.errors import TokenizerError
from hypothesis import given, settings
from hypothesis import strategies as st

TURKISH = [
    "İstanbul'da yaşıyorum. Ali'nin kitabı masada. Ankara'ya gittik, İzmir'den döndük.",
    "Çağrı'nın şoförü ÖĞRETMEN'e baktı; Ayşe'yi gördü. HelloWorld 2026'da 12.5 km.",
    "don't we'll they're I'm you've 'quoted' rock'n'roll\n\n  indented\ttab",
]
SAMPLES = [*TURKISH, "你好，世界 🎉 नमस्ते ÇAĞRI İSTANBUL'DA ǅemal ﬁx"]


@pytest.fixture(scope="module", params=["gpt2", "tekken"])
def trained(request, tmp_path_factory) -> tuple[Tokenizer, Path]:
    tok = Tokenizer.train(
        texts=TURKISH * 30, vocab_size=400, show_progress=False, pre_tokenizer=request.param
    )
    path = tok.save(tmp_path_factory.mktemp(request.param) / "tok")
    return tok, path


def _pieces(tok: Tokenizer, text: str) -> list[str]:
    return [readable_piece(tok.id_to_token(i))[0] for i in tok.encode(text)]


def test_tekken_keeps_apostrophe_suffixes_whole_gpt2_splits_them():
    texts = ["İstanbul'da Ali'nin evi"] * 60
    gpt2 = Tokenizer.train(texts=texts, vocab_size=300, show_progress=False)
    tekken = Tokenizer.train(
        texts=texts, vocab_size=300, show_progress=False, pre_tokenizer="tekken"
    )
    assert _pieces(tekken, "İstanbul'da Ali'nin") == ["İstanbul", "'da", " Ali", "'nin"]
    assert _pieces(gpt2, "İstanbul'da Ali'nin")[:3] == ["İstanbul", "'d", "a"]
    assert "'" in _pieces(gpt2, "Ali'nin")  # GPT-2: "'" + "nin"


def test_choice_is_recorded_and_survives_save_and_load(trained):
    tok, path = trained
    again = Tokenizer.from_dir(path)
    assert again.pre_tokenizer == tok.pre_tokenizer
    assert again.fingerprint == tok.fingerprint
    assert '"pre_tokenizer": "' + tok.pre_tokenizer in (path / "gptforge.json").read_text()


def test_the_two_choices_have_different_fingerprints():
    texts = ["a b c"] * 10
    a = Tokenizer.train(texts=texts, vocab_size=260, show_progress=False)
    b = Tokenizer.train(texts=texts, vocab_size=260, show_progress=False, pre_tokenizer="tekken")
    assert a.fingerprint != b.fingerprint


def test_unknown_pre_tokenizer_names_the_choices():
    with pytest.raises(TokenizerError, match=r"unknown pre-tokenizer 'bert'.*\['gpt2', 'tekken'\]"):
        Tokenizer.train(texts=["a"], vocab_size=260, pre_tokenizer="bert")


def test_fast_path_matches_hf_tokenizers_on_samples(trained):
    tok, _ = trained
    for text in SAMPLES:
        assert tok.encode(text) == tok.hf.encode(text).ids, text


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_hyp_fast_path_matches_hf_tokenizers(trained, text):
    tok, _ = trained
    assert tok.encode(text, disallowed_special=()) == tok.hf.encode(text).ids


def test_transformers_autotokenizer_gives_the_same_ids(trained):
    from transformers import AutoTokenizer

    tok, path = trained
    hf = AutoTokenizer.from_pretrained(str(path))
    for text in SAMPLES:
        assert hf(text)["input_ids"] == tok.encode(text), text


@pytest.fixture(scope="module")
def gguf_file(trained, tmp_path_factory) -> Path:
    from gptforge.conversion.gguf_export import export_gguf
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir

    tok, path = trained
    model = build_model(get_config("llama-debug", vocab_size=tok.n_vocab))
    root = tmp_path_factory.mktemp("gguf")
    src = save_model_dir(model, root / "model", tokenizer_dir=path)
    return export_gguf(src, root / "m.gguf", dtype="f32", modelfile=False)


def test_gguf_names_the_llama_cpp_pre_tokenizer(trained, gguf_file):
    from gguf import GGUFReader

    tok, _ = trained
    field = GGUFReader(str(gguf_file)).fields["tokenizer.ggml.pre"]
    pre = bytes(field.parts[field.data[0]]).decode()
    assert pre == {"gpt2": "gpt-2", "tekken": "tekken"}[tok.pre_tokenizer]


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
def test_llama_cpp_tokenizes_like_us(trained, gguf_file):
    from llama_cpp import Llama

    tok, _ = trained
    llm = Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    for text in SAMPLES:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text
