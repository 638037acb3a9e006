"""The benchmark scripts' helpers that do not need their optional peers (llama.cpp, litgpt)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    if str(BENCH) not in sys.path:  # the scripts import their sibling ``peers`` module
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_llama_cpp_export_embeds_a_tokenizer_padded_to_the_model_vocab(tmp_path):
    gguf = pytest.importorskip("gguf")
    from gptforge.conversion.gguf_export import export_gguf
    from gptforge.modeling import build_model, get_config

    bench = _load("bench_generate")
    torch.manual_seed(0)
    model = build_model(get_config("debug", vocab_size=700)).eval()  # more rows than tokens
    model_dir = bench.export_for_llama_cpp(model, tmp_path)
    path = export_gguf(model_dir, tmp_path / "m.gguf", dtype="f32", modelfile=False)
    reader = gguf.GGUFReader(str(path))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 700  # 300 real tokens + placeholders llama.cpp never emits
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    want = model.wte.weight.detach()[:700].numpy()
    assert embd.data.shape == want.shape
    assert float(abs(embd.data - want).max()) == 0.0


def test_llama_cpp_summary_compares_the_target_pairs():
    bench = _load("bench_generate")
    rows = [
        {"preset": "gpt2", "impl": "gptforge float32", "tok_s": 30.0},
        {"preset": "gpt2", "impl": "gptforge float16", "tok_s": 80.0},
        {"preset": "gpt2", "impl": "gptforge int8-dynamic", "tok_s": 120.0},
        {"preset": "gpt2", "impl": "llama.cpp F32", "tok_s": 60.0},
        {"preset": "gpt2", "impl": "llama.cpp F16", "tok_s": 100.0},
        {"preset": "tiny", "impl": "gptforge float32", "tok_s": 500.0},  # no llama.cpp rows
    ]
    (line,) = bench.llama_cpp_summary(rows)
    assert "gptforge fp32 / llama.cpp F32 = **0.50x**" in line
    assert "int8-dynamic / llama.cpp F16 = **1.20x**" in line
    # A faster compiled fp32 row is the fp32 figure, and never counts as a reduced mode.
    rows.append({"preset": "gpt2", "impl": "gptforge float32 compiled", "tok_s": 150.0})
    (line,) = bench.llama_cpp_summary(rows)
    assert "gptforge fp32 compiled / llama.cpp F32 = **2.50x**" in line
    assert "int8-dynamic / llama.cpp F16 = **1.20x**" in line
