"""Interpreters of the optional benchmark peers, which live in their own environments.

llama-cpp-python compiles llama.cpp and litgpt pulls in lightning, so neither is a project
dependency: ``make llama-cpp`` / ``make litgpt`` build them under ``~/.cache/gptforge``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path


@functools.cache
def peer_python(module: str, env_var: str, venv: str) -> str | None:
    """The first interpreter that imports ``module``: ``$env_var``, this one, or
    ``~/.cache/gptforge/<venv>``; None when none does (checked once per process)."""
    candidates = [os.environ.get(env_var), sys.executable,
                  str(Path.home() / ".cache" / "gptforge" / venv / "bin" / "python")]  # fmt: skip
    for py in filter(None, candidates):
        if (
            Path(py).exists()
            and subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode == 0
        ):
            return py
    return None
