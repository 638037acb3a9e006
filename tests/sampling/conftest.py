"""Fixtures of the sampling tests: a tiny byte-level BPE with multilingual merges and the
``debug`` GPT sized to it. Everything is built here; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello again!",
    "Çağrı İstanbul'da ışıklı bir gün geçirdi; şoför ağır ağır gitti.",
    "你好，世界。今天天气很好，我们去公园散步吧。东京和北京都很大。",
    "Party time 🎉🎉 with friends 😀👍🏽 and family 👨‍👩‍👧 ❤️ 🚀",
]


@pytest.fixture(scope="session")
def tokenizer():
    from gptforge.tokenizer import Tokenizer

    return Tokenizer.train(texts=TEXTS * 20, vocab_size=420, show_progress=False)


@pytest.fixture(scope="session")
def debug_model(tokenizer):
    from gptforge.modeling import build_model, get_config

    torch.manual_seed(1234)
    return build_model(get_config("debug", vocab_size=tokenizer.n_vocab)).eval()


@pytest.fixture
def eos_bias(debug_model, tokenizer):
    """Make the EOS logit huge (context manager-free: removed after the test)."""
    handles = []

    def add(bias: float = 100.0, token: int | None = None):
        tid = tokenizer.eot_token if token is None else token

        def hook(module, inputs, output):
            output = output.clone()
            output[..., tid] += bias
            return output

        handles.append(debug_model.lm_head.register_forward_hook(hook))

    yield add
    for h in handles:
        h.remove()
