"""Subprocess helpers of the training tests."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

from gptforge.training.tasks import WORDS

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """Environment for child Pythons: one thread, and byte-code cached outside the venv.

    With ``PYTHONDONTWRITEBYTECODE`` every child recompiles torch's Python sources (seconds of
    CPU per process); a private ``PYTHONPYCACHEPREFIX`` keeps that cost to the first child.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "gptforge-test-pycache")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


PYTHON = sys.executable


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


class StopRun(Exception):
    """Raised by :func:`stop_at` to end a run mid-way (its last checkpoint stays)."""


def stop_at(step: int):
    """A training callback that stops the run when it reaches ``step``."""

    def callback(at: int, model, row) -> None:
        if at == step:
            raise StopRun

    return callback
