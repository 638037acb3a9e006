"""Fixtures of the training tests: a tiny tokenizer and prepared data, built once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from gptforge.training.tasks import WORDS


def corpus_texts(n: int = 240, seed: int = 0) -> list[str]:
    """Small documents with the task words, digits and some punctuation (deterministic)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
        docs.append(
            f"Note {i}: {words}. {i % 10} + {i % 7} = {i % 10 + i % 7}.\n{words.upper()[:40]}"
        )
    return docs


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return corpus_texts()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    from gptforge.tokenizer import Tokenizer

    tok = Tokenizer.train(texts=texts, vocab_size=420, show_progress=False)
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tok.save(out)
    return out


@pytest.fixture(scope="session")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory, texts: list[str], tokenizer_dir: Path
) -> Path:
    from gptforge.training.prepare import prepare_data

    out = tmp_path_factory.mktemp("data")
    prepare_data(texts, tokenizer_dir, out, block_tokens=256, progress=False)
    return out


def debug_config(data_dir: Path, out: Path, **overrides):
    """A few-step debug-preset TrainConfig (context 32, batch 4, no progress bar)."""
    from gptforge.training.config import TrainConfig

    values = dict(
        preset="debug",
        data=str(data_dir),
        out=str(out),
        max_steps=6,
        batch_size=4,
        context_length=32,
        warmup_steps=2,
        eval_interval=3,
        eval_batches=2,
        checkpoint_interval=3,
        log_interval=1,
        progress=False,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads spin and slow every test."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
