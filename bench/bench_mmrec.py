"""MM-Rec vs GPT: validation loss at equal steps, generation memory and tokens/s against context.

Three measurements, all on CPU:

1. Quality. A BPE tokenizer is trained on the embedded default corpus, which is split 90/10
   into train and validation tokens. GPT ``tiny`` and MM-Rec ``mmrec-tiny`` (within a few percent
   of each other's parameter count) train for the same number of steps on the same batches with
   the same AdamW schedule; the table gives the validation loss of each.
2. Transfer. The trained GPT is converted into MM-Rec with ``convert_weights`` (target matched to
   the source), evaluated, fine-tuned for the same number of steps and compared with MM-Rec
   trained from scratch for those steps.
3. Generation. For contexts 1k / 4k / 16k each model (random weights; speed and memory do not
   depend on them) prefills the context through its cache in 1024-token pieces and then decodes
   greedily, on one thread. Speeds are tokens per CPU-second of the process (wall-clock speeds
   beside them), which stays meaningful on a shared machine. Every (model, context) runs in its
   own subprocess so the peak RSS is its own; the cache size is read off the cache buffers.

Usage::

    uv run python bench/bench_mmrec.py            # the numbers in docs/mmrec.md
    uv run python bench/bench_mmrec.py --quick    # small sizes, a minute: checks it all works

Prints markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def corpus_tokens(work: Path, vocab_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Train (or reuse) a tokenizer on the default corpus; return train/val ids and n_vocab."""
    from gptforge.corpus import iter_documents
    from gptforge.tokenizer import EOT, Tokenizer

    tok_dir, ids_file = work / f"tokenizer-{vocab_size}", work / f"tokens-{vocab_size}.npy"
    if not ids_file.exists():
        docs = list(iter_documents("default"))
        log(f"training a {vocab_size}-token BPE on the default corpus ({len(docs)} documents)")
        tok = Tokenizer.train(texts=docs, vocab_size=vocab_size, special_tokens=[EOT],
                              show_progress=False)  # fmt: skip
        tok.save(tok_dir)
        ids: list[int] = []
        for doc in docs:
            ids.extend(tok.encode(doc))
            ids.append(tok.eot_token)
        np.save(ids_file, np.asarray(ids, dtype=np.int32))
    from gptforge.tokenizer import Tokenizer

    n_vocab = Tokenizer.from_dir(tok_dir).n_vocab
    ids = np.load(ids_file)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], n_vocab


