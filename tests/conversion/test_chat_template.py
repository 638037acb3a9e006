"""One chat template for every format: transformers' ids equal ours; exports carry it only when
the run was fine-tuned with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gptforge.conversion import export_hf
from gptforge.conversion.gguf_export import modelfile_text
from gptforge.tokenizer import CHAT_TOKENS, Tokenizer
from gptforge.tokenizer.chat_template import CHAT_FORMATS, encode_conversation
from gptforge.training.instruct import encode_record

from .conftest import make_run_dir

CONVERSATION = [
    {"role": "user", "content": "Repeat the words.\nblue moon"},
    {"role": "assistant", "content": "blue moon"},
    {"role": "user", "content": "Now say it twice, please: fox!"},
    {"role": "assistant", "content": " fox! fox!"},
    {"role": "user", "content": "And the numbers 0123?"},
]


@pytest.fixture
def chat_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> Path:
    tok = Tokenizer.from_dir(tokenizer_dir)
    tok.add_special_tokens(list(CHAT_TOKENS))
    return tok.save(tmp_path / "chat-tok")


@pytest.mark.parametrize("template", sorted(CHAT_FORMATS))
def test_single_turn_ids_equal_the_fine_tunes(chat_tokenizer: Path, template: str) -> None:
    tok = Tokenizer.from_dir(chat_tokenizer)
    record = {"instruction": "Repeat the words: blue moon", "output": "blue moon"}
    prompt, response = encode_record(record, template, tok)
    user = [{"role": "user", "content": record["instruction"]}]
    assert encode_conversation(tok, user, template) == prompt
    turn = [*user, {"role": "assistant", "content": record["output"]}]
    assert (
        encode_conversation(tok, turn, template, add_generation_prompt=False) == prompt + response
    )


@pytest.mark.parametrize("template", sorted(CHAT_FORMATS))
def test_transformers_apply_chat_template_equals_ours(
    tmp_path: Path, chat_tokenizer: Path, template: str
) -> None:
    transformers = pytest.importorskip("transformers")
    run = make_run_dir(tmp_path / "run", "debug", chat_tokenizer)
    (run / "chat.json").write_text(json.dumps({"template": template}))
    export_hf(run, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_FORMATS[template].jinja()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = Tokenizer.from_dir(chat_tokenizer)
    for messages, gen in ((CONVERSATION, True), (CONVERSATION[:4], False)):
        got = hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
        got = list(got["input_ids"] if hasattr(got, "keys") else got)  # BatchEncoding in v5
        want = encode_conversation(ours, messages, template, add_generation_prompt=gen)
        assert got == want
        rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert rendered == CHAT_FORMATS[template].render(messages, gen)


def test_hf_export_of_a_pretrained_run_has_no_chat_template(
    tmp_path: Path, chat_tokenizer: Path
) -> None:
    run = make_run_dir(tmp_path / "run", "debug", chat_tokenizer)
    export_hf(run, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert "chat_template" not in config


def test_modelfile_stops_and_template_come_from_the_format() -> None:
    alpaca = modelfile_text("m.gguf", "alpaca", "<|endoftext|>")
    assert CHAT_FORMATS["alpaca"].ollama() in alpaca
    assert alpaca.count("PARAMETER stop") == 1 and 'PARAMETER stop "<|endoftext|>"' in alpaca
    inst = modelfile_text("m.gguf", "inst", "<|endoftext|>")
    assert '{{- if eq .Role "user" }}<INST>{{ .Content }}</INST>' in inst
    assert inst.rstrip().splitlines()[2].endswith('{{- end }}<RESP>"""')
    plain = modelfile_text("m.gguf", None, None)
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain and "stop" not in plain


def test_bad_message_is_one_clear_line(chat_tokenizer: Path) -> None:
    tok = Tokenizer.from_dir(chat_tokenizer)
    with pytest.raises(ValueError, match=r"message 0 must be .*'system'"):
        encode_conversation(tok, [{"role": "system", "content": "x"}], "inst")
    with pytest.raises(ValueError, match=r"unknown chat template 'chatml'.*\['alpaca', 'inst'\]"):
        encode_conversation(tok, CONVERSATION, "chatml")


def test_a_fine_tunes_checkpoint_keeps_its_template(tmp_path: Path) -> None:
    """A checkpoint has no chat.json; its manifest's config names the template."""
    import json

    from gptforge.conversion.tokenizer_files import chat_template_of
    from gptforge.tokenizer.chat_template import CHAT_FORMATS

    step = tmp_path / "checkpoints" / "step_000010"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"config": {"template": "alpaca"}}))
    assert chat_template_of(step) == ("alpaca", CHAT_FORMATS["alpaca"].jinja())
    (step / "manifest.json").write_text(json.dumps({"config": {"preset": "debug"}}))
    assert chat_template_of(step) == (None, None)  # a pre-training checkpoint
