"""``gptforge inspect`` and the CLI verbs, plus the safety of the weight readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gptforge.cli.main import app
from gptforge.conversion import ConversionError, detect_family, export_hf, load_any, load_state_dict
from gptforge.conversion.gguf_export import export_gguf
from gptforge.conversion.inspect import inspect_checkpoint
from gptforge.modeling.io import read_config
from safetensors.torch import save_file
from typer.testing import CliRunner

from .conftest import make_run_dir

runner = CliRunner()


class NotATensor:  # unpickling this needs code: torch.load(weights_only=True) must refuse it
    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_pickle_that_needs_code_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(
        ConversionError, match=r"refusing to load .*evil\.pt.*needs code.*weights_only=True"
    ):
        load_state_dict(tmp_path / "evil.pt")


def test_nanogpt_checkpoint_is_unwrapped_and_inspected(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    sd = {f"_orig_mod.{k}": v for k, v in load_state_dict(run).items()}
    cfg = read_config(run)
    args = {
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "block_size": cfg.block_size,
    }
    torch.save({"model": sd, "model_args": args, "iter_num": 10}, tmp_path / "ckpt.pt")
    assert set(load_state_dict(tmp_path / "ckpt.pt")) == {k.removeprefix("_orig_mod.") for k in sd}
    info = inspect_checkpoint(tmp_path / "ckpt.pt")
    assert (info.family, info.layout, info.n_layer, info.n_head, info.n_embd) == (
        "gpt2",
        "weights",
        2,
        4,
        64,
    )
    assert info.tied_embeddings is True and info.context_length == cfg.block_size


def test_inspect_every_layout(tmp_path: Path, tokenizer_dir: Path) -> None:
    gpt = make_run_dir(tmp_path / "gpt", "debug", tokenizer_dir, tie_embeddings=False)
    llama = make_run_dir(tmp_path / "llama", "llama-debug", tokenizer_dir)
    export_hf(llama, tmp_path / "llama-hf")
    export_gguf(gpt, tmp_path / "gpt.gguf", dtype="q8_0")

    ours = inspect_checkpoint(gpt)
    cfg = read_config(gpt)
    assert (ours.layout, ours.family, ours.n_layer, ours.n_head, ours.vocab_size) == (
        "ours",
        "gpt2",
        2,
        4,
        cfg.vocab_size,
    )
    assert ours.tied_embeddings is False and ours.dtypes == {"float32": ours.n_tensors}
    assert ours.n_params == sum(t.numel() for t in load_state_dict(gpt).values())

    hf = inspect_checkpoint(tmp_path / "llama-hf")
    lcfg = read_config(llama)
    assert (hf.layout, hf.family, hf.n_kv_head, hf.ffn_dim) == (
        "hf",
        "llama",
        lcfg.n_kv_head,
        lcfg.ffn_hidden,
    )

    bare = inspect_checkpoint(tmp_path / "llama-hf" / "model.safetensors")
    assert (bare.family, bare.n_layer, bare.n_embd, bare.vocab_size) == (
        "llama",
        2,
        64,
        lcfg.vocab_size,
    )
    assert bare.n_head is None and bare.tied_embeddings is False

    g = inspect_checkpoint(tmp_path / "gpt.gguf")
    assert (g.layout, g.family, g.n_layer, g.n_head, g.vocab_size) == (
        "gguf",
        "gpt2",
        2,
        4,
        cfg.vocab_size,
    )
    assert "Q8_0" in g.dtypes and "F32" in g.dtypes


def test_detect_family_from_keys_configs_and_paths(tmp_path: Path, tokenizer_dir: Path) -> None:
    assert detect_family(["transformer.h.0.attn.c_attn.weight"]) == "gpt2"
    assert detect_family(["model/h0/attn/c_attn/w"]) == "gpt2"
    assert detect_family(["layers.0.attention.wq.weight"]) == "llama"
    assert detect_family([], {"model_type": "llama"}) == "llama"
    assert detect_family([], {"n_vocab": 50257, "n_ctx": 1024}) == "gpt2"
    run = make_run_dir(tmp_path / "run", "llama-debug", tokenizer_dir)
    assert detect_family(run) == "llama"
    assert detect_family(run / "model.safetensors") == "llama"
    with pytest.raises(ConversionError, match=r"supported: \['gpt2', 'llama'\]"):
        detect_family([], {"model_type": "t5"})
    with pytest.raises(ConversionError, match="cannot tell the model family"):
        detect_family(["encoder.block.0.weight"])


def test_load_any_reads_ours_and_hf(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    export_hf(run, tmp_path / "hf")
    a, tok_a, _ = load_any(run)
    b, tok_b, _ = load_any(tmp_path / "hf")
    ids = torch.tensor([tok_a.encode("hello world")])
    with torch.no_grad():
        torch.testing.assert_close(a(ids)[0], b(ids)[0], atol=0, rtol=0)
    assert tok_a.fingerprint == tok_b.fingerprint
    assert b.lm_head.weight is b.wte.weight  # ties restored


def test_cli_convert_and_inspect(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    r = runner.invoke(app, ["convert", "to-hf", "--ckpt", str(run), "--out", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["convert", "to-hf", "--ckpt", str(run), "--out", str(tmp_path / "hf")])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    r = runner.invoke(
        app, ["convert", "from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "convert",
            "to-gguf",
            "--hf",
            str(tmp_path / "hf"),
            "--out",
            str(tmp_path / "m.gguf"),
            "--dtype",
            "f32",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "Modelfile").is_file()
    r = runner.invoke(app, ["inspect", str(tmp_path / "back"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["family"] == "gpt2" and info["n_layer"] == 2
    r = runner.invoke(app, ["inspect", str(tmp_path / "m.gguf")])
    assert r.exit_code == 0 and "gguf" in r.output and "gpt-2" in r.output
    r = runner.invoke(app, ["convert", "to-gguf", "--out", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "exactly one of --ckpt" in r.output


def test_sharded_index_and_bin_loading(tmp_path: Path) -> None:
    a, b = {"x.weight": torch.randn(3, 3)}, {"y.weight": torch.randn(2)}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    torch.save(b, tmp_path / "pytorch_model-00002.bin")
    index = {
        "metadata": {},
        "weight_map": {
            "x.weight": "model-00001-of-00002.safetensors",
            "y.weight": "pytorch_model-00002.bin",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    sd = load_state_dict(tmp_path)
    assert torch.equal(sd["x.weight"], a["x.weight"]) and torch.equal(sd["y.weight"], b["y.weight"])
    index["weight_map"]["z"] = "missing.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"names missing files: .*missing\.safetensors"):
        load_state_dict(tmp_path)
