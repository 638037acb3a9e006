"""``generate`` and ``chat`` past the model's context: a sliding window with a notice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gptforge.cli.main import app
from gptforge.modeling import build_model, get_config
from gptforge.modeling.io import save_model_dir
from gptforge.tokenizer import Tokenizer
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long")
    tok = Tokenizer.train(texts=["hello world, the blue moon"] * 50, vocab_size=280)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = build_model(get_config("llama-debug", vocab_size=tok.n_vocab, block_size=32))
    return save_model_dir(model, root / "model", tokenizer_dir=root / "tok")


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_generate_past_the_context_slides_with_a_notice(model_dir):
    out = _run("generate", "--ckpt", str(model_dir), "--prompt", "hello",
               "--max-new-tokens", "100", "--seed", "1")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "exceed the context of 32; sliding the window 8 tokens at a time" in out.stderr
    assert "[100 tokens, finish: length]" in out.stderr or "finish: eos" in out.stderr


def test_generate_slide_zero_refuses_in_one_line_naming_the_fix(model_dir):
    out = _run("generate", "--ckpt", str(model_dir), "--prompt", "hello",
               "--max-new-tokens", "100", "--slide-tokens", "0")  # fmt: skip
    assert out.exit_code == 1
    assert out.stderr.strip().count("\n") == 0
    assert "exceed the context of 32" in out.stderr and "--slide-tokens N" in out.stderr


def test_generate_within_the_context_prints_no_notice(model_dir):
    out = _run("generate", "--ckpt", str(model_dir), "--prompt", "hello",
               "--max-new-tokens", "4", "--seed", "1")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "sliding" not in out.stderr


def test_chat_past_the_context_slides_with_a_notice(model_dir):
    out = _run("chat", "--ckpt", str(model_dir), "--template", "alpaca",
               "--prompt", "Say hello.", "--max-new-tokens", "40")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "sliding the window 8 tokens at a time" in out.stderr
