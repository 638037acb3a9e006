"""GGUF types beyond f16: which tensors stay F32, block fallbacks, tied heads, K-quants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from gptforge.conversion import ConversionError
from gptforge.conversion.gguf_export import export_gguf
from gptforge.conversion.gguf_quant import tensor_type
from gptforge.modeling.io import load_model_dir, read_config

from .conftest import make_run_dir

gguf = pytest.importorskip("gguf")
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def test_rows_that_do_not_fit_a_block_fall_back_to_f16_and_are_reported(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, n_embd=48, n_head=4)
    lines: list[str] = []
    export_gguf(run, tmp_path / "m.gguf", dtype="q4_0", report=lines.append)
    types = _types(tmp_path / "m.gguf")
    # rows of 48 (every matrix but ffn_down, whose rows are 4 * 48 = 192) do not fit 32-blocks
    assert types["blk.0.attn_qkv.weight"] == "F16"
    assert types["blk.1.ffn_up.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q4_0"
    assert types["position_embd.weight"] == "F32" and types["blk.0.attn_qkv.bias"] == "F32"
    reported = {line.split(":")[0] for line in lines}
    want = {n for n, t in types.items() if t == "F16"}
    assert reported == want and len(want) == 1 + 3 * 2  # token_embd + 3 matrices per layer
    assert all("row length 48 is not a multiple of 32: F16" in line for line in lines)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q5_1"])
def test_position_embeddings_norms_and_biases_stay_f32(dtype: str) -> None:
    head = "output.weight"
    for name, shape in [("position_embd.weight", (64, 64)), ("blk.0.attn_norm.weight", (64,)),
                        ("blk.0.attn_qkv.bias", (192,)), ("rope_freqs.weight", (8,))]:  # fmt: skip
        assert tensor_type(name, shape, dtype, head)[0].name == "F32", name
    assert tensor_type("blk.0.ffn_up.weight", (256, 64), dtype, head) == (
        gguf.GGMLQuantizationType[dtype.upper()],
        None,
    )


def test_tied_gpt2_file_has_no_output_tensor_and_is_smaller_by_it(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    tied = make_run_dir(tmp_path / "tied", "debug", tokenizer_dir)
    untied = make_run_dir(tmp_path / "untied", "debug", tokenizer_dir, tie_embeddings=False)
    export_gguf(tied, tmp_path / "tied.gguf", dtype="f32", modelfile=False)
    export_gguf(untied, tmp_path / "untied.gguf", dtype="f32", modelfile=False)
    assert "output.weight" not in _types(tmp_path / "tied.gguf")
    assert "output.weight" in _types(tmp_path / "untied.gguf")
    cfg = read_config(tied)
    head_bytes = cfg.vocab_size * cfg.n_embd * 4
    extra = (tmp_path / "untied.gguf").stat().st_size - (tmp_path / "tied.gguf").stat().st_size
    assert head_bytes <= extra < head_bytes + 128  # the tensor, its info and alignment padding


@pytest.mark.skipif(HAS_LLAMA_CPP, reason="llama-cpp-python is installed")
def test_kquant_without_llama_cpp_says_how_to_install_it(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    with pytest.raises(
        ConversionError, match=r"'q4_k_m'.*pip install 'gptforge-conversion\[llama-cpp\]'"
    ):
        export_gguf(run, tmp_path / "m.gguf", dtype="q4_k_m")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "Modelfile").exists()


@pytest.mark.skipif(
    not HAS_LLAMA_CPP, reason="needs llama-cpp-python (pip install llama-cpp-python)"
)
@pytest.mark.parametrize("dtype", ["q4_k_m", "q5_k_m", "q6_k"])
def test_kquants_by_llama_cpp_report_their_fallbacks(
    tmp_path: Path, tokenizer_dir: Path, dtype: str
) -> None:
    # rows of 256 take K-types; ffn_down's rows of 1024 too; the 64-wide model falls back
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, n_embd=256, n_head=4)
    lines: list[str] = []
    export_gguf(run, tmp_path / "m.gguf", dtype=dtype, report=lines.append, modelfile=False)  # type: ignore[arg-type]
    types = _types(tmp_path / "m.gguf")
    assert types["position_embd.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types
    k = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}[dtype]
    assert types["blk.0.ffn_up.weight"] == k
    assert types["token_embd.weight"] in ("Q6_K", "Q8_0")  # the head gets more bits
    assert lines == []
    small = make_run_dir(tmp_path / "small", "debug", tokenizer_dir)
    lines = []
    export_gguf(small, tmp_path / "s.gguf", dtype=dtype, report=lines.append, modelfile=False)  # type: ignore[arg-type]
    reported = {line.split(":")[0] for line in lines}
    assert "blk.0.attn_qkv.weight" in reported and "blk.0.ffn_down.weight" not in reported


@pytest.mark.skipif(
    not HAS_LLAMA_CPP, reason="needs llama-cpp-python (pip install llama-cpp-python)"
)
def test_llama_cpp_reads_the_head_of_a_tied_gpt2_from_token_embd(
    tmp_path: Path, tokenizer_dir: Path, tokenizer
) -> None:
    from llama_cpp import Llama

    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, n_embd=128, n_head=4)
    export_gguf(run, tmp_path / "m.gguf", dtype="f32", modelfile=False)
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    llm = Llama(str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(prompt)
    got = torch.tensor(np.asarray(llm.scores[: len(prompt)]), dtype=torch.float32)
    with torch.no_grad():
        want = load_model_dir(run)(torch.tensor([prompt]))[0][0]
    assert (got - want).abs().max().item() < 5e-3  # f16 KV cache in llama.cpp
