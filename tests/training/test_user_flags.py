"""The model from flags or a config file, --init-from, --keep best, resume diffs, data limits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from gptforge.sampling.templates import SPECIAL_TOKENS
from gptforge.training.config import FinetuneConfig, ModelShape
from gptforge.training.finetune import fit_examples
from gptforge.training.instruct import truncate_example
from gptforge.training.metrics import read_metrics
from gptforge.training.pretrain import load_run_config, pretrain
from gptforge.training.runner import build_config
from gptforge.training.shape import model_config

from tests.training.helpers import debug_config


def test_shape_flags_override_the_preset_per_family():
    cfg = model_config(ModelShape(preset="debug", n_layer=3, n_embd=96, context_length=48))
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size) == (3, 96, 48)
    llama = model_config(ModelShape(preset="llama-debug", ffn_hidden=80, n_kv_head=1, bias=True))
    assert (llama.ffn_hidden, llama.n_kv_head, llama.attention_bias) == (80, 1, True)
    with pytest.raises(ValueError, match="--n-kv-head is not a setting of gpt models"):
        model_config(ModelShape(preset="debug", n_kv_head=2))


def test_book_gpt_config_124m_has_the_books_parameter_count(tmp_path):
    from gptforge.modeling.introspect import count_params

    book = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
            "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}  # fmt: skip
    path = tmp_path / "gpt_config_124m.json"
    path.write_text(json.dumps(book))
    from_file = model_config(ModelShape(config=str(path)))
    flags = ModelShape(preset="gpt2", dropout=0.1, qkv_bias=False, tie_weights=False)
    assert from_file == model_config(flags)
    assert count_params(from_file) == 163_009_536  # the book's "163,009,536"


def test_bad_config_file_is_named(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"n_layer": 2')
    with pytest.raises(ValueError, match="cfg.json.*not valid JSON"):
        model_config(ModelShape(config=str(path)))


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("src")
    cfg = debug_config(data_dir, out, n_layer=1, max_steps=4, eval_interval=2)
    return cfg, pretrain(cfg)


def test_overrides_reach_the_trained_model(source):
    cfg, _ = source
    saved = json.loads(Path(cfg.out, "config.json").read_text())
    assert saved["n_layer"] == 1 and saved["block_size"] == 32


def test_init_from_starts_at_step_zero_with_the_source_weights(tmp_path, source, data_dir):
    src_cfg, src = source
    cfg = debug_config(data_dir, tmp_path / "next", init_from=src_cfg.out, epochs=0.05, keep="best")
    result = pretrain(cfg)
    rows = read_metrics(tmp_path / "next" / "metrics.jsonl")
    evals = [r for r in rows if r["kind"] == "eval"]
    source_last = [r for r in read_metrics(f"{src_cfg.out}/metrics.jsonl") if r["kind"] == "eval"]
    # Step 0 of the new run evaluates exactly the source's final weights.
    assert evals[0]["step"] == 0
    assert evals[0]["val_loss"] == pytest.approx(source_last[-1]["val_loss"], rel=1e-5)
    assert result.step == math.ceil(0.05 * _windows(cfg) / 4)  # batch 4, no accumulation
    from gptforge.modeling.io import load_model_dir

    best = load_model_dir(tmp_path / "next" / "checkpoints" / "best")
    top = load_model_dir(tmp_path / "next")
    for a, b in zip(best.state_dict().values(), top.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _windows(cfg):
    from gptforge.training.data import TokenShards, TokenWindows

    return len(TokenWindows(TokenShards(cfg.data, "train"), 32, None))


def test_resume_names_changed_settings_and_wants_override(source):
    cfg, _ = source
    with pytest.raises(ValueError, match=r"--lr 0.003 -> 0.01.*--override"):
        build_config("pretrain", {"lr": 0.01}, str(cfg.out))
    assert build_config("pretrain", {"lr": 0.01}, str(cfg.out), override=True).lr == 0.01
    with pytest.raises(ValueError, match=r"cannot change the model.*--preset 'debug' -> 'tiny'"):
        build_config("pretrain", {"preset": "tiny"}, str(cfg.out), override=True)
    with pytest.raises(ValueError, match=r"--context-length 32 -> 64"):
        build_config("pretrain", {"context_length": 64}, str(cfg.out), override=True)
    assert build_config("pretrain", {"lr": 0.003}, str(cfg.out)).lr == 0.003  # unchanged: fine
    assert build_config("pretrain", {"max_steps": 9}, str(cfg.out)).max_steps == 9  # longer
    with pytest.raises(ValueError, match=r"not above the run's step 4"):
        build_config("pretrain", {"max_steps": 3}, str(cfg.out))


def test_damaged_run_files_are_named(tmp_path):
    (tmp_path / "train_config.json").write_text('{"kind": "pretrain", "con')
    with pytest.raises(ValueError, match="train_config.json' is unreadable"):
        load_run_config(tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match="metrics.jsonl' is not UTF-8"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_truncate_keeps_the_response_end():
    p, r = truncate_example(list(range(20)), [100, 101, 102, 999], 10, min_prompt=4)
    assert len(p) + len(r) == 10 and r == [100, 101, 102, 999] and p[:3] == [0, 1, 2]
    p, r = truncate_example([1, 2, 3], list(range(100, 120)) + [999], 10, min_prompt=3)
    assert p == [1, 2, 3] and len(r) == 7 and r[-1] == 999


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from gptforge.tokenizer import Tokenizer

    t = Tokenizer.from_dir(tokenizer_dir)
    t.add_special_tokens(SPECIAL_TOKENS)
    return t


def test_long_record_names_file_and_line_and_the_limit(tok):
    items = [({"instruction": "hi", "output": "ok"}, "d.jsonl:1"),
             ({"instruction": "apple river " * 40, "output": "ok"}, "d.jsonl:7")]  # fmt: skip
    cfg = FinetuneConfig(from_run="x", max_length=200)
    with pytest.raises(
        ValueError, match=r"d.jsonl:7 \(train split\).*context \(32 tokens \+ 1\) is the limit"
    ):
        fit_examples(items, "train", cfg, tok, block=32)
    with pytest.raises(ValueError, match=r"d.jsonl:7.*raise --max-length \(up to 33\)"):
        fit_examples(items, "train", FinetuneConfig(from_run="x", max_length=20), tok, block=32)
    kept = fit_examples(items, "train", FinetuneConfig(from_run="x", skip_long=True), tok, 32)
    assert len(kept) == 1
    cut = fit_examples(items, "train", FinetuneConfig(from_run="x", truncate=True), tok, 32)
    assert len(cut) == 2 and sum(map(len, cut[1])) == 33
    assert cut[1][1][-1] == tok.special_tokens["</RESP>"]


def test_resume_cannot_change_the_lora_adapters():
    from gptforge.training.runner import check_resume_changes

    for field, change in (("lora_rank", (4, 8)), ("lora_targets", ("attn,mlp,head", "attn"))):
        with pytest.raises(ValueError, match="cannot change the model"):
            check_resume_changes({field: change}, "runs/sft", 3, override=True)
