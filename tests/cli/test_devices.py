"""``--device``: ``auto`` everywhere a model runs, and bad names refused before torch loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gptforge.modeling import build_model, get_config
from gptforge.modeling.device import auto_device_name, resolve_device
from gptforge.modeling.io import save_model_dir
from gptforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("device")
    tok = Tokenizer.train(texts=["hello world, the blue moon"] * 50, vocab_size=280)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = build_model(get_config("debug", vocab_size=tok.n_vocab))
    return save_model_dir(model, root / "model", tokenizer_dir=root / "tok")


def gptforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gptforge.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_generate_on_device_auto(model_dir):
    out = gptforge("generate", "--ckpt", str(model_dir), "--prompt", "hello",
                   "--max-new-tokens", "4", "--device", "auto", "--seed", "1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("hello") and "finish: length" in out.stderr


def test_chat_on_device_auto(model_dir):
    out = gptforge("chat", "--ckpt", str(model_dir), "--template", "alpaca",
                   "--prompt", "Say hello.", "--max-new-tokens", "3", "--device", "auto")  # fmt: skip
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("verb", ["generate", "chat", "train", "finetune", "demo"])
def test_unknown_device_is_one_line_before_torch_loads(verb):
    """The check runs in the option parser: torch is never imported for a bad flag."""
    code = (
        "import sys\n"
        f"sys.argv = ['gptforge', {verb!r}, '--ckpt', 'x', '--device', 'tpu']\n"
        "from gptforge.cli.main import main\n"
        "try:\n    main()\n"
        "except SystemExit as e:\n    print('torch' in sys.modules, e.code)\n"
    )
    if verb in ("train", "finetune", "demo"):
        code = code.replace("'--ckpt', 'x', ", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2"], out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'tpu'" in lines[0], lines
    assert "auto" in lines[0] and "cuda:N" in lines[0] and "mps" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_names_the_machine_and_suggests_auto(model_dir):
    out = gptforge("generate", "--ckpt", str(model_dir), "--device", "cuda")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"error: device 'cuda' is not present (this machine has no CUDA device); "
        f"pass --device auto (here: {auto_device_name()})"
    ]


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert auto_device_name() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_device_name() == "cuda"


def test_library_names_are_checked_too():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
