"""Model directories: save/load round trips, tied weights, dtype, tokenizer copy, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gptforge.modeling import build_model, config_to_dict, get_config
from gptforge.modeling.io import load_model_dir, read_config, save_model_dir
from safetensors import safe_open


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
@pytest.mark.parametrize("tie", [True, False])
def test_roundtrip_same_logits(tmp_path, preset, tie):
    torch.manual_seed(0)
    model = build_model(get_config(preset, vocab_size=300, tie_embeddings=tie)).eval()
    save_model_dir(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == config_to_dict(model.config)
    loaded = load_model_dir(tmp_path)
    assert not loaded.training and loaded.config == model.config
    idx = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)
    head, emb = loaded.lm_head.weight, getattr(loaded, loaded.token_embedding_name).weight
    assert (head is emb) == tie
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) == (not tie)  # a tied head is stored once
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_dtype_is_kept_or_cast(tmp_path):
    model = build_model(get_config("debug")).to(torch.bfloat16)
    save_model_dir(model, tmp_path)
    assert load_model_dir(tmp_path).wte.weight.dtype == torch.bfloat16
    assert load_model_dir(tmp_path, dtype=torch.float32).wte.weight.dtype == torch.float32


def test_tokenizer_dir_is_copied_and_replaced(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    out = tmp_path / "model"
    model = build_model(get_config("debug"))
    save_model_dir(model, out, tokenizer_dir=tok)
    assert (out / "tokenizer" / "tokenizer.json").read_text() == "{}"
    (tok / "tokenizer.json").write_text('{"v": 2}')
    (out / "tokenizer" / "stale.txt").write_text("x")
    save_model_dir(model, out, tokenizer_dir=tok)
    assert (out / "tokenizer" / "tokenizer.json").read_text() == '{"v": 2}'
    assert not (out / "tokenizer" / "stale.txt").exists()
    save_model_dir(model, out, tokenizer_dir=out / "tokenizer")  # same dir: left alone
    assert (out / "tokenizer" / "tokenizer.json").exists()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_dir(tmp_path)
    save_model_dir(build_model(get_config("debug")), tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "n_embd": 32, "n_head": 2}))
    with pytest.raises(ValueError, match=r"tensor '.*' has shape .*the config expects"):
        load_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**d, "arch": "gpt5"}))
    with pytest.raises(ValueError, match="arch='gpt5'"):
        read_config(tmp_path)


def test_missing_weights_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    save_model_dir(build_model(get_config("llama-debug")), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['layers.1.mlp.up_proj.weight'\]"):
        load_model_dir(tmp_path)


def test_loading_builds_no_initialised_model(tmp_path, monkeypatch):
    # The weights are the only allocation: a model initialised before loading would double
    # the peak memory (a 13B bf16 checkpoint would need an fp32 model's 52 GB beside it).
    from gptforge.modeling import io

    save_model_dir(build_model(get_config("debug")), tmp_path)
    devices = []
    real = io.build_model

    def spy(config):
        model = real(config)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(io, "build_model", spy)
    model = load_model_dir(tmp_path)
    assert devices == ["meta"]
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_loaded_weights_do_not_map_the_file(tmp_path):
    # Parameters backed by the file's mapping would fault if the file were rewritten in place.
    import gc

    save_model_dir(build_model(get_config("debug")), tmp_path)
    model = load_model_dir(tmp_path)
    gc.collect()
    maps = Path("/proc/self/maps").read_text()
    assert str(tmp_path / "model.safetensors") not in maps
    assert model(torch.zeros(1, 3, dtype=torch.long))[0].isfinite().all()


@pytest.mark.parametrize(
    ("preset", "old", "new", "value"),
    [("debug", "layer_norm_eps", "norm_eps", 1e-6), ("llama-debug", "intermediate_size", "ffn_hidden", 96)],
)  # fmt: skip
def test_config_json_with_older_field_names_still_loads(tmp_path, preset, old, new, value):
    torch.manual_seed(0)
    model = build_model(get_config(preset, **{new: value}))
    save_model_dir(model, tmp_path)
    path = tmp_path / "config.json"
    written = json.loads(path.read_text())
    written[old] = written.pop(new)  # as an older gptforge wrote it
    path.write_text(json.dumps(written))
    assert getattr(read_config(tmp_path), new) == value
    loaded = load_model_dir(tmp_path)
    idx = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0])
    path.write_text(json.dumps({**written, "bogus": 1}))  # unknown keys still fail
    with pytest.raises(ValueError, match="bogus"):
        read_config(tmp_path)
