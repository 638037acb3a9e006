"""What a SIGKILLed run leaves is removed by the next run; the run's tokenizer is never swapped."""

from __future__ import annotations

import signal
import subprocess

from gptforge.tokenizer import Tokenizer

from tests.training.helpers import PYTHON, child_env

# A real training process killed by SIGKILL in the middle of a write: ``where`` is
# "checkpoint" (inside CheckpointManager.save, after model.safetensors is in its temporary
# directory) or "model" (inside the atomic write of the run's top-level model.safetensors).
CHILD = """
import os, signal
import torch
torch.set_num_threads(1)
import gptforge.modeling.io as model_io
import gptforge.training.checkpoint as checkpoint
from gptforge.training.pretrain import pretrain
from tests.training.helpers import debug_config

where = {where!r}
real_fsync, real_save_file = checkpoint._fsync_file, model_io.save_file
saves = []

def fsync_then_die(path):
    real_fsync(path)
    if where == "checkpoint" and path.name == "model.safetensors":
        os.kill(os.getpid(), signal.SIGKILL)

def save_then_die(tensors, path, metadata=None):
    real_save_file(tensors, path, metadata=metadata)
    saves.append(path)
    # Each save writes the top level, then the checkpoint (a model directory too): call 3 is
    # the second save's top-level write.
    if where == "model" and len(saves) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint._fsync_file, model_io.save_file = fsync_then_die, save_then_die
cfg = debug_config({data!r}, {out!r}, max_steps=6, checkpoint_interval=2)
pretrain(cfg, resume={resume})
"""


def _run(data_dir, out, where: str, resume: bool) -> subprocess.CompletedProcess:
    code = CHILD.format(where=where, data=str(data_dir), out=str(out), resume=resume)
    return subprocess.run(
        [PYTHON, "-c", code], env=child_env(), capture_output=True, text=True, timeout=240
    )


def _leftovers(run):
    return sorted(
        p.name
        for folder in (run, run / "checkpoints")
        for p in folder.iterdir()
        if p.name.startswith(".") and p.name != ".lock"
    )


def test_sigkilled_writes_are_cleaned_by_the_next_run_which_says_how_much(tmp_path, data_dir):
    run = tmp_path / "run"
    killed = _run(data_dir, run, "model", resume=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = _leftovers(run)
    assert any(n.startswith(".model.safetensors.") and n.endswith(".tmp") for n in first), first
    Tokenizer.from_dir(run / "tokenizer")  # the run kept a usable tokenizer

    killed = _run(data_dir, run, "checkpoint", resume=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    output = killed.stdout + killed.stderr
    assert f"removed {len(first)} temporaries left by an interrupted run" in output, output
    second = _leftovers(run)
    assert not set(first) & set(second), (first, second)
    assert any(n.startswith(".tmp-step_") for n in second), second
    tmp_weights = next((run / "checkpoints").glob(".tmp-step_*/model.safetensors"))
    mib = tmp_weights.stat().st_size / 2**20
    Tokenizer.from_dir(run / "tokenizer")

    done = _run(data_dir, run, "none", resume=True)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert f"removed {len(second)} temporaries left by an interrupted run" in output, output
    freed = float(
        output.split("temporaries left by an interrupted run in ")[1].split("(")[1].split()[0]
    )
    assert freed >= round(mib, 1) - 0.05
    assert _leftovers(run) == []
    names = [p.name for p in (run / "checkpoints").iterdir()]
    assert all(n.startswith("step_") or n in ("best", "last") for n in names), names


def test_the_run_tokenizer_is_written_once(tmp_path, data_dir):
    from gptforge.training.pretrain import pretrain

    from tests.training.helpers import debug_config

    seen: list[int] = []
    run = tmp_path / "run"

    def watch(step, model, row):
        if (run / "tokenizer").exists():
            seen.append((run / "tokenizer").stat().st_ino)

    pretrain(debug_config(data_dir, run, max_steps=6, checkpoint_interval=2), callbacks=[watch])
    assert len(seen) >= 3 and len(set(seen)) == 1, seen  # the same directory, never replaced
    assert (run / "tokenizer").stat().st_ino == seen[0]


def test_a_half_swapped_best_or_last_link_is_a_leftover(tmp_path):
    import os

    from gptforge.training.checkpoint import remove_leftovers

    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_000001").mkdir(parents=True)
    os.symlink("step_000001", ckpts / ".tmp-best-123")
    os.symlink("step_000001", ckpts / "best")
    assert remove_leftovers(tmp_path)[0] == 1
    assert sorted(os.listdir(ckpts)) == ["best", "step_000001"]


def test_a_second_writer_into_a_locked_run_is_refused(tmp_path):
    import sys

    import pytest
    from gptforge.training.checkpoint import LOCK_FILE
    from gptforge.training.checkpointer import claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid}.*different --out"):
            claim_run_dir(run, print)
    finally:
        holder.kill()
        holder.wait()
