"""Atomic writes: whole or nothing, the umask's permissions, no temporaries left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gptforge.fileio import atomic_dir, atomic_file, atomic_write_json, atomic_write_text
from safetensors.torch import save_file


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_umask_permissions_even_from_private_writers(tmp_path, umask_022):
    target = tmp_path / "model.safetensors"
    with atomic_file(target) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))  # safetensors itself creates files as 0600
    atomic_write_json(tmp_path / "config.json", {"a": 1})
    assert mode(target) == 0o644 and mode(tmp_path / "config.json") == 0o644


def test_directories_get_the_umask_permissions(tmp_path, umask_022):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))
    assert mode(tmp_path / "out") == 0o755 and mode(tmp_path / "out" / "sub") == 0o755
    assert mode(tmp_path / "out" / "sub" / "w.safetensors") == 0o644


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_directory_write_keeps_the_old_directory(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("killed")
    assert (tmp_path / "out" / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_directory_is_replaced_whole(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "stale").write_text("x")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
