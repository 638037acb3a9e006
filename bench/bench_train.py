"""Training throughput: forward + backward + AdamW tokens/s and peak RSS, gptforge vs transformers
(and litgpt for the LLaMA family, when ``make litgpt`` has built its environment).

For each family the same configuration is built twice, as a gptforge model and as transformers'
``GPT2LMHeadModel`` / ``LlamaForCausalLM`` (``attn_implementation="sdpa"``), and trained on the
same random batches with the same ``torch.optim.AdamW``. Each measurement runs in its own
subprocess, so peak RSS (``ru_maxrss``) belongs to that model alone; both sides import torch and
transformers before building anything, so the import baseline is equal. Runs alternate
(ours, theirs, ours, theirs, ...) and the best window of each side is kept, which cancels most of
the noise of a shared machine.

Usage::

    uv run python bench/bench_train.py                # tiny + gpt2 / llama-tiny, fp32 CPU
    uv run python bench/bench_train.py --quick        # a few steps of tiny only
    uv run python bench/bench_train.py --device cuda --dtype bf16 --compile   # GPU with MFU

Prints markdown tables on stdout (ratios > 1 favour gptforge), progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

from peers import peer_python

#: (label, gptforge preset, batch size, timed steps, warmup steps) per family and size.
SUITES: dict[str, list[tuple[str, str, int, int, int]]] = {
    "full": [
        ("gpt tiny", "tiny", 8, 6, 1),
        ("llama tiny", "llama-tiny", 8, 6, 1),
        ("gpt gpt2", "gpt2-ctx256", 1, 2, 1),  # CPU: a few steps are enough
    ],
    "quick": [
        ("gpt tiny", "tiny", 4, 3, 1),
        ("llama tiny", "llama-tiny", 4, 3, 1),
    ],
}
#: Dense bf16 peak FLOP/s used for MFU, by device name (first match wins: the specific names
#: before the generic ones). H100/H200 SXM 989 TFLOP/s, H100 NVL 835, H100 PCIe 756.
GPU_PEAK_FLOPS = {
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- worker: one model, one process -----------------------------------------------------------
def hf_model(config, device: str):
    """transformers' model with the same shape as the gptforge ``config``."""
    import transformers

    if config.arch == "gpt":
        hf_cfg = transformers.GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, layer_norm_epsilon=config.norm_eps,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            tie_word_embeddings=config.tie_embeddings, attn_implementation="sdpa",
        )  # fmt: skip
        cls = transformers.GPT2LMHeadModel
    else:
        hf_cfg = transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.n_embd,
            intermediate_size=config.ffn_hidden, num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
            max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps,
            rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings,
            attn_implementation="sdpa",
        )  # fmt: skip
        cls = transformers.LlamaForCausalLM
    with __import__("torch").device(device):
        return cls(hf_cfg)


def litgpt_model(config, device: str):
    """litgpt's ``GPT`` with the same shape as a gptforge LLaMA ``config`` (litgpt's LLaMA
    blocks: RMSNorm, RoPE over the whole head, LLaMAMLP, grouped-query attention)."""
    from litgpt import Config
    from litgpt.model import GPT

    cfg = Config(
        name="gptforge-peer", block_size=config.block_size, vocab_size=config.vocab_size,
        padded_vocab_size=config.padded_vocab_size, n_layer=config.n_layer,
        n_head=config.n_head, n_query_groups=config.n_kv_head, n_embd=config.n_embd,
        rotary_percentage=1.0, parallel_residual=False, bias=False,
        norm_class_name="RMSNorm", norm_eps=config.norm_eps, mlp_class_name="LLaMAMLP",
        intermediate_size=config.ffn_hidden, rope_base=int(config.rope_theta),
    )  # fmt: skip
    with __import__("torch").device(device):
        return GPT(cfg)


