"""Checkpoints: atomic step directories, keep-last-K plus best-by-validation, corrupt fallback.

Layout of ``RUN_DIR/checkpoints/step_000100/``, a model directory that every verb loads:

- ``config.json``, ``model.safetensors`` and ``tokenizer/`` as in a model directory (tied
  weights stored once);
- ``state.pt``: a tensors-and-primitives-only dict (optimiser, RNG, data sampler, step, tokens),
  written with ``torch.save`` and read back with ``torch.load(..., weights_only=True)`` so
  loading never unpickles code;
- ``manifest.json``: step, tokens, validation loss, training config, tokenizer reference and the
  size and sha256 of each file (a truncated or corrupt file is detected before it is used).

``checkpoints/best`` and ``checkpoints/last`` are symlinks to the best-by-validation and the
newest checkpoint (``gptforge chat --ckpt RUN/checkpoints/best``).

A checkpoint is written into a hidden temporary directory and renamed into place, so a process
killed mid-write leaves the previous checkpoints intact and no half-written one visible. What
such a process leaves behind (``.tmp-step_*-PID`` directories, ``.*.tmp`` files of atomic writes)
is removed by the next run that holds the run's lock (:func:`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gptforge.fileio import make_readable
from safetensors.torch import load_model, save_model

CHECKPOINTS = "checkpoints"
PREFIX = "step_"
LOCK_FILE = ".lock"
# Temporaries of this module (.tmp-step_000100-PID, .old-step_000100-PID, the links'
# .tmp-best-PID / .tmp-last-PID) and of gptforge.fileio's atomic writes (.NAME.RANDOM.tmp,
# .NAME.RANDOM.old).
_HELD_LOCKS: dict[Path, int] = {}
_LEFTOVER = re.compile(r"^\.(tmp|old)-(step_\d+|best|last)-\d+$|^\..+\.(tmp|old)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint (all corrupt or none present)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        """Optimiser steps completed when it was written."""
        return int(self.manifest["step"])

    @property
    def val_loss(self) -> float | None:
        """Validation loss at that step, if it was evaluated."""
        value = self.manifest.get("val_loss")
        return None if value is None else float(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lock_run(run_dir: Path) -> int | None:
    """Take the run's exclusive lock (held until the process exits); None if another holds it.

    Only the lock's holder may treat temporaries in the run as stale: their writer is gone.
    A process keeps the lock once taken, so later runs in the same process reuse it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return _HELD_LOCKS[key]
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD_LOCKS[key] = fd
    return fd


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


def remove_leftovers(run_dir: Path) -> tuple[int, int]:
    """Delete the temporaries killed writers left in ``run_dir`` and its checkpoints.

    Call it only while holding :func:`lock_run`: then no other writer can be mid-write.

    Returns:
        How many entries were removed and how many bytes that freed.
    """
    count = freed = 0
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not _LEFTOVER.match(path.name):
                continue
            with contextlib.suppress(OSError):
                size = _size(path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                count, freed = count + 1, freed + size
    return count, freed


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG a training step on ``device`` can touch, as tensors (``weights_only``-loadable):
    the CPU generators and, on a GPU, that GPU's generator (dropout draws from it)."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured; the GPU generator goes to ``device``."""
    torch.set_rng_state(state["torch"].cpu())
    keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list | tuple):  # older checkpoints: one state per visible GPU
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda.cpu(), device)


