"""llama.cpp runs our GGUF files: logits and greedy continuation match ours (slow).

llama-cpp-python is built from PyPI (it compiles llama.cpp: about 5 minutes on 2 cores) into its
own virtual environment under ``~/.cache/gptforge/llama-cpp-venv``, never into the project's
``.venv``; set ``GPTFORGE_LLAMA_CPP_PYTHON`` to an interpreter that already has ``llama_cpp`` to
skip the build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gptforge.conversion.gguf_export import export_gguf
from gptforge.modeling.io import load_model_dir

from .conftest import greedy, make_run_dir

VENV = Path.home() / ".cache" / "gptforge" / "llama-cpp-venv"
# Runs inside the llama-cpp-python environment: logits of every prompt position + greedy tokens.
CHILD = """
import json, sys
import numpy as np
from llama_cpp import Llama
path, prompt, n_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2, seed=0)
llm.eval(prompt)
logits = np.asarray(llm.scores[: len(prompt)], dtype=np.float64).tolist()
out = []
for _ in range(n_new):
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out.append(nxt)
    llm.eval([nxt])
print(json.dumps({"logits": logits, "greedy": out}))
"""


def llama_cpp_python() -> str:
    """An interpreter with llama_cpp importable, building llama-cpp-python if needed."""
    override = os.environ.get("GPTFORGE_LLAMA_CPP_PYTHON")
    if override:
        return override
    py = VENV / "bin" / "python"
    if (
        py.exists()
        and subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode == 0
    ):
        return str(py)
    uv = shutil.which("uv")
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    packages = ["llama-cpp-python", "numpy"]
    if uv:
        subprocess.run([uv, "venv", "--python", sys.executable, str(VENV)], check=True)
        install = [uv, "pip", "install", "--python", str(py), *packages]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        install = [str(py), "-m", "pip", "install", *packages]
    subprocess.run(install, check=True, env=env)  # compiles llama.cpp: minutes
    return str(py)


def run_llama_cpp(gguf_path: Path, prompt: list[int], n_new: int) -> dict:
    res = subprocess.run(
        [llama_cpp_python(), "-c", CHILD, str(gguf_path), json.dumps(prompt), str(n_new)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
# The first run compiles llama.cpp: ~5 min on 2 idle cores, ~30 min on a busy machine.
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    ("preset", "dtype", "atol"),
    [("gpt", "f32", 5e-3), ("gpt", "f16", 3e-2), ("gpt", "q8_0", 1.5e-1), ("llama", "f32", 5e-3)],
)
def test_llama_cpp_matches_ours(
    tmp_path: Path, tokenizer_dir: Path, tokenizer, preset: str, dtype: str, atol: float
) -> None:
    overrides = dict(n_embd=128, n_head=4, n_layer=2, block_size=64)
    if preset == "llama":
        overrides.update(n_kv_head=2, ffn_hidden=256)
    run = make_run_dir(
        tmp_path / "run", "debug" if preset == "gpt" else "llama-debug", tokenizer_dir, **overrides
    )
    export_gguf(run, tmp_path / "m.gguf", dtype=dtype)  # type: ignore[arg-type]
    ours = load_model_dir(run)
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    got = run_llama_cpp(tmp_path / "m.gguf", prompt, 8)
    with torch.no_grad():
        want = ours(torch.tensor([prompt]))[0][0]
    diff = (torch.tensor(got["logits"], dtype=torch.float32) - want).abs().max().item()
    print(f"{preset} {dtype}: max |llama.cpp - ours| = {diff:.2e}")
    assert diff < atol
    if dtype == "f32":
        with torch.no_grad():
            assert got["greedy"] == greedy(lambda x: ours(x)[0], torch.tensor([prompt]), 8)
