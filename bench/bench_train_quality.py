"""Training quality: our default recipe vs a plain baseline on the default corpus (``tiny``).

Recipe: AdamW (decoupled decay on matrices only), linear warmup, cosine decay to ``min_lr``,
gradient clipping, tied input/output embeddings (the ``TrainConfig`` defaults).
Baseline: AdamW at a constant learning rate, no warmup, no tying (same peak LR, batch, steps).

Both runs take the same number of steps on the same data; the report gives the final validation
loss of each, the recipe's validation loss at the baseline's wall time, the time each needs to
reach the baseline's final validation loss, and the training-loop overhead (data, logging,
checkpointing) as a share of step time.

    python bench/bench_train_quality.py                       # tiny, 300 steps
    python bench/bench_train_quality.py --preset debug --steps 20 --vocab-size 512   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def _prepare(work: Path, vocab_size: int) -> Path:
    from gptforge.tokenizer import Tokenizer
    from gptforge.training.prepare import prepare_data

    tok_dir, data_dir = work / f"tokenizer-{vocab_size}", work / f"data-{vocab_size}"
    if not (tok_dir / "tokenizer.json").exists():
        Tokenizer.train("default", vocab_size=vocab_size, show_progress=False).save(tok_dir)
    if not (data_dir / "meta.json").exists():
        prepare_data("default", tok_dir, data_dir, progress=False)
    return data_dir


def _time_to(rows: list[dict], target: float) -> float | None:
    for row in rows:
        if row["val_loss"] <= target:
            return row["elapsed"]
    return None


def _val_at(rows: list[dict], seconds: float) -> float:
    before = [r for r in rows if r["elapsed"] <= seconds]
    return (before or rows[:1])[-1]["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument(
        "--lr", type=float, default=None, help="peak LR of both (default: TrainConfig's)"
    )
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--work-dir", default="runs/bench-train-quality")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--quick", action="store_true", help="tiny for 100 steps at batch 8 (a few CPU-minutes)"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.eval_interval = 100, 8, 20

    from gptforge.training.config import TrainConfig
    from gptforge.training.metrics import read_metrics
    from gptforge.training.pretrain import pretrain

    work = Path(args.work_dir)
    data_dir = _prepare(work, args.vocab_size)
    common = dict(
        preset=args.preset,
        data=str(data_dir),
        max_steps=args.steps,
        batch_size=args.batch_size,
        context_length=args.context_length,
        eval_interval=args.eval_interval,
        eval_batches=8,
        checkpoint_interval=0,
        progress=False,
        device="cpu",
    )
    if args.lr is not None:
        common["lr"] = args.lr
    runs = {
        "recipe": TrainConfig(out=str(work / "recipe"), **common),
        "baseline": TrainConfig(
            out=str(work / "baseline"),
            lr_schedule="constant",
            warmup_steps=0,
            tie_weights=False,
            **common,
        ),
    }
    results = {}
    for name, cfg in runs.items():
        shutil.rmtree(cfg.out, ignore_errors=True)
        start = time.perf_counter()
        result = pretrain(cfg)
        rows = read_metrics(Path(cfg.out) / "metrics.jsonl")
        evals = [r for r in rows if r["kind"] == "eval"]
        finished = [r for r in rows if r.get("event") == "finished"][-1]
        results[name] = {
            "val_loss": result.val_loss,
            "seconds": time.perf_counter() - start,
            "loop_seconds": finished["seconds"],
            "overhead_fraction": finished["overhead_fraction"],
            "evals": evals,
        }
    target = results["baseline"]["val_loss"]
    base_time = results["baseline"]["loop_seconds"]
    for res in results.values():
        res["time_to_baseline_loss"] = _time_to(res["evals"], target)
    recipe_at_base_time = _val_at(results["recipe"]["evals"], base_time)

    print(
        f"\n## Training quality ({args.preset}, {args.steps} steps, batch {args.batch_size}x{args.context_length}, "
        f"vocab {args.vocab_size}, default corpus)\n"
    )
    print(
        "| run | final val loss | loop time (s) | time to baseline's final val loss (s) | loop overhead |"
    )
    print("|---|---|---|---|---|")
    for name, res in results.items():
        ttb = res["time_to_baseline_loss"]
        print(
            f"| {name} | {res['val_loss']:.4f} | {res['loop_seconds']:.1f} | "
            f"{'not reached' if ttb is None else f'{ttb:.1f}'} | {res['overhead_fraction']:.1%} |"
        )
    print(
        f"\nRecipe val loss at the baseline's wall time ({base_time:.1f} s): {recipe_at_base_time:.4f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
