"""`gptforge convert arch`: the CLI over convert_to_mmrec_dir."""

from __future__ import annotations

import json

import torch
from gptforge.cli.main import app
from gptforge.modeling import build_model, get_config
from gptforge.modeling.io import load_model_dir, save_model_dir
from typer.testing import CliRunner


def test_convert_arch_cli_writes_model_and_report(tmp_path):
    torch.manual_seed(0)
    save_model_dir(build_model(get_config("llama-debug")), tmp_path / "src")
    runner = CliRunner()
    out = tmp_path / "mm"
    res = runner.invoke(app, ["convert", "arch", "--source", str(tmp_path / "src"), "--target",
                              "mmrec", "--out", str(out), "--strict"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "source: llama (config.json (arch))" in res.output
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["source"]["n_kv_head"] == 2 and report["strict_problems"] == []
    assert load_model_dir(out).config.ffn == "swiglu"

    # A preset that does not match: the transfer is partial, and --strict refuses it.
    res = runner.invoke(app, ["convert", "arch", "--source", str(tmp_path / "src"), "--target",
                              "mmrec", "--preset", "mmrec-debug", "--no-match-source", "--out",
                              str(tmp_path / "p"), "--strict"])  # fmt: skip
    assert res.exit_code == 2 and "--strict" in res.output
    assert not (tmp_path / "p").exists()  # nothing half-written
    res = runner.invoke(app, ["convert", "arch", "--source", str(tmp_path / "src"), "--target",
                              "rwkv", "--out", str(tmp_path / "r")])  # fmt: skip
    assert res.exit_code == 2 and "choose one of ['mmrec']" in res.output
    res = runner.invoke(app, ["convert", "arch", "--source", str(tmp_path / "src"), "--out",
                              str(out)])  # fmt: skip
    assert res.exit_code == 2 and "already exists" in res.output
