"""Fixtures of the training tests: a tiny tokenizer and prepared data, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import corpus_texts


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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads spin and slow every test."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
