"""The loop's side of checkpoints: what a step's checkpoint holds, who writes it, and resume.

:class:`~gptforge.training.checkpoint.CheckpointManager` owns the files (atomic step
directories, ``best``/``last`` links, keep-last pruning, the corrupt-checkpoint fallback);
:class:`Checkpointer` fills them from a :class:`~gptforge.training.state.TrainState`: under
FSDP every rank takes part in gathering the whole model and optimizer, rank 0 writes, and on
resume rank 0 chooses and loads the checkpoint for all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptforge.training.checkpoint import (
    LOCK_FILE,
    CheckpointInfo,
    CheckpointManager,
    lock_run,
    remove_leftovers,
    rng_state,
)
from gptforge.training.distributed import barrier, broadcast_from_main, gather_to_main
from torch import nn

if TYPE_CHECKING:
    from gptforge.training.state import Job, TrainState

SaveModel = Callable[[nn.Module, Path], None]


def claim_run_dir(run_dir: Path, write: Callable[[str], object]) -> None:
    """Lock the run, and remove what killed runs left (the lock proves their writers gone)."""
    if lock_run(run_dir) is None:
        # Two writers would interleave checkpoints and overwrite each other's model.
        holder = (run_dir / LOCK_FILE).read_text().strip() or "?"
        raise ValueError(
            f"another process (pid {holder}) is training into {str(run_dir)!r} (it holds "
            f"{LOCK_FILE}); wait for it or stop it, or pass a different --out"
        )
    count, freed = remove_leftovers(run_dir)
    if count:
        write(
            f"removed {count} temporaries left by an interrupted run in {run_dir} "
            f"({freed / 2**20:.1f} MiB freed)"
        )


class Checkpointer:
    """Save and resume the checkpoints of one run from the loop's state.

    Args:
        job: The run (its ``cfg.out`` is the run directory, ``cfg.keep_last`` the pruning).
        save_model: ``save_model(model, directory)`` writes a model directory: the run's top
            level and every checkpoint.
        manifest: Extra JSON fields stored in every checkpoint manifest.
        write: Where messages go.
    """

    def __init__(
        self,
        job: Job,
        *,
        save_model: SaveModel,
        manifest: dict[str, Any] | None,
        write: Callable[[str], None],
    ) -> None:
        self.job = job
        self.run_dir = Path(job.cfg.out)
        self.manager = CheckpointManager(self.run_dir, keep_last=job.cfg.keep_last, warn=write)
        self.save_model = save_model
        self.manifest = manifest or {}
        self.write = write
        self.last_step = -1  # the step of the newest checkpoint this run wrote or resumed
        self.resumed_from: Path | None = None

    def load(self, model: nn.Module | None) -> dict[str, Any]:
        """Load the newest usable checkpoint into ``model`` (falling back past corrupt ones)
        and return its state; under FSDP ``model`` is rank 0's whole model, None elsewhere."""
        if self.job.use_fsdp:
            found, state = self._load_on_rank0(model)
        else:
            assert model is not None  # one process, or a DDP replica: every rank loads
            found, state = self.manager.load(model, map_location=self.job.device)
        self.resumed_from, self.last_step = found.path, int(state["step"])
        return state

    def _load_on_rank0(self, full: nn.Module | None) -> tuple[CheckpointInfo, dict[str, Any]]:
        """Rank 0 loads the newest usable checkpoint into its whole model and tells the other
        ranks which one it was; they read that checkpoint's state only. A failure on rank 0
        reaches every rank, so none waits in a collective that will not come."""
        chosen: list[Any] = [None]
        if full is not None:
            try:
                device = next(full.parameters()).device
                found, state = self.manager.load(full, map_location=device)
                chosen = [found.path.name]
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                chosen = [exc]
        chosen = broadcast_from_main(chosen, self.job.info)
        if isinstance(chosen[0], Exception):
            raise chosen[0]
        if full is not None:
            return found, state
        info = next(c for c in self.manager.list() if c.path.name == chosen[0])
        return self.manager.load(None, info=info)

    def save(self, state: TrainState, val_loss: float | None) -> Path | None:
        """Checkpoint ``state`` (and rewrite the run's top level); every rank must call it.

        Returns:
            The checkpoint directory on rank 0, None on the other ranks.
        """
        info = self.job.info
        # Each rank's generators (ranks draw different dropout masks), collected on rank 0.
        rngs = gather_to_main(rng_state(self.job.device), info)
        gathered = self._gather_fsdp(state) if self.job.use_fsdp else None
        path = None
        if info.is_main:
            assert rngs is not None  # rank 0 receives every rank's states
            saved = {
                "optimizer": gathered if self.job.use_fsdp else state.optimizer.state_dict(),
                "rng": rngs[0],
                "rng_ranks": rngs,
                "sampler": state.sampler.state_dict(),
                "scaler": state.scaler.state_dict(),
                "step": state.step,
                "tokens": state.tokens,
            }
            path = self._write(state, saved, val_loss)
        barrier(info)
        self.last_step = state.step
        return path

    def _gather_fsdp(self, state: TrainState) -> dict[str, Any] | None:
        """Collectives on every rank: rank 0 receives whole CPU copies of the weights (into
        its export model) and returns the whole optimizer state."""
        from gptforge.training import fsdp

        weights = fsdp.full_model_state(state.model)
        optimizer_state = fsdp.full_optimizer_state(state.model, state.optimizer)
        if self.job.info.is_main:
            state.export_model.load_state_dict(weights)
        return optimizer_state

    def _write(self, state: TrainState, saved: dict[str, Any], val_loss: float | None) -> Path:
        """Rank 0: the top level first (a run killed at its first save still has its
        tokenizer), then the checkpoint directory."""
        model = state.export_model
        self.save_model(model, self.run_dir)
        return self.manager.save(
            step=state.step,
            model=model,
            state=saved,
            manifest={**self.manifest, "tokens": state.tokens, "val_loss": val_loss},
            write_model=functools.partial(self.save_model, model),
        )

    def newest(self) -> Path | None:
        """The newest checkpoint on disk (the last good one after a divergence)."""
        saved = self.manager.list()
        return saved[-1].path if saved else None

    def keep_best(self, model: nn.Module) -> None:
        """Load the best-by-validation checkpoint into ``model`` and make it the top level."""
        best = self.manager.best()
        if best is None:
            self.write("--keep best: no checkpoint has a validation loss; the last weights stay")
            return
        self.manager.load(model, info=best, map_location=next(model.parameters()).device)
        self.save_model(model, self.run_dir)
        self.write(
            f"kept the best checkpoint as the run's model: step {best.step}, "
            f"val loss {best.val_loss:.4f}"
        )
