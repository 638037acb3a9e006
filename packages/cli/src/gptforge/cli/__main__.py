"""``python -m gptforge.cli``: the ``gptforge`` command, and the entry point under ``torchrun``:
``torchrun --nproc_per_node 2 -m gptforge.cli train --preset tiny --data D --out R``.
"""

import os
import sys

from gptforge.cli.main import main


def _run() -> None:
    try:
        main()
    except SystemExit as exc:
        # A distributed job has left its process group and written its checkpoints by now. On
        # a loaded machine a gloo/FSDP rank was seen to die in static destruction after that
        # ("terminate called without an active exception", SIGABRT), failing a finished run;
        # os._exit after flushing skips that teardown. Single-process runs exit normally.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1 if exc.code else 0)
        raise


_run()