def batch(ids: np.ndarray, starts: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([ids[s : s + context] for s in starts]).astype(np.int64)
    y = np.stack([ids[s + 1 : s + 1 + context] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def val_loss(
    model: torch.nn.Module, ids: np.ndarray, context: int, n_batches: int, bsz: int
) -> float:
    """Mean loss over fixed, evenly spread validation windows."""
    model.eval()
    starts = np.linspace(0, len(ids) - context - 2, n_batches * bsz).astype(np.int64)
    losses = [float(model(*batch(ids, starts[i : i + bsz], context))[1])
              for i in range(0, len(starts), bsz)]  # fmt: skip
    model.train()
    return float(np.mean(losses))


def train(model: torch.nn.Module, ids: np.ndarray, args: argparse.Namespace, label: str) -> float:
    """AdamW with linear warmup and cosine decay; the batches depend only on ``args.seed``."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.95))  # fmt: skip
    rng = np.random.default_rng(args.seed)
    warmup = max(1, args.steps // 10)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup)
        if step >= warmup:
            lr = args.lr * (
                0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
            )
        for group in opt.param_groups:
            group["lr"] = lr
        starts = rng.integers(0, len(ids) - args.context - 2, args.batch_size)
        _, loss = model(*batch(ids, starts, args.context))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            log(f"  {label} step {step + 1}/{args.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return time.perf_counter() - start


def quality(args: argparse.Namespace) -> dict[str, Any]:
    from gptforge.conversion.arch import convert_weights, mmrec_config_for_source
    from gptforge.conversion.arch_sources import load_source
    from gptforge.modeling import build_model, get_config

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, n_vocab = corpus_tokens(work, args.vocab_size)
    log(f"{len(train_ids):,} train / {len(val_ids):,} val tokens, vocab {n_vocab}")
    common = dict(vocab_size=n_vocab, block_size=args.context)
    ev = dict(context=args.context, n_batches=args.eval_batches, bsz=args.batch_size)
    rows: dict[str, Any] = {"steps": args.steps, "batch_size": args.batch_size,
                            "context": args.context, "tokens": len(train_ids)}  # fmt: skip

    torch.manual_seed(args.seed)
    gpt = build_model(get_config(args.gpt_preset, **common))
    secs = train(gpt, train_ids, args, "gpt")
    rows["gpt"] = {"params": gpt.num_params(), "val_loss": val_loss(gpt, val_ids, **ev), "s": secs}

    torch.manual_seed(args.seed)
    scratch = build_model(get_config(args.mmrec_preset, **common))
    secs = train(scratch, train_ids, args, "mmrec")
    rows["mmrec"] = {"params": scratch.num_params(), "val_loss": val_loss(scratch, val_ids, **ev),
                     "s": secs}  # fmt: skip

    sd = {k: v.detach().clone() for k, v in gpt.state_dict().items()}
    src_cfg = {"arch": "gpt", **vars(gpt.config)}
    _, analysis = load_source(sd, src_cfg)
    torch.manual_seed(args.seed)
    base = "mmrec-debug" if args.quick else "mmrec-tiny"
    converted = build_model(mmrec_config_for_source(analysis, base=base, block_size=args.context))
    state, report = convert_weights(sd, converted, source_config=src_cfg)
    converted.load_state_dict(state)
    before = val_loss(converted, val_ids, **ev)
    secs = train(converted, train_ids, args, "converted")
    rows["converted"] = {"params": converted.num_params(), "val_loss_before": before,
                         "val_loss": val_loss(converted, val_ids, **ev), "s": secs,
                         "transferred_fraction": report["transferred_fraction"]}  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- generation
def cache_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the generation caches (KV buffers, or MM-Rec states and slot keys/values)."""
    from gptforge.modeling import KVCache

    total = 0
    for m in model.modules():
        if isinstance(m, KVCache):
            total += sum(b.numel() * b.element_size() for b in m.buffers())
    for c in getattr(model, "caches", None) or []:
        total += c.h.numel() * c.h.element_size()
        if c.memory_kv is not None:
            total += sum(t.numel() * t.element_size() for t in c.memory_kv)
    return total


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@torch.inference_mode()
def gen_worker(arch: str, preset: str, context: int, new: int, vocab: int) -> dict[str, Any]:
    from gptforge.modeling import build_model, get_config

    torch.manual_seed(0)
    over: dict[str, Any] = {"vocab_size": vocab}
    if arch == "gpt":
        over["block_size"] = context + new  # learned positions must cover the whole context
    model = build_model(get_config(preset, **over)).eval()
    rss_model = rss_mib()
    model.setup_caches(1, context + new)
    idx = torch.randint(0, vocab, (1, context))
    t0 = time.process_time()
    for lo in range(0, context, 1024):
        hi = min(context, lo + 1024)
        logits, _ = model(idx[:, lo:hi], input_pos=torch.arange(lo, hi))
    prefill_s = time.process_time() - t0
    tok = logits[:, -1].argmax(-1, keepdim=True)
    model(tok, input_pos=torch.tensor([context]))  # warm the decode path
    t0, w0 = time.process_time(), time.perf_counter()
    for i in range(1, new):
        logits, _ = model(tok, input_pos=torch.tensor([context + i]))
        tok = logits[:, -1].argmax(-1, keepdim=True)
    decode_s, decode_wall = time.process_time() - t0, time.perf_counter() - w0
    return {
        "arch": arch, "context": context, "params": model.num_params(),
        "cache_mib": cache_bytes(model) / 2**20, "decode_tok_s": (new - 1) / decode_s,
        "decode_tok_s_wall": (new - 1) / decode_wall,
        "prefill_tok_s": context / prefill_s, "rss_model_mib": rss_model,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def generation(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for context in args.contexts:
        for arch, preset in (("gpt", args.gpt_preset), ("mmrec", args.mmrec_preset)):
            log(f"generation: {arch} at context {context}")
            cmd = [sys.executable, __file__, "--gen-worker", arch, preset, str(context),
                   str(args.new_tokens), str(args.vocab_size)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


# ----------------------------------------------------------------------------- report
def print_tables(q: dict[str, Any] | None, g: list[dict[str, Any]] | None, args) -> None:
    print(f"## MM-Rec vs GPT (CPU, {os.cpu_count()} cores, torch {torch.__version__})\n")
    if q:
        print(f"Default corpus, {q['tokens']:,} training tokens; {q['steps']} steps x "
              f"{q['batch_size']} x {q['context']} tokens, same batches and schedule.\n")  # fmt: skip
        print("| model | params | val loss | train time |\n|---|---:|---:|---:|")
        print(
            f"| GPT `{args.gpt_preset}` | {q['gpt']['params']:,} | {q['gpt']['val_loss']:.3f} "
            f"| {q['gpt']['s']:.0f} s |"
        )
        print(
            f"| MM-Rec `{args.mmrec_preset}` from scratch | {q['mmrec']['params']:,} | "
            f"{q['mmrec']['val_loss']:.3f} | {q['mmrec']['s']:.0f} s |"
        )
        c = q["converted"]
        print(
            f"| MM-Rec converted from that GPT, before fine-tuning | {c['params']:,} | "
            f"{c['val_loss_before']:.3f} | - |"
        )
        print(
            f"| MM-Rec converted, fine-tuned {q['steps']} steps | {c['params']:,} | "
            f"{c['val_loss']:.3f} | {c['s']:.0f} s |"
        )
        print(
            f"\n(transferred fraction of the converted model's parameters: "
            f"{100 * c['transferred_fraction']:.1f}%)\n"
        )
    if g:
        print("One thread; tok/s per CPU-second of the process (wall-clock tok/s in brackets).\n")
        print("| context | model | cache | peak RSS | decode tok/s | prefill tok/s |")
        print("|---:|---|---:|---:|---:|---:|")
        for r in g:
            print(
                f"| {r['context']:,} | {r['arch']} | {r['cache_mib']:.3f} MiB | "
                f"{r['peak_rss_mib']:.0f} MiB | {r['decode_tok_s']:.1f} "
                f"({r['decode_tok_s_wall']:.1f}) | {r['prefill_tok_s']:.0f} |"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--gen-worker":
        arch, preset, context, new, vocab = sys.argv[2:7]
        # One thread, timed by process CPU time: on a shared machine wall time measures the
        # neighbours, CPU time measures the model (tok/s per core).
        torch.set_num_threads(1)
        print(json.dumps(gen_worker(arch, preset, int(context), int(new), int(vocab))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="debug presets, few steps, short contexts")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 100; quick 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", type=int, default=128, help="training context length")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per context")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="default 1024 4096 16384")
    p.add_argument("--only", choices=("quality", "generation"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="tokenizer and token cache")
    args = p.parse_args()
    args.steps = args.steps or (8 if args.quick else 100)
    args.contexts = args.contexts or ([256, 1024] if args.quick else [1024, 4096, 16384])
    args.gpt_preset = "debug" if args.quick else "tiny"
    args.mmrec_preset = "mmrec-debug" if args.quick else "mmrec-tiny"
    if args.quick:
        args.vocab_size, args.context, args.eval_batches = min(args.vocab_size, 512), 64, 2
    args.work_dir = args.work_dir or os.path.join(tempfile.gettempdir(), "gptforge-bench-mmrec")
    q = quality(args) if args.only in (None, "quality") else None
    g = generation(args) if args.only in (None, "generation") else None
    print_tables(q, g, args)


if __name__ == "__main__":
    main()
