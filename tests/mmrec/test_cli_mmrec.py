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


def test_convert_arch_takes_the_guide_flags_in_both_spellings(tmp_path):
    torch.manual_seed(0)
    save_model_dir(build_model(get_config("llama-debug")), tmp_path / "src")
    runner = CliRunner()
    for i, (vocab, dim, layers, heads) in enumerate(
        (("--vocab_size", "--model_dim", "--num_layers", "--num_heads"),
         ("--vocab-size", "--model-dim", "--num-layers", "--num-heads"))
    ):  # fmt: skip
        out = tmp_path / f"mm{i}"
        res = runner.invoke(app, ["convert", "arch", "--source", str(tmp_path / "src"),
                                  "--output", str(out), vocab, "300", dim, "32", layers, "3",
                                  heads, "2"])  # fmt: skip
        assert res.exit_code == 0, res.output
        cfg = load_model_dir(out).config
        assert (cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head) == (300, 32, 3, 2)
        report = json.loads((out / "conversion_report.json").read_text())
        assert f"keys: {report['total_keys']} total" in res.output
        assert report["total_keys"] == (
            report["converted_keys"] + report["missing_keys"] + report["new_keys"]
        )
        assert report["missing_keys"] > 0  # layer 3 of the target has no source layer


def test_convert_model_weights_wrapper_reports_counts_and_scores(tmp_path):
    from gptforge.conversion.arch import convert_model_weights

    torch.manual_seed(0)
    src = build_model(get_config("llama-debug"))
    save_model_dir(src, tmp_path / "src")
    cfg = src.config
    target = build_model(get_config("mmrec-debug", vocab_size=cfg.vocab_size, n_embd=cfg.n_embd,
                                    n_layer=cfg.n_layer, n_head=cfg.n_head, ffn="swiglu",
                                    norm="rmsnorm", ffn_hidden=cfg.intermediate_size,
                                    bias=False, tie_embeddings=cfg.tie_embeddings))  # fmt: skip
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = convert_model_weights(tmp_path / "src", target, tmp_path / "out", strict=False,
                                   initialize_new=False)  # fmt: skip
    scores = report["compatibility_score"]
    assert len(scores) == report["total_keys"] and report["new_keys"] > 0
    assert scores["wte.weight"] == 1.0 and scores["h.0.mixer.w_out.weight"] == 0.0
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert report["keys"]["h.0.mixer.w_out.weight"]["score"] == 0.0
    # initialize_new=False: the new branch keeps the target's own values (not zeroed)
    w_out = target.state_dict()["h.0.mixer.w_out.weight"]
    assert torch.equal(w_out, before["h.0.mixer.w_out.weight"]) and w_out.abs().sum() > 0
    assert load_model_dir(tmp_path / "out").config.arch == "mmrec"
    report = convert_model_weights(tmp_path / "src", target, tmp_path / "out")
    assert target.state_dict()["h.0.mixer.w_out.weight"].abs().sum() == 0
