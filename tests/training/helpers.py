"""Subprocess helpers of the training tests."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

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
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


PYTHON = sys.executable
