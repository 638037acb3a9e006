"""Fixtures of the generation service tests: a tiny tokenizer, the ``debug`` GPT sized to it,
a model directory on disk, and servers on 127.0.0.1:<free port> with real clients."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from gptforge.api.server import BackgroundServer, ServerConfig
from gptforge.services.generation import GenerationClient, GenerationLimits, serve_in_background

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello again!",
    "Çağrı İstanbul'da ışıklı bir gün geçirdi; şoför ağır ağır gitti.",
    "你好，世界。今天天气很好，我们去公园散步吧。东京和北京都很大。",
    "Party time 🎉🎉 with friends 😀👍🏽 and family 👨‍👩‍👧 ❤️ 🚀",
]
LIMITS = GenerationLimits(max_batch_size=4, default_max_new_tokens=16)


@pytest.fixture(scope="session")
def tokenizer():
    from gptforge.tokenizer import Tokenizer

    return Tokenizer.train(texts=TEXTS * 20, vocab_size=420, show_progress=False)


def build_debug(tokenizer, seed: int = 1234):
    """The ``debug`` GPT preset with the test tokenizer's vocabulary, in eval mode."""
    from gptforge.modeling import build_model, get_config

    torch.manual_seed(seed)
    return build_model(get_config("debug", vocab_size=tokenizer.n_vocab)).eval()


@pytest.fixture(scope="session")
def model(tokenizer):
    return build_debug(tokenizer)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model, tokenizer):
    """A model directory as `gptforge train` writes it (config.json, weights, tokenizer/)."""
    from gptforge.modeling.io import save_model_dir

    root = tmp_path_factory.mktemp("gen-model")
    tokenizer.save(root / "tok")
    return save_model_dir(model, root / "run", tokenizer_dir=root / "tok")


def slow_down(model, seconds: float):
    """Make every forward of ``model`` take at least ``seconds`` (a stand-in for a big model)."""

    def hook(module, args, output):
        time.sleep(seconds)
        return output

    return model.register_forward_hook(hook)


@pytest.fixture(scope="module")
def server(model, tokenizer) -> Iterator[BackgroundServer]:
    """A GenerationService with the debug model: 4 slots, default 16 new tokens."""
    with serve_in_background(
        model, tokenizer, ServerConfig(port=0, grace_seconds=2.0), LIMITS, model_id="debug"
    ) as bg:
        yield bg


@pytest.fixture(scope="module")
def client(server) -> Iterator[GenerationClient]:
    with GenerationClient(server.address, timeout=60) as c:
        yield c
