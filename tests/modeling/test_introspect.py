"""Introspection numbers and the `gptforge model info` command."""

from __future__ import annotations

import json

import pytest
from gptforge.cli.main import app
from gptforge.modeling import build_model, config_to_dict, get_config
from gptforge.modeling.introspect import count_params, flops_per_token, model_info
from typer.testing import CliRunner


def test_gpt2_numbers():
    cfg = get_config("gpt2")
    info = model_info(cfg)
    assert info.params == info.params_tied == 124_439_808
    assert info.params_untied == 124_439_808 + 50257 * 768
    # Kaplan's N: 12 blocks of 12 * d^2 + 13 * d (weights, biases, 2 LayerNorms) + ln_f.
    assert info.params_non_embedding == 12 * (12 * 768**2 + 13 * 768) + 2 * 768
    assert info.params_allocated == info.params + (50304 - 50257) * 768
    assert info.weights_fp32_bytes == 4 * info.params_allocated
    assert info.weights_bf16_bytes == 2 * info.params_allocated
    assert info.adamw_fp32_bytes == 16 * info.params_allocated
    n = info.params_non_embedding + 50257 * 768
    assert info.forward_flops_per_token == 2 * n + 4 * 12 * 1024 * 768
    assert info.train_flops_per_token == 3 * info.forward_flops_per_token


def test_flops_grow_with_context():
    cfg = get_config("tiny")
    short, long = flops_per_token(cfg, 128)["train"], flops_per_token(cfg, 256)["train"]
    assert long - short == 3 * 4 * cfg.n_layer * 128 * cfg.n_embd


def test_count_matches_built_model():
    for name in ("debug", "llama-debug", "tiny", "llama-tiny"):
        model = build_model(get_config(name))
        assert count_params(model.config) == model.num_params()
        assert count_params(model.config, include_padding=True) == sum(
            p.numel() for p in model.parameters()
        )


def test_cli_model_info_table_and_json(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["model", "info", "gpt2"])
    assert res.exit_code == 0, res.output
    assert "124,439,808" in res.output and "163,037,184" in res.output
    res = runner.invoke(app, ["model", "info", "llama-2-7b", "--json", "--seq-len", "2048"])
    data = json.loads(res.output)
    assert data["params"] == 6_738_415_616 and data["seq_len"] == 2048
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(config_to_dict(get_config("gpt2", tie_embeddings=False, qkv_bias=False)))
    )
    res = runner.invoke(app, ["model", "info", str(path), "--json"])
    assert json.loads(res.output)["params"] == 163_009_536


@pytest.mark.parametrize("bad", ["gpt-7", "missing.json"])
def test_cli_model_info_errors(bad):
    res = CliRunner().invoke(app, ["model", "info", bad])
    assert res.exit_code == 2
    assert bad in res.output and ("valid names" in res.output or "no such file" in res.output)
