"""GGUF export read back with the gguf package's reader: metadata, tokenizer and every tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gptforge.conversion import ConversionError, export_hf
from gptforge.conversion.gguf_export import export_gguf
from gptforge.conversion.meta_llama import hf_to_meta_rope_permute
from gptforge.conversion.weights import load_state_dict
from gptforge.modeling.io import read_config
from gptforge.tokenizer import CHAT_TOKENS, Tokenizer
from gptforge.tokenizer.chat_template import CHAT_FORMATS

from .conftest import make_run_dir

gguf = pytest.importorskip("gguf")

# Tolerances of reading back against our fp32 weights: q8_0 keeps 8 bits per value + a scale,
# q4/q5 types 4 or 5 bits per value over blocks of 32 (weights here are within about +-0.3).
ATOL = {
    "f32": 0.0,
    "f16": 1e-3,
    "q8_0": 0.02,
    "q5_0": 0.03,
    "q5_1": 0.03,
    "q4_0": 0.06,
    "q4_1": 0.06,
}


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(
            [int(x) for x in reversed(t.shape)]
        )
    return out


def _expected_gpt(run: Path) -> dict[str, torch.Tensor]:
    cfg = read_config(run)
    sd = load_state_dict(run)
    V = cfg.vocab_size
    out = {"token_embd.weight": sd["wte.weight"][:V], "position_embd.weight": sd["wpe.weight"]}
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}  # fmt: skip
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w = sd[f"h.{i}.{ours}.weight"]
            out[f"blk.{i}.{theirs}.weight"] = w
            out[f"blk.{i}.{theirs}.bias"] = sd.get(f"h.{i}.{ours}.bias", torch.zeros(w.shape[0]))
    out["output_norm.weight"] = sd["ln_f.weight"]
    out["output_norm.bias"] = sd.get("ln_f.bias", torch.zeros(cfg.n_embd))
    if not cfg.tie_embeddings:  # tied: llama.cpp reads the head from token_embd
        out["output.weight"] = sd["lm_head.weight"][:V]
    return out


@pytest.mark.parametrize(
    ("dtype", "variant"),
    [
        ("f32", {}),
        ("f16", {"bias": False, "tie_embeddings": False}),
        ("q8_0", {}),
        ("q4_0", {}),
        ("q4_1", {"tie_embeddings": False}),
        ("q5_0", {}),
        ("q5_1", {"tie_embeddings": False}),
    ],
)
def test_gguf_gpt2_roundtrip(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer, dtype: str, variant: dict
) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, **variant)
    out = export_gguf(run, tmp_path / "model.gguf", dtype=dtype)  # type: ignore[arg-type]
    reader = gguf.GGUFReader(out)
    cfg = read_config(run)
    assert _field(reader, "general.architecture") == "gpt2"
    assert _field(reader, "gpt2.block_count") == cfg.n_layer
    assert _field(reader, "gpt2.context_length") == cfg.block_size
    assert _field(reader, "gpt2.embedding_length") == cfg.n_embd
    assert _field(reader, "gpt2.feed_forward_length") == 4 * cfg.n_embd
    assert _field(reader, "gpt2.attention.head_count") == cfg.n_head
    assert _field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(cfg.norm_eps)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size == tokenizer.n_vocab
    eot = tokenizer.eot_token
    assert tokens[eot] == "<|endoftext|>" and types[eot] == 3  # CONTROL
    assert types[0] == 1 and all(t == 1 for i, t in enumerate(types) if i != eot)
    assert _field(reader, "tokenizer.ggml.eos_token_id") == eot
    assert _field(reader, "tokenizer.ggml.bos_token_id") == eot
    merges = _field(reader, "tokenizer.ggml.merges")
    assert list(merges) == _merges(tokenizer_dir) and len(merges) > 0

    got = _tensors(reader)
    want = _expected_gpt(run)
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].shape == tuple(w.shape), name
        np.testing.assert_allclose(
            got[name],
            w.float().numpy(),
            atol=ATOL[dtype] if w.dim() == 2 else 0,
            rtol=0,
            err_msg=name,
        )
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    matrix = "F32" if dtype == "f32" else dtype.upper()
    head = "output.weight" if "output.weight" in got else "token_embd.weight"
    for name, w in want.items():
        if w.dim() == 1 or name == "position_embd.weight":  # llama.cpp's tools keep these F32
            assert types[name] == "F32", name
        elif name == head and dtype not in ("f32", "f16"):  # llama-quantize's extra bits (Q6_K)
            assert types[name] == "Q8_0", name
        else:
            assert types[name] == matrix, name
    assert (tmp_path / "Modelfile").read_text().startswith("FROM ./model.gguf")


def _merges(tokenizer_dir: Path) -> list[str]:
    import json

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]


def test_gguf_llama_from_hf_dir_permutes_rope(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "llama-debug", tokenizer_dir)
    export_hf(run, tmp_path / "hf")
    out = export_gguf(tmp_path / "hf", tmp_path / "llama.gguf", dtype="f32")  # from a HF directory
    reader = gguf.GGUFReader(out)
    cfg = read_config(run)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.head_count_kv") == cfg.n_kv_head
    assert _field(reader, "llama.rope.dimension_count") == cfg.head_dim
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(reader, "llama.feed_forward_length") == cfg.ffn_hidden
    got = _tensors(reader)
    sd = load_state_dict(run)
    V = cfg.vocab_size
    np.testing.assert_array_equal(got["token_embd.weight"], sd["embed_tokens.weight"][:V].numpy())
    np.testing.assert_array_equal(got["output.weight"], sd["lm_head.weight"][:V].numpy())
    for i in range(cfg.n_layer):
        q = hf_to_meta_rope_permute(sd[f"layers.{i}.self_attn.q_proj.weight"], cfg.n_head)
        k = hf_to_meta_rope_permute(sd[f"layers.{i}.self_attn.k_proj.weight"], cfg.n_kv_head)
        np.testing.assert_array_equal(got[f"blk.{i}.attn_q.weight"], q.numpy())
        np.testing.assert_array_equal(got[f"blk.{i}.attn_k.weight"], k.numpy())
        np.testing.assert_array_equal(
            got[f"blk.{i}.attn_v.weight"], sd[f"layers.{i}.self_attn.v_proj.weight"].numpy()
        )
        np.testing.assert_array_equal(
            got[f"blk.{i}.ffn_gate.weight"], sd[f"layers.{i}.mlp.gate_proj.weight"].numpy()
        )
    assert len(got) == 2 + 1 + 9 * cfg.n_layer  # embd, output, norm + 9 per layer


def test_gguf_embeds_chat_tokens_as_control_and_fine_tuned_template(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir)
    tok.add_special_tokens(list(CHAT_TOKENS))
    tok.save(tmp_path / "tok")
    run = make_run_dir(tmp_path / "run", "debug", tmp_path / "tok")
    (run / "chat.json").write_text('{"template": "inst"}')  # what gptforge finetune records
    export_gguf(run, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tokens, types = (
        _field(reader, "tokenizer.ggml.tokens"),
        _field(reader, "tokenizer.ggml.token_type"),
    )
    for t in CHAT_TOKENS:
        assert types[tok.special_tokens[t]] == 3, t
        assert tokens[tok.special_tokens[t]] == t
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tok.special_tokens["</RESP>"]
    assert _field(reader, "tokenizer.chat_template") == CHAT_FORMATS["inst"].jinja()
    mf = (tmp_path / "Modelfile").read_text()
    assert f'TEMPLATE """{CHAT_FORMATS["inst"].ollama()}"""' in mf
    assert 'PARAMETER stop "</RESP>"' in mf and 'PARAMETER stop "<|endoftext|>"' in mf


def test_gguf_pretrained_run_gets_no_chat_template(tmp_path: Path, tokenizer_dir: Path) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir)
    tok.add_special_tokens(list(CHAT_TOKENS))  # chat tokens alone do not make a chat model
    tok.save(tmp_path / "tok")
    run = make_run_dir(tmp_path / "run", "debug", tmp_path / "tok")
    export_gguf(run, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert "tokenizer.chat_template" not in reader.fields
    mf = (tmp_path / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in mf and "<INST>" not in mf and "</RESP>" not in mf
    assert 'PARAMETER stop "<|endoftext|>"' in mf


def test_gguf_refuses_overwrite_and_bad_dtype(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    with pytest.raises(ConversionError, match=r"'q4_k'.*\['f32', 'f16', 'q8_0', 'q4_0'"):
        export_gguf(run, tmp_path / "m.gguf", dtype="q4_k")  # type: ignore[arg-type]
    export_gguf(run, tmp_path / "m.gguf", dtype="f32")
    with pytest.raises(ConversionError, match="already exists"):
        export_gguf(run, tmp_path / "m.gguf", dtype="f32")
    export_gguf(run, tmp_path / "m.gguf", dtype="f16", force=True)
    assert gguf.GGUFReader(tmp_path / "m.gguf").tensors[0].tensor_type is not None


def test_gguf_llama3_rope_scaling_writes_rope_freqs(tmp_path: Path, tokenizer_dir: Path) -> None:
    scaling = dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16,
    )  # fmt: skip
    run = make_run_dir(
        tmp_path / "run", "llama-debug", tokenizer_dir, rope_scaling=scaling, tie_embeddings=True
    )
    export_gguf(run, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    got = _tensors(reader)
    assert "output.weight" not in got  # tied: llama.cpp reuses token_embd
    freqs = got["rope_freqs.weight"]
    cfg = read_config(run)
    assert freqs.shape == (cfg.head_dim // 2,)
    # Low frequencies are slowed most: the factor grows along the head and ends at `factor`.
    assert np.all(np.diff(freqs) >= 0) and freqs[-1] == 8.0 and freqs[0] < 8.0
    # llama.cpp divides each frequency by its factor: that reproduces our scaled frequencies.
    from gptforge.modeling.llama import rope_inv_freq

    base = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim))
    np.testing.assert_allclose(base / freqs, rope_inv_freq(cfg).numpy(), rtol=1e-5)
