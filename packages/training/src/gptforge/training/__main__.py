"""``python -m gptforge.training {train,finetune} ...``: the entry point for ``torchrun``.

>>> # torchrun --nproc_per_node 2 -m gptforge.training train --preset tiny --data D --out R
"""

from __future__ import annotations

import argparse
import os
import sys

from gptforge.training.cli_args import add_dataclass_args, given
from gptforge.training.config import FinetuneConfig, TrainConfig


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the job, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m gptforge.training")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in (("train", TrainConfig), ("finetune", FinetuneConfig)):
        p = sub.add_parser(name, help=f"{name} (flags are {cls.__name__} fields)")
        add_dataclass_args(p, cls)
        p.add_argument("--resume", default=None, help="continue this run directory")
        p.add_argument(
            "--override",
            action="store_true",
            help="resume with settings that differ from the run's",
        )
    args = parser.parse_args(argv)
    from gptforge.training.loop import TrainingDiverged
    from gptforge.training.runner import run_job

    cls = TrainConfig if args.command == "train" else FinetuneConfig
    kind = "pretrain" if args.command == "train" else "finetune"
    try:
        run_job(kind, given(args, cls), args.resume, override=args.override)
    except (TrainingDiverged, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _exit(status: int) -> None:
    """Exit with ``status``; under ``torchrun`` without the interpreter's C++ teardown.

    A distributed job has left its process group and written its checkpoints by now. On a
    loaded machine a gloo/FSDP rank was seen to die in static destruction after that ("terminate
    called without an active exception", SIGABRT), which failed a finished run; ``os._exit``
    after flushing skips that teardown. Single-process runs exit normally.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    _exit(main())
