"""``metrics.jsonl`` logging and PNG plots of loss and perplexity (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gptforge.training.io import atomic_write


class MetricsLogger:
    """Append one JSON object per line to ``metrics.jsonl``.

    Rows carry a ``kind`` (``train``, ``eval``, ``event``), the ``step`` and ``tokens`` seen.
    On resume, rows past the resumed step (written after the last checkpoint by the killed run)
    are dropped so the file matches an uninterrupted run.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            atomic_write(self.path, lambda tmp: tmp.write_text(text))
        elif resume_step is None:
            self.path.write_text("")

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Append a row ``{"kind": kind, "step": step, **values}`` and flush it."""
        row = {"kind": kind, "step": step, **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; a torn last line (killed writer) is skipped."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 (byte {exc.start}: {exc.reason}); it was damaged. "
            "Delete the bad lines (or the file: the run keeps its checkpoints) and resume again"
        ) from None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _series(rows: list[dict[str, Any]], kind: str, key: str) -> tuple[list, list, list]:
    picked = [r for r in rows if r.get("kind") == kind and key in r]
    return (
        [r["step"] for r in picked],
        [r.get("tokens", 0) for r in picked],
        [r[key] for r in picked],
    )


def write_plots(metrics_path: str | Path, plots_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` and ``perplexity.png`` (against steps and tokens seen).

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    plots_dir = Path(plots_dir)
    written = []
    for name, transform in (("loss", lambda v: v), ("perplexity", lambda v: math.exp(min(v, 30)))):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for kind, key, label in (("train", "loss", "train"), ("eval", "val_loss", "validation")):
            steps, tokens, values = _series(rows, kind, key)
            ys = [transform(v) for v in values]
            axes[0].plot(steps, ys, label=label, marker="o" if kind == "eval" else None)
            axes[1].plot(tokens, ys, label=label, marker="o" if kind == "eval" else None)
        for ax, xlabel in zip(axes, ("step", "tokens seen"), strict=True):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
            if name == "perplexity":
                ax.set_yscale("log")
        fig.tight_layout()
        out = plots_dir / f"{name}.png"

        def save_png(tmp: Path, fig: Any = fig) -> None:
            fig.savefig(tmp, format="png", dpi=90)

        atomic_write(out, save_png)
        plt.close(fig)
        written.append(out)
    return written
