"""Fixtures of the conversion tests: tiny tokenizers and tiny random models saved as run dirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from gptforge.modeling import build_model, get_config
from gptforge.modeling.io import save_model_dir
from gptforge.tokenizer import EOT, Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Converting checkpoints between formats should never change a single logit.",
    "def hello(name):\n    return f'hello {name}!'\n",
    "Numbers 0123456789, punctuation !?;: and ünïcödé text — with emoji 🙂.",
] * 8


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-token (not a multiple of 64, so models pad) byte-level BPE with <|endoftext|>, saved as our tokenizer directory."""
    tok = Tokenizer.train(texts=TEXTS, vocab_size=300, special_tokens=[EOT], show_progress=False)
    return tok.save(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tokenizer_dir)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (biases and norms included) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def make_run_dir(
    path: Path, preset: str, tokenizer_dir: Path, seed: int = 0, **overrides: Any
) -> Path:
    """Save a random model of ``preset`` (vocab = the tokenizer's) with its tokenizer."""
    n_vocab = json.loads((tokenizer_dir / "gptforge.json").read_text())["n_vocab"]
    overrides.setdefault("vocab_size", n_vocab)
    torch.manual_seed(seed)
    model = randomize(build_model(get_config(preset, **overrides)), seed)
    return save_model_dir(model, path, tokenizer_dir=tokenizer_dir)


def write_gpt2_files(
    tokenizer_dir: Path, out: Path, names: tuple[str, str] = ("vocab.json", "merges.txt")
) -> None:
    """Write a tokenizer in GPT-2's two-file format (HF: vocab.json + merges.txt, OpenAI:
    encoder.json + vocab.bpe), the way OpenAI's release and the hub's ``gpt2`` ship it."""
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    encoder = dict(spec["model"]["vocab"])
    for t in spec["added_tokens"]:
        encoder[t["content"]] = t["id"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (out / names[0]).write_text(json.dumps(encoder))
    (out / names[1]).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def greedy(forward: Any, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy continuation with a plain full-sequence loop (no caches: the oracle)."""
    ids = prompt.clone()
    for _ in range(n):
        logits = forward(ids)  # (1, T, V)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, prompt.size(1) :].tolist()