class CheckpointManager:
    """Save, list, prune and load the checkpoints of one run directory.

    Args:
        run_dir: The run directory; checkpoints go under ``run_dir/checkpoints``.
        keep_last: Most recent checkpoints kept; the best-by-validation one is kept as well.
        warn: Where corrupt-checkpoint warnings go (default: stderr).

    >>> mgr = CheckpointManager("runs/x", keep_last=2)  # doctest: +SKIP
    >>> mgr.save(step=100, model=model, state={"optimizer": opt.state_dict()})  # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        keep_last: int = 2,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.keep_last = keep_last
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))

    def save(
        self,
        *,
        step: int,
        model: torch.nn.Module,
        state: dict[str, Any],
        manifest: dict[str, Any] | None = None,
        write_model: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write checkpoint ``step_{step:06d}`` atomically and prune old ones.

        Args:
            step: Optimiser steps completed.
            model: The (unwrapped) model whose weights are saved.
            state: Tensors/primitives only: optimiser state, RNG, sampler, counters.
            manifest: Extra JSON-able fields (``val_loss``, ``tokens``, ``config``, ...).
            write_model: Writes a model directory (``config.json``, ``model.safetensors``,
                ``tokenizer/``) into the directory it is given, so that every verb can load
                the checkpoint as a model; default: the weights alone.

        Returns:
            The checkpoint directory.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{step:06d}"
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            if write_model is not None:
                write_model(tmp)
            if not (tmp / "model.safetensors").exists():
                # Resume needs every weight, also where write_model wrote only a LoRA adapter.
                save_model(model, str(tmp / "model.safetensors"))
            torch.save(state, tmp / "state.pt")
            make_readable(tmp)
            files = {}
            for fname in ("model.safetensors", "state.pt", "config.json"):
                if fname == "config.json" and not (tmp / fname).exists():
                    continue
                _fsync_file(tmp / fname)
                files[fname] = {
                    "size": (tmp / fname).stat().st_size,
                    "sha256": _sha256(tmp / fname),
                }
            full = {"step": step, "time": time.time(), **(manifest or {}), "files": files}
            (tmp / "manifest.json").write_text(json.dumps(full, indent=2) + "\n")
            _fsync_file(tmp / "manifest.json")
            final = self.dir / name
            if final.exists():  # re-saving a step (resumed run): swap the old one out first
                trash = self.dir / f".old-{name}-{os.getpid()}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return final

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints with a readable manifest, oldest first (file contents not verified)."""
        infos: list[CheckpointInfo] = []
        if not self.dir.is_dir():
            return infos
        for path in sorted(self.dir.glob(f"{PREFIX}*")):
            try:
                manifest = json.loads((path / "manifest.json").read_text())
                infos.append(CheckpointInfo(path, manifest))
            except (OSError, json.JSONDecodeError) as exc:
                self.warn(
                    f"checkpoint {path.name!r} has no readable manifest.json ({exc}); skipped"
                )
        return sorted(infos, key=lambda info: info.step)

    def best(self) -> CheckpointInfo | None:
        """The checkpoint with the lowest validation loss (None if none was evaluated)."""
        scored = [info for info in self.list() if info.val_loss is not None]
        return min(scored, key=lambda info: (info.val_loss, -info.step)) if scored else None

    def prune(self) -> None:
        """Delete all but the last ``keep_last`` checkpoints and the best one."""
        infos = self.list()
        keep = {info.path for info in infos[-self.keep_last :]}
        best = self.best()
        if best is not None:
            keep.add(best.path)
        for info in infos:
            if info.path not in keep:
                shutil.rmtree(info.path, ignore_errors=True)
        if infos:
            self._link("last", infos[-1].path)
        if best is not None:
            self._link("best", best.path)

    def _link(self, name: str, target: Path) -> None:
        """Point ``checkpoints/<name>`` at ``target`` (a relative symlink, swapped atomically)."""
        link = self.dir / name
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        try:
            if link.is_symlink() and os.readlink(link) == target.name:
                return
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(target.name, target_is_directory=True)
            os.replace(tmp, link)
        except OSError as exc:  # a file system without symlinks: the step_* names remain
            self.warn(f"could not link {link} -> {target.name} ({exc}); use {target} instead")

    def verify(self, info: CheckpointInfo) -> None:
        """Raise :class:`CheckpointError` naming the file if sizes or hashes do not match."""
        for fname, expect in info.manifest.get("files", {}).items():
            path = info.path / fname
            if not path.exists():
                raise CheckpointError(f"{path} is missing")
            size = path.stat().st_size
            if size != expect["size"]:
                raise CheckpointError(
                    f"{path} is truncated or altered: {size} bytes, expected {expect['size']}"
                )
            if _sha256(path) != expect["sha256"]:
                raise CheckpointError(f"{path} fails its sha256 check (corrupt)")

    def load(
        self,
        model: torch.nn.Module | None,
        *,
        info: CheckpointInfo | None = None,
        map_location: str | torch.device = "cpu",
    ) -> tuple[CheckpointInfo, dict[str, Any]]:
        """Load the newest usable checkpoint (or ``info``) into ``model``; return its state.

        ``model=None`` reads the state only (an FSDP rank that receives its weights from rank 0).

        A corrupt or truncated checkpoint is reported by name and the previous one is tried.

        Raises:
            CheckpointError: No checkpoint could be loaded.
        """
        candidates = [info] if info is not None else list(reversed(self.list()))
        if not candidates:
            raise CheckpointError(
                f"no checkpoints in {self.dir}; start a fresh run without --resume"
            )
        errors = []
        for cand in candidates:
            try:
                self.verify(cand)
                # On the CPU: RNG states must be CPU tensors, and the optimizer moves its
                # state onto each parameter's device itself.
                state = torch.load(cand.path / "state.pt", map_location="cpu", weights_only=True)
                if model is not None:
                    load_model(
                        model, str(cand.path / "model.safetensors"), device=str(map_location)
                    )
            except Exception as exc:  # noqa: BLE001 - any failure means "try the previous one"
                errors.append(f"{cand.path.name}: {exc}")
                self.warn(
                    f"checkpoint {cand.path.name!r} is corrupt or unreadable ({exc}); "
                    "falling back to the previous checkpoint"
                )
                continue
            return cand, state
        raise CheckpointError(f"no usable checkpoint in {self.dir}: " + "; ".join(errors))
