"""The project installs on a user's machine: a portable lock, and members that install alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PYPI = "https://pypi.org/simple"
PYTHONS = ("cp311", "cp312", "cp313")


def test_lock_resolves_from_the_public_index_only():
    """No local wheel folders or file paths: what `uv sync --locked` needs is on PyPI."""
    for package in LOCK["package"]:
        source = package["source"]
        if "registry" in source:
            assert source["registry"] == PYPI, package["name"]
        else:  # the workspace's own members
            assert set(source) <= {"editable", "virtual"}, (package["name"], source)
            assert not Path(next(iter(source.values()))).is_absolute(), package["name"]
    assert "/opt/" not in (ROOT / "uv.lock").read_text()


def test_lock_has_torch_for_every_supported_platform_and_python():
    (torch,) = [p for p in LOCK["package"] if p["name"] == "torch"]
    wheels = [w["url"].rsplit("/", 1)[-1] for w in torch["wheels"]]
    for python in PYTHONS:
        for arch in ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64", "macosx_"):
            found = [w for w in wheels if f"-{python}-" in w and arch in w]
            if arch == "macosx_":
                found = [w for w in found if w.endswith("_arm64.whl")]
            assert found, f"no torch wheel for {python} on {arch}"


def test_every_member_is_publishable():
    for pyproject in sorted(ROOT.glob("*/*/pyproject.toml")):
        if pyproject.parts[-3] not in ("packages", "services"):
            continue
        meta = tomllib.loads(pyproject.read_text())["project"]
        name = meta["name"]
        assert meta.get("description") and meta.get("license"), name
        assert (pyproject.parent / meta["readme"]).is_file(), name
        assert any(
            c.startswith("Programming Language :: Python :: 3.1") for c in meta["classifiers"]
        ), name
        assert {"Homepage", "Documentation"} <= set(meta.get("urls", {})), name


def _uv() -> list[str]:
    """The uv running this test (``uv run`` sets ``UV``), else one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found is None:
        pytest.skip("needs uv (run the tests through `make test-slow`)")
    return [found]


def _build(out: Path, *packages: str) -> list[Path]:
    uv = _uv()
    for package in packages:
        subprocess.run([*uv, "build", "-q", "--wheel", "--package", package, "-o", str(out)],
                       cwd=ROOT, check=True)  # fmt: skip
    return sorted(out.glob("*.whl"))


def _fresh_venv(path: Path, wheels: list[Path]) -> Path:
    uv = _uv()
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run([*uv, "pip", "install", "-q", "--python", str(python), *map(str, wheels)],
                   check=True)  # fmt: skip
    return python


@pytest.mark.slow
def test_tokenizer_wheel_installs_alone_and_encodes(tmp_path):
    wheels = _build(tmp_path / "dist", "gptforge-fileio", "gptforge-corpus", "gptforge-tokenizer")
    python = _fresh_venv(tmp_path / "venv", wheels)
    script = textwrap.dedent("""
        import importlib.util, sys
        from gptforge.tokenizer import Tokenizer
        tok = Tokenizer.train(texts=["İstanbul'da bir gün", "hello world"] * 30, vocab_size=300)
        ids = tok.encode("İstanbul'da hello")
        assert tok.decode(ids) == "İstanbul'da hello", ids
        print(importlib.util.find_spec("torch") is None)
    """)
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # the tokenizer alone pulls in no torch


@pytest.mark.slow
def test_tokenizer_service_wheel_installs_alone_and_serves(tmp_path):
    wheels = _build(tmp_path / "dist", "gptforge-fileio", "gptforge-corpus", "gptforge-tokenizer",
                    "gptforge-api", "gptforge-tokenizer-service")  # fmt: skip
    python = _fresh_venv(tmp_path / "venv", wheels)
    script = textwrap.dedent("""
        import importlib.util
        from gptforge.tokenizer import Tokenizer
        from gptforge.services.tokenizer import TokenizerClient, serve_in_background
        tok = Tokenizer.train(texts=["the blue moon", "hello world"] * 30, vocab_size=280)
        with serve_in_background(tok) as bg, TokenizerClient(bg.address) as client:
            ids = client.encode("hello moon")
            assert ids == tok.encode("hello moon") and client.decode(ids) == "hello moon"
        print(importlib.util.find_spec("torch") is None)
    """)
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
