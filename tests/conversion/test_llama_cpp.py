"""llama.cpp runs our GGUF files: logits, greedy continuation and chat answers match ours (slow).

llama-cpp-python is built from PyPI (it compiles llama.cpp) into its own virtual environment
under ``~/.cache/gptforge/llama-cpp-venv``, never into the project's ``.venv``; the interpreter
running the tests is used when it already has ``llama_cpp`` (the ``llama-cpp`` extra), and
``GPTFORGE_LLAMA_CPP_PYTHON`` names any other interpreter that has it.
"""

from __future__ import annotations

import importlib.util
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
    if importlib.util.find_spec("llama_cpp") is not None:
        return sys.executable
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
    subprocess.run(install, check=True, env=env)  # compiles llama.cpp
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
@pytest.mark.timeout(3600)  # the first run compiles llama.cpp
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


# Runs inside the llama-cpp-python environment: one greedy chat completion. llama-cpp-python
# renders the file's tokenizer.chat_template when no chat format is given ("chat_template.default").
CHAT_CHILD = """
import json, sys
from llama_cpp import Llama
path, messages, n_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=256, verbose=False, n_threads=2, seed=0)
out = llm.create_chat_completion(messages=messages, max_tokens=n_new, temperature=0.0, top_k=1)
choice = out["choices"][0]
print(json.dumps({"content": choice["message"]["content"], "finish": choice["finish_reason"],
                  "prompt_tokens": out["usage"]["prompt_tokens"], "format": llm.chat_format}))
"""


def fine_tuned_run(
    path: Path, tokenizer_dir: Path, records: list[dict[str, str]], template: str
) -> Path:
    """A ``debug`` GPT trained on ``records`` in ``template`` until it answers them."""
    from gptforge.modeling import IGNORE_INDEX, build_model, get_config
    from gptforge.modeling.io import save_model_dir
    from gptforge.sampling.templates import encode_record
    from gptforge.tokenizer import CHAT_TOKENS, Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    tok.add_special_tokens(list(CHAT_TOKENS))
    tok.save(path.parent / "chat-tok")
    pairs = [encode_record(r, template, tok) for r in records]
    T = max(len(p) + len(r) for p, r in pairs)
    x = torch.full((len(pairs), T), tok.eot_token)
    y = torch.full((len(pairs), T), IGNORE_INDEX)
    for i, (prompt, response) in enumerate(pairs):
        ids = torch.tensor(prompt + response)
        x[i, : len(ids) - 1] = ids[:-1]
        y[i, len(prompt) - 1 : len(ids) - 1] = ids[len(prompt) :]  # loss on the answer only
    torch.manual_seed(0)
    model = build_model(get_config("debug", vocab_size=tok.n_vocab, block_size=256))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    run = save_model_dir(model.eval(), path, tokenizer_dir=path.parent / "chat-tok")
    (run / "chat.json").write_text(json.dumps({"template": template}))  # as gptforge finetune does
    return run


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first run compiles llama.cpp
@pytest.mark.parametrize("template", ["inst", "alpaca"])
def test_llama_cpp_chat_completion_answers_like_gptforge_chat(
    tmp_path: Path, tokenizer_dir: Path, template: str
) -> None:
    from gptforge.demo.stages import DEMO_INSTRUCTION
    from gptforge.sampling.chat import ChatModel

    records = [
        DEMO_INSTRUCTION,
        {"instruction": "Repeat the words.", "input": "blue moon", "output": "blue moon"},
        {"instruction": "Count the words.", "input": "the lazy dog jumps", "output": "4"},
    ]
    if template == "alpaca":  # its chat template has no input section: the input is in the turn
        records = [
            {"instruction": f"{r['instruction']}\n{r['input']}", "input": "", "output": r["output"]}
            for r in records
        ]
    run = fine_tuned_run(tmp_path / "sft", tokenizer_dir, records, template)
    export_gguf(run, tmp_path / "m.gguf", dtype="q8_0")
    bot = ChatModel(run)
    for r in records:
        ours = bot.respond(r["instruction"], r["input"], max_new_tokens=16)
        assert ours == r["output"]  # the model learnt its answers, so a stop matters below
        # gptforge chat puts the input on the line after the instruction, in one user turn
        content = f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]
        res = subprocess.run(
            [llama_cpp_python(), "-c", CHAT_CHILD, str(tmp_path / "m.gguf"),
             json.dumps([{"role": "user", "content": content}]), "16"],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["format"] == "chat_template.default"  # the file's Jinja template, not a guess
        assert got["prompt_tokens"] == len(bot.prompt_ids(r["instruction"], r["input"]))
        assert got["finish"] == "stop"  # at the template's end marker, not at max_tokens
        assert got["content"].strip() == ours
