"""LoRA vs full fine-tuning on the CPU: exact match, trainable-state memory, peak RSS, step time.

Two models, each fine-tuned both ways on the demo's generated instruction set:

- ``tiny`` (default corpus, 4096-token tokenizer) pre-trained 1000 steps, then fine-tuned
  1000 steps both ways on the demo's task mix: held-out exact match of full fine-tuning vs LoRA
  (rank 16 on attn, mlp and head, plus the rows of the template's special tokens);
- ``gpt2``-shaped (12 layers, 768 wide, the same tokenizer), random weights, a few steps:
  step time and memory only (a CPU cannot train it to a meaningful exact match).

Each fine-tune runs in its own process, so peak RSS (``ru_maxrss``) and CPU seconds are its
own. Trainable state is what the optimiser owns per trainable parameter: the fp32 weight, its
gradient and AdamW's two moments (16 bytes).

    python bench/bench_lora.py                    # both models (about 40 CPU-minutes)
    python bench/bench_lora.py --quick --preset debug --pretrain-steps 60 --steps 40  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LORA = {"lora_rank": 16, "lora_targets": "attn,mlp,head"}


def child(spec: dict) -> dict:
    """Run one fine-tune (in this process) and return its figures."""
    import torch
    from gptforge.training import FinetuneConfig
    from gptforge.training.finetune import finetune

    torch.set_num_threads(int(spec.pop("threads")))
    stamps: list[float] = []
    trainable: list[int] = []

    def record(step: int, model: torch.nn.Module, row: dict) -> None:
        stamps.append(time.perf_counter())
        if not trainable:
            trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))

    result = finetune(FinetuneConfig(**spec), callbacks=[record])
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # skip the first step
    gaps.sort()
    return {
        "exact_match": result.after["accuracy"] if result.after else None,
        "median_step_s": gaps[len(gaps) // 2] if gaps else None,
        "trainable_params": trainable[0],
        "trainable_state_mb": trainable[0] * 16 / 2**20,
    }


def run_child(spec: dict) -> dict:
    """Fine-tune in a fresh process; adds its peak RSS, CPU and wall seconds."""
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=log)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it with its own resource usage
        log.seek(0)
        out = log.read()
    if status:
        raise RuntimeError(f"fine-tune failed (status {status}): {out[-2000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    row["wall_s"] = time.perf_counter() - t0
    row["cpu_s"] = usage.ru_utime + usage.ru_stime
    row["peak_rss_mb"] = usage.ru_maxrss / 1024
    return row


def base_models(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """A demo-style pre-trained small model and (unless ``--quick``) a random ``gpt2`` one."""
    import torch
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir
    from gptforge.tokenizer import Tokenizer
    from gptforge.training import TrainConfig
    from gptforge.training.prepare import prepare_data
    from gptforge.training.pretrain import pretrain

    quick, preset, steps = args.quick, args.preset, args.pretrain_steps
    vocab = {"debug": 512}.get(preset, 4096)
    tok_dir, data_dir = work / f"tok-{vocab}", work / f"data-{vocab}"
    if not (tok_dir / "tokenizer.json").exists():
        Tokenizer.train("default", vocab_size=vocab, show_progress=False).save(tok_dir)
    if not (data_dir / "meta.json").exists():
        prepare_data("default", tok_dir, data_dir, progress=False)
    small = work / f"{preset}-pretrained-{steps}"
    if not (small / "model.safetensors").exists():
        pretrain(
            TrainConfig(
                preset=preset,
                data=str(data_dir),
                out=str(small),
                max_steps=steps,
                eval_interval=steps,
                checkpoint_interval=steps,
                device="cpu",
                progress=False,
            )
        )
    big = work / f"gpt2-random-{vocab}"
    if not quick and not (big / "model.safetensors").exists():
        torch.manual_seed(0)
        n_vocab = Tokenizer.from_dir(tok_dir).n_vocab
        save_model_dir(build_model(get_config("gpt2", vocab_size=n_vocab)), big, tok_dir)
    return {preset: small} if quick else {preset: small, "gpt2": big}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="debug model, a few steps")
    parser.add_argument("--work", default=str(Path.home() / ".cache/gptforge/bench-lora"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="tiny", help="the small model (demo: tiny)")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="of the small model")
    parser.add_argument("--steps", type=int, default=1000, help="fine-tuning steps, both ways")
    parser.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning learning rate")
    parser.add_argument("--lora-lr", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--big-steps", type=int, default=6, help="gpt2-sized steps timed")
    parser.add_argument("--big-batch", type=int, default=32, help="gpt2-sized batch size")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, base in base_models(work, args).items():
        quality = name != "gpt2"
        common = {
            "from_run": str(base),
            "max_steps": args.steps if quality else args.big_steps,
            "batch_size": 32 if quality else args.big_batch,
            "eval_examples": 100 if quality else 1,
            "eval_interval": 0,
            "checkpoint_interval": 0,
            "keep_last": 1,
            "device": "cpu",
            "progress": False,
            "threads": args.threads,
        }
        runs = [("full", {"lr": args.lr})]
        lrs = args.lora_lr if quality else args.lora_lr[:1]
        runs += [(f"lora r16 lr {lr:g}", {**LORA, "lr": lr}) for lr in lrs]
        for label, extra in runs:
            out = work / "runs" / f"{name}-{label.replace(' ', '-')}"
            spec = {**common, **extra, "out": str(out)}
            subprocess.run(["rm", "-rf", str(out)], check=True)
            row = {"model": name, "run": label, **run_child(spec)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    (work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """Markdown rows; ratios against the same model's full fine-tune."""
    full = {r["model"]: r for r in rows if r["run"] == "full"}
    print("| model | run | trainable params | trainable state MB | peak RSS MB | step s | "
          "exact match | EM vs full | state vs full |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        f = full[r["model"]]
        em = r["exact_match"]
        em_ratio = f"{em / f['exact_match']:.0%}" if em is not None and f["exact_match"] else "-"
        print(
            f"| {r['model']} | {r['run']} | {r['trainable_params']:,} | "
            f"{r['trainable_state_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['median_step_s']:.3f} | "
            f"{'-' if em is None else f'{em:.0%}'} | {em_ratio} | "
            f"{r['trainable_state_mb'] / f['trainable_state_mb']:.1%} |"
        )


if __name__ == "__main__":
    main()
