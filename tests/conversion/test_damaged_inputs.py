"""Inputs gptforge cannot use give one line naming the file and the fix, from every verb."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gptforge.cli.main import app
from gptforge.conversion import export_hf, inspect_checkpoint, load_any
from typer.testing import CliRunner

from tests.conversion.conftest import make_run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    """A run, its HF export and a GGUF export, each with a copy whose weights are cut in half."""
    root = tmp_path_factory.mktemp("damaged")
    run = make_run_dir(root / "run", "debug", tokenizer_dir)
    hf = export_hf(run, root / "hf")
    out = {"run": run, "hf": hf}
    for name, src in (("run", run), ("hf", hf)):
        bad = root / f"bad_{name}"
        shutil.copytree(src, bad)
        weights = bad / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        out[f"bad_{name}"] = bad
    return out


VERBS = {
    "convert from-hf": lambda r, tmp: ["convert", "from-hf", "--hf", str(r["bad_hf"]),
                                       "--out", str(tmp / "o")],
    "convert to-hf": lambda r, tmp: ["convert", "to-hf", "--ckpt", str(r["bad_run"]),
                                     "--out", str(tmp / "o")],
    "convert to-gguf": lambda r, tmp: ["convert", "to-gguf", "--ckpt", str(r["bad_run"]),
                                       "--out", str(tmp / "o.gguf")],
    "generate": lambda r, tmp: ["generate", "--ckpt", str(r["bad_run"]), "--prompt", "hi",
                                "--max-new-tokens", "2", "--device", "cpu"],
    "inspect": lambda r, tmp: ["inspect", str(r["bad_run"])],
}  # fmt: skip


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_truncated_safetensors_is_one_line_naming_file_size_and_fix(
    runs: dict[str, Path], tmp_path: Path, verb: str
) -> None:
    result = CliRunner().invoke(app, VERBS[verb](runs, tmp_path))
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert "Traceback" not in result.output and "SafetensorError" not in text
    bad = runs["bad_run"] if "bad_run" in " ".join(VERBS[verb](runs, tmp_path)) else runs["bad_hf"]
    size = (bad / "model.safetensors").stat().st_size
    assert str(bad / "model.safetensors") in text
    assert f"it is {size:,} bytes, but its safetensors header describes" in text
    assert "copy, download or export it again" in text
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.gguf").exists()


def test_to_hf_refuses_a_gguf_file_saying_what_it_takes(runs: dict[str, Path], tmp_path: Path):
    gguf_file = tmp_path / "model.gguf"
    ok = CliRunner().invoke(app, ["convert", "to-gguf", "--ckpt", str(runs["run"]),
                                  "--out", str(gguf_file), "--no-modelfile"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    result = CliRunner().invoke(app, ["convert", "to-hf", "--ckpt", str(gguf_file),
                                      "--out", str(tmp_path / "hf")])  # fmt: skip
    assert result.exit_code == 2
    assert "reads a gptforge run or model directory, not the GGUF file" in result.output
    assert "config.json" not in result.output
    with pytest.raises(ValueError, match=r"is a GGUF file"):
        load_any(gguf_file)


def test_to_hf_on_a_foreign_checkpoint_names_the_import_verb(runs: dict[str, Path], tmp_path):
    result = CliRunner().invoke(app, ["convert", "to-hf", "--ckpt", str(runs["hf"]),
                                      "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2
    assert "is a 'hf' checkpoint: import it first with `gptforge convert from-hf" in result.output


def test_inspect_says_plainly_that_a_bert_gguf_is_not_loadable(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "architecture 'bert'" in result.output and "cannot load" in result.output
    with pytest.raises(ValueError, match=r"architecture 'bert'"):
        inspect_checkpoint(path)


def test_run_directory_resolves_to_its_model(runs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(runs["run"], tmp_path / "r" / "pretrain")
    _, tok, info = load_any(tmp_path / "r")
    assert info.path == tmp_path / "r" / "pretrain" and tok is not None