def litgpt_python() -> str | None:
    """An interpreter with litgpt ($GPTFORGE_LITGPT_PYTHON or ``make litgpt``'s environment)."""
    return peer_python("litgpt.model", "GPTFORGE_LITGPT_PYTHON", "litgpt-venv")


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    import torch
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.introspect import flops_per_token

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_config(args.preset)
    if args.impl == "litgpt":
        import litgpt.model  # noqa: F401  (its import baseline, as transformers' below)

        base_rss = rss_mib()
        model = litgpt_model(config, args.device)
    else:
        import transformers  # noqa: F401  (equal import baseline for gptforge and transformers)

        base_rss = rss_mib()
    if args.impl == "gptforge":
        with torch.device(args.device):
            model = build_model(config)
    elif args.impl == "transformers":
        model = hf_model(config, args.device)
    model.train()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=args.fused)
    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)
    B, T = args.batch, config.block_size
    data = torch.randint(0, config.vocab_size, (B, T + 1), device=args.device)
    x, y = data[:, :-1], data[:, 1:]

    def step() -> float:
        with torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32):
            if args.impl == "gptforge":
                # The training path: the head is fused into the loss, no logits are built.
                loss = step_fn(x, y, return_logits=False)[1]
            elif args.impl == "litgpt":
                from litgpt.utils import chunked_cross_entropy  # what litgpt's scripts use

                loss = chunked_cross_entropy(step_fn(x), y)
            else:
                # transformers shifts the labels itself: same tokens, same loss work.
                loss = step_fn(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    times.sort()
    cpu_times.sort()
    best = times[len(times) // 4]  # lower quartile: robust to noisy neighbours, not cherry-picked
    tokens_per_s = B * T / best
    out = {
        "impl": args.impl,
        "preset": args.preset,
        "tokens_per_s": tokens_per_s,
        "median_step_s": times[len(times) // 2],
        # CPU seconds barely depend on other jobs sharing the machine, unlike wall time.
        "tokens_per_cpu_s": B * T / cpu_times[len(cpu_times) // 4],
        "peak_rss_mib": rss_mib(),
        "rss_above_imports_mib": rss_mib() - base_rss,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if args.device == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
        if peak and args.dtype == "bf16":  # the peaks are bf16 tensor-core figures
            out["mfu"] = tokens_per_s * flops_per_token(config, T)["train"] / peak
    return out


# ---- driver -----------------------------------------------------------------------------------
@dataclass
class Result:
    label: str
    ours: dict
    theirs: dict


def run_worker(args: argparse.Namespace, impl: str, preset: str, batch: int, steps: int,
               warmup: int) -> dict:  # fmt: skip
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--preset", preset,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]  # fmt: skip
    cmd += ["--compile"] * args.compile + (["--fused"] if args.fused else ["--no-fused"])
    env = {**os.environ}
    if impl == "litgpt":  # litgpt's own environment; gptforge.modeling needs nothing but torch
        cmd[0] = litgpt_python() or sys.executable
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages",
                           "modeling", "src")  # fmt: skip
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {impl}/{preset} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    best = max(runs, key=lambda r: r["tokens_per_s"])
    cpu = max(r["tokens_per_cpu_s"] for r in runs)
    return {**best, "tokens_per_cpu_s": cpu, "peak_rss_mib": min(r["peak_rss_mib"] for r in runs),
            "rss_above_imports_mib": min(r["rss_above_imports_mib"] for r in runs)}  # fmt: skip


def table(results: list[Result], args: argparse.Namespace) -> str:
    gpu = args.device == "cuda"
    head = ["model", "batch x T", "gptforge tok/s", "transformers tok/s", "speed ratio",
            "ratio per CPU-second",
            "gptforge peak RSS", "transformers peak RSS", "training RSS ratio (theirs/ours)"]  # fmt: skip
    if gpu:
        head += ["gptforge MFU", "transformers MFU", "gptforge peak CUDA MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        o, t = r.ours, r.theirs
        row = [
            r.label, o["shape"], f"{o['tokens_per_s']:,.0f}", f"{t['tokens_per_s']:,.0f}",
            f"**{o['tokens_per_s'] / t['tokens_per_s']:.2f}x**",
            f"{o['tokens_per_cpu_s'] / t['tokens_per_cpu_s']:.2f}x",
            f"{o['peak_rss_mib']:,.0f} MiB", f"{t['peak_rss_mib']:,.0f} MiB",
            f"{t['rss_above_imports_mib'] / max(o['rss_above_imports_mib'], 1):.2f}x",
        ]  # fmt: skip
        if gpu:
            row += [
                f"{o.get('mfu', 0):.1%}",
                f"{t.get('mfu', 0):.1%}",
                f"{o['peak_cuda_mib']:,.0f}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def interleaved(args: argparse.Namespace, suite: list[tuple[str, str, int, int, int]]) -> str:
    """Both models in one process, steps alternated, CPU time per step (shared-machine mode)."""
    import torch
    from gptforge.modeling import build_model, get_config

    torch.set_num_threads(args.threads or 1)
    lines = ["| model | batch x T | gptforge CPU-s/step | transformers CPU-s/step | ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    for label, preset, batch, steps, warmup in suite:
        config = get_config(preset)
        torch.manual_seed(0)
        models = {"gptforge": build_model(config), "transformers": hf_model(config, "cpu")}
        data = torch.randint(0, config.vocab_size, (batch, config.block_size + 1))
        x, y = data[:, :-1], data[:, 1:]
        opts = {
            k: torch.optim.AdamW(m.parameters(), lr=3e-4, fused=args.fused)
            for k, m in models.items()
        }
        cpu: dict[str, list[float]] = {k: [] for k in models}
        for i in range(warmup + 2 * steps):
            for impl, model in models.items():
                c0 = time.process_time()
                if impl == "gptforge":
                    loss = model(x, y, return_logits=False)[1]
                else:
                    loss = model(input_ids=x, labels=x).loss
                loss.backward()
                opts[impl].step()
                opts[impl].zero_grad(set_to_none=True)
                if i >= warmup:
                    cpu[impl].append(time.process_time() - c0)
        ours, theirs = (sorted(cpu[k])[len(cpu[k]) // 2] for k in models)
        log(f"{label}: gptforge {ours:.3f} CPU-s/step, transformers {theirs:.3f}")
        lines.append(f"| {label} | {batch} x {config.block_size} | {ours:.3f} | {theirs:.3f} | "
                     f"**{theirs / ours:.2f}x** |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few steps of the tiny presets only")
    p.add_argument("--repeats", type=int, default=None, help="alternating runs per side")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="AdamW(fused=True) on every side (default: the optimizer gptforge's training loop "
        "and transformers' Trainer both use with torch >= 2.8); --no-fused for foreach",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", default="", help="comma-separated labels, e.g. 'gpt tiny'")
    p.add_argument("--no-litgpt", action="store_true", help="leave litgpt out when installed")
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="one process, alternating steps, median CPU time (for busy shared machines)",
    )
    # worker-only flags
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["gptforge", "transformers", "litgpt"], help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    suite = SUITES["quick" if args.quick else "full"]
    if args.device == "cuda" and not args.quick:  # full context on GPU: the MFU target setting
        suite = [("gpt tiny", "tiny", 64, 20, 5), ("llama tiny", "llama-tiny", 64, 20, 5),
                 ("gpt gpt2", "gpt2", 16, 20, 5)]  # fmt: skip
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        suite = [s for s in suite if s[0] in wanted]
    if args.interleaved:
        print(f"Forward + backward + AdamW, fp32 CPU, {args.threads or 1} thread(s), both models "
              "in one process with alternating steps; median CPU seconds per step.\n")  # fmt: skip
        print(interleaved(args, suite))
        return 0
    repeats = args.repeats or (1 if args.quick else 2)
    results = []
    lit_results = []
    lit_py = None if args.no_litgpt else litgpt_python()
    for label, preset, batch, steps, warmup in suite:
        runs: dict[str, list[dict]] = {"gptforge": [], "transformers": [], "litgpt": []}
        impls = ["gptforge", "transformers"]
        if lit_py and label.startswith("llama"):
            impls.append("litgpt")  # the LLaMA-family peer, in its own environment
        for i in range(repeats):
            for impl in impls:
                r = run_worker(args, impl, preset, batch, steps, warmup)
                log(f"{label} [{i + 1}/{repeats}] {impl:12s} {r['tokens_per_s']:10,.0f} tok/s "
                    f"peak RSS {r['peak_rss_mib']:,.0f} MiB")  # fmt: skip
                runs[impl].append(r)
        from gptforge.modeling import get_config

        shape = f"{batch} x {get_config(preset).block_size}"
        ours, theirs = best_of(runs["gptforge"]), best_of(runs["transformers"])
        ours["shape"] = theirs["shape"] = shape
        results.append(Result(label, ours, theirs))
        if runs["litgpt"]:
            lit = best_of(runs["litgpt"])
            lit["shape"] = shape
            lit_results.append(Result(label, ours, lit))
    setting = f"{args.device}, {args.dtype}" + (", compiled" if args.compile else ", eager")
    setting += (
        ", fused AdamW on every side (both projects' training default)"
        if args.fused
        else ", AdamW (torch's foreach implementation)"
    )
    print(f"Forward + backward + AdamW step, {setting}; same config, same batches, "
          f"best of {repeats} alternating runs per side. `gpt gpt2` is GPT-2 124M at T=256 "
          "on CPU. Training RSS = peak RSS minus the RSS after importing torch+transformers. "
          "The CPU-second ratio uses process CPU time, which other jobs on a shared machine "
          "disturb far less than wall time.\n")  # fmt: skip
    print(table(results, args))
    if lit_results:
        print("\nThe LLaMA family against litgpt's `GPT` (same shape, litgpt's LLaMA blocks, its "
              "`chunked_cross_entropy`), run in litgpt's own environment in the same alternation; "
              "same columns, with litgpt in place of transformers:\n")  # fmt: skip
        print(table(lit_results, args).replace("transformers", "litgpt"))
    elif not args.no_litgpt and any(s[0].startswith("llama") for s in suite):
        print("\nlitgpt: not installed (`make litgpt` builds its environment), no litgpt rows.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
