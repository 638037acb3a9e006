"""Generation benchmark: batch-1 decode tokens/s against transformers (and llama.cpp), reduced
precision weight modes checked against fp32, and the generation service under 1/4/16 streams.

All models are randomly initialised (decode speed does not depend on the weights' values); the
transformers model gets the *same* weights through ``gptforge.conversion``. Decode tokens/s is
``(N - 1) / (time(N tokens) - time(1 token))``, so prefill is not counted, best of ``--reps``.

Usage: ``make bench-generate`` or ``uv run python bench/bench_generate.py [--quick]``; on a busy
shared machine add ``--threads 1 --cpu-time`` to time decode in process CPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from gptforge.modeling import build_model, get_config
from gptforge.sampling import generate
from gptforge.sampling.precision import apply_weight_precision, check_logits
from peers import peer_python

HERE = Path(__file__).resolve().parent


#: Clock for decode timing: wall time, or process CPU time (``--cpu-time``, steadier on a
#: busy shared machine at 1 thread; with more threads OpenMP spin-waiting inflates it).
CLOCK: Callable[[], float] = time.perf_counter


def decode_rates(
    runners: dict[str, Callable[[int], object]], n_new: int, reps: int
) -> dict[str, float]:
    """Decode tokens/s of each ``run(n)`` (generates n tokens), prefill subtracted.

    Runners are interleaved within each repetition so a shared, noisy machine slows them alike;
    the best time of ``reps`` is kept.
    """
    for run in runners.values():
        run(2)  # warm-up: allocations, first-call kernels
    t_n = dict.fromkeys(runners, float("inf"))
    t_1 = dict.fromkeys(runners, float("inf"))
    for _ in range(reps):
        for name, run in runners.items():
            t0 = CLOCK()
            run(n_new)
            t_n[name] = min(t_n[name], CLOCK() - t0)
            t0 = CLOCK()
            run(1)
            t_1[name] = min(t_1[name], CLOCK() - t0)
    return {k: (n_new - 1) / max(t_n[k] - t_1[k], 1e-9) for k in runners}


def hf_twin(model: torch.nn.Module):
    """The transformers GPT2LMHeadModel with the same weights (through gptforge.conversion)."""
    import transformers
    from gptforge.conversion.hf_gpt2 import gpt_config_to_hf, ours_to_hf_gpt2

    cfg = model.config
    hf_cfg = {k: v for k, v in gpt_config_to_hf(cfg).items() if k != "gptforge"}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg)).eval()
    missing, unexpected = hf.load_state_dict(ours_to_hf_gpt2(model.state_dict(), cfg), strict=False)
    assert not unexpected, unexpected
    return hf


#: Runs in the llama-cpp-python environment: loads a GGUF file, then for each line "n" on stdin
#: greedily decodes n tokens after a 16-token prompt and answers "ok" (timed by the parent).
LLAMA_CPP_CHILD = """
import itertools, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=int(sys.argv[2]), n_batch=64,
            verbose=False)
prompt = list(range(1, 17))
print("ready", flush=True)
for line in sys.stdin:
    llm.reset()
    out = list(itertools.islice(llm.generate(prompt, temp=0.0), int(line)))
    print("ok", len(out), flush=True)
"""


def llama_cpp_python() -> str | None:
    """An interpreter with ``llama_cpp`` ($GPTFORGE_LLAMA_CPP_PYTHON or ``make llama-cpp``'s)."""
    return peer_python("llama_cpp", "GPTFORGE_LLAMA_CPP_PYTHON", "llama-cpp-venv")


def small_tokenizer():
    """A 300-token tokenizer: the weights are random, so any tokenizer serves the benches."""
    from gptforge.tokenizer import Tokenizer

    return Tokenizer.train(
        texts=["the quick brown fox jumps over the lazy dog"] * 50,
        vocab_size=300,
        show_progress=False,
    )


def export_for_llama_cpp(model: torch.nn.Module, tmp: Path) -> Path:
    """Save ``model`` as a model directory with a tokenizer, as ``gptforge convert gguf`` needs.

    The weights are random, so any tokenizer serves: a small one is trained here and the
    exporter fills the model's remaining vocabulary rows with unused placeholder tokens.
    """
    from gptforge.modeling.io import save_model_dir

    small_tokenizer().save(tmp / "tokenizer")
    return save_model_dir(model, tmp / "model", tokenizer_dir=tmp / "tokenizer")


class LlamaCppRunner:
    """llama.cpp (llama-cpp-python) decoding our GGUF export in a child process.

    Calling it with ``n`` decodes n tokens greedily and returns when the child answers, so it
    plugs into :func:`decode_rates` next to the in-process runners (wall clock only: the CPU
    time is spent in the child).
    """

    def __init__(self, python: str, model_dir: Path, ftype: str, threads: int) -> None:
        import subprocess

        from gptforge.conversion.gguf_export import export_gguf

        self.path = export_gguf(model_dir, model_dir.parent / f"model-{ftype}.gguf", dtype=ftype,
                                modelfile=False)  # fmt: skip
        self.proc = subprocess.Popen(
            [python, "-c", LLAMA_CPP_CHILD, str(self.path), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._expect("ready")

    def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"llama.cpp child: expected {word!r}, got {line!r}")
        return line

    def __call__(self, n: int) -> object:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        got = int(self._expect("ok").split()[1])
        if got != n:
            raise RuntimeError(f"llama.cpp produced {got} tokens, asked for {n}")
        return got

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _synced(run: Callable[[int], object], device: str) -> Callable[[int], object]:
    """``run`` that returns only once the device has finished (GPU work is asynchronous)."""
    if device != "cuda":
        return run

    def timed(n: int) -> object:
        out = run(n)
        torch.cuda.synchronize()
        return out

    return timed


def bench_decode(
    preset: str,
    n_new: int,
    reps: int,
    modes: list[str],
    with_llama_cpp: bool = True,
    device: str = "cpu",
    compile_modes: tuple[str, ...] = (),
) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(get_config(preset)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 16))
    rows = []
    hf = hf_twin(model).to(device)
    model, prompt = model.to(device), prompt.to(device)

    def ours(m: torch.nn.Module, compile: bool = False) -> Callable[[int], object]:
        return _synced(lambda n: generate(m, prompt, n, temperature=0.0, compile=compile), device)

    def hf_runner(hf_model: torch.nn.Module, static: bool) -> Callable[[int], object]:
        kw = {"cache_implementation": "static"} if static else {}

        def run(n: int) -> object:
            with torch.inference_mode():
                return hf_model.generate(
                    prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                    **kw,
                )  # fmt: skip

        return _synced(run, device)

    check_idx = torch.randint(0, model.config.vocab_size, (1, 64), device=device)
    runners: dict[str, Callable[[int], object]] = {
        "transformers fp32 (KV cache)": hf_runner(hf, static=False)
    }
    if compile_modes:
        # transformers' own compiled decoding: a static cache and a compiled forward (CUDA
        # graphs on a GPU), the recipe of its generation docs.
        hf_compiled = copy.deepcopy(hf)
        mode = "reduce-overhead" if device == "cuda" else None
        hf_compiled.forward = torch.compile(hf_compiled.forward, mode=mode, fullgraph=True)
        runners["transformers fp32 compiled (static cache)"] = hf_runner(hf_compiled, True)
    checks = {}
    for mode in ["float32", *modes]:
        reduced = apply_weight_precision(copy.deepcopy(model), mode)
        checks[f"gptforge {mode}"] = check_logits(model, reduced, check_idx)
        runners[f"gptforge {mode}"] = ours(reduced)
        if mode in compile_modes:
            # fp32: compile the plain model (inductor cannot see into oneDNN's packed weights).
            plain = copy.deepcopy(model) if mode == "float32" else reduced
            runners[f"gptforge {mode} compiled"] = ours(plain, compile=True)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        # llama.cpp on our GGUF export of the same weights, timed interleaved with the rest.
        cpu_timing = CLOCK is time.perf_counter and device == "cpu"
        python = llama_cpp_python() if with_llama_cpp and cpu_timing else None
        if python is not None:
            model_dir = export_for_llama_cpp(model.cpu(), Path(tmp))
            model.to(device)
            for ftype in ("f32", "f16"):
                run = LlamaCppRunner(python, model_dir, ftype, torch.get_num_threads())
                stack.callback(run.close)
                runners[f"llama.cpp {ftype.upper()}"] = run
        elif with_llama_cpp:
            print("[decode] llama.cpp: skipped (no llama-cpp-python: `make llama-cpp` builds it;"
                  " --cpu-time cannot time a child process; the CPU build is not timed against"
                  " a GPU)", file=sys.stderr)  # fmt: skip
        print(f"[decode] {preset}: {', '.join(runners)} ...", file=sys.stderr, flush=True)
        rates = decode_rates(runners, n_new, reps)
    for name, rate in rates.items():
        row: dict = {"preset": preset, "impl": name, "tok_s": rate}
        base = name.removesuffix(" compiled")
        if base in checks and base != "gptforge float32":
            c = checks[base]
            row.update(top1=c.top1_agreement, kl=c.kl_divergence, max_abs=c.max_abs_diff)
        rows.append(row)
    hf_rate = rates["transformers fp32 (KV cache)"]
    for r in rows:
        r["vs_transformers"] = r["tok_s"] / hf_rate
    return rows


def _stream_once(
    address: str,
    seed: int,
    n_new: int,
    barrier: threading.Barrier,
    results: list[tuple[float, list[float]]],
    lock: threading.Lock,
) -> None:
    """One client stream: record its start and the arrival time of every token."""
    from gptforge.services.generation import GenerationClient

    with GenerationClient(address, timeout=600) as client:
        barrier.wait()
        t0 = time.perf_counter()
        stamps = [
            time.perf_counter()
            for ch in client.generate_stream(
                list(range(1, 17)), max_new_tokens=n_new, ignore_eos=True, seed=seed
            )
            if ch.token_ids
        ]
        with lock:
            results.append((t0, stamps))


def bench_service(
    preset: str,
    n_new: int,
    concurrency: list[int],
    slots: int,
    device: str = "cpu",
    compile: bool = False,
) -> list[dict]:
    from gptforge.api.server import ServerConfig
    from gptforge.services.generation import GenerationLimits, serve_in_background

    torch.manual_seed(0)
    tok = small_tokenizer()
    model = build_model(get_config(preset)).eval().to(device)
    ctx = min(model.config.block_size, 16 + n_new + 8)
    limits = GenerationLimits(
        max_batch_size=slots, context_length=ctx, max_tokens_in_flight=slots * ctx * 4
    )
    rows = []
    with serve_in_background(model, tok, ServerConfig(port=0), limits, compile=compile) as bg:
        for c in concurrency:
            print(f"[service] {c} streams ...", file=sys.stderr, flush=True)
            results: list[tuple[float, list[float]]] = []
            lock = threading.Lock()
            barrier = threading.Barrier(c)

            threads = [
                threading.Thread(
                    target=_stream_once, args=(bg.address, i, n_new, barrier, results, lock)
                )
                for i in range(c)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            start = min(t0 for t0, _ in results)
            end = max(s[-1] for _, s in results)
            tokens = sum(len(s) for _, s in results)
            ttft = [s[0] - t0 for t0, s in results]
            itl = [b - a for _, s in results for a, b in zip(s, s[1:], strict=False)]
            q = statistics.quantiles(itl, n=100) if len(itl) > 1 else [0.0] * 99
            rows.append(
                {
                    "preset": preset,
                    "streams": c,
                    "tok_s": tokens / (end - start),
                    "ttft_p50_ms": 1e3 * statistics.median(ttft),
                    "itl_p50_ms": 1e3 * q[49],
                    "itl_p99_ms": 1e3 * q[98],
                }
            )
    one_stream = rows[0]["tok_s"]
    for r in rows:
        r["vs_one_stream"] = r["tok_s"] / one_stream
    return rows


def llama_cpp_summary(rows: list[dict]) -> list[str]:
    """The targets' comparisons: our fp32 vs llama.cpp F32, our best reduced mode vs F16."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        by = {r["impl"]: r for r in rows if r["preset"] == preset}
        f32, f16 = by.get("llama.cpp F32"), by.get("llama.cpp F16")
        if f32 is None or f16 is None:
            continue
        # fp32: the faster of eager and compiled decoding (both read fp32 weights).
        fp32 = max((r for k, r in by.items() if k.startswith("gptforge float32")),
                   key=lambda r: r["tok_s"])  # fmt: skip
        reduced = [r for k, r in by.items() if k.startswith("gptforge ") and "float32" not in k]
        how = " compiled" if fp32["impl"].endswith("compiled") else ""
        line = (f"- {preset}: gptforge fp32{how} / llama.cpp F32 = "
                f"**{fp32['tok_s'] / f32['tok_s']:.2f}x**")  # fmt: skip
        if reduced:
            best = max(reduced, key=lambda r: r["tok_s"])
            line += (f"; gptforge {best['impl'].split()[1]} / llama.cpp F16 = "
                     f"**{best['tok_s'] / f16['tok_s']:.2f}x**")  # fmt: skip
        out.append(line)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny only, few tokens (a smoke run)")
    ap.add_argument("--presets", default="tiny,gpt2", help="models for the decode comparison")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--modes",
        default="float16,int8-dynamic,bfloat16",
        help="reduced-precision weight modes to time and check",
    )
    ap.add_argument("--service-preset", default="tiny")
    ap.add_argument("--service-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time decode in process CPU seconds (use with --threads 1 on a busy machine)",
    )
    ap.add_argument(
        "--no-llama-cpp", action="store_true", help="leave llama.cpp out even when installed"
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile'd decoding (CUDA graphs on a GPU) of fp32 (and bf16 on a GPU), "
        "next to transformers' compiled static-cache decoding",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    if args.quick:
        args.presets, args.new_tokens, args.reps, args.service_tokens = "tiny", 16, 1, 16
    torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    modes = [m for m in args.modes.split(",") if m]
    if args.device == "cuda":  # int8-dynamic is a CPU (fbgemm) mode
        modes = [m for m in modes if m in ("float16", "bfloat16")]
    compile_modes: tuple[str, ...] = ()
    if args.compile:
        compile_modes = ("float32", "bfloat16") if args.device == "cuda" else ("float32",)

    decode_rows = [
        r
        for p in args.presets.split(",")
        for r in bench_decode(
            p,
            args.new_tokens,
            args.reps,
            modes,
            not args.no_llama_cpp,
            args.device,
            compile_modes,
        )  # fmt: skip
    ]
    where = "GPU" if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"### Batch-1 decode, {where}, {args.new_tokens} new tokens\n")
    print("| model | implementation | tokens/s | vs transformers | top-1 vs fp32 | KL vs fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in decode_rows:
        top1 = f"{100 * r['top1']:.1f}%" if "top1" in r else ""
        kl = f"{max(r['kl'], 0.0):.1e}" if "kl" in r else ""
        print(
            f"| {r['preset']} | {r['impl']} | {r['tok_s']:.1f} | {r['vs_transformers']:.2f}x "
            f"| {top1} | {kl} |"
        )
    print()
    for line in llama_cpp_summary(decode_rows):
        print(line)
    print("\nllama.cpp rows appear when llama-cpp-python is installed (not a dependency: "
          "`make llama-cpp` builds it); it decodes our GGUF export of the same weights.\n")  # fmt: skip
    service_rows: list[dict] = []
    if not args.skip_service:
        conc = [int(c) for c in args.concurrency.split(",")]
        service_rows = bench_service(
            args.service_preset, args.service_tokens, conc, max(conc), args.device, args.compile
        )
        print(
            f"### Generation service ({args.service_preset}, {args.service_tokens} tokens per "
            f"stream, continuous batching{', compiled' if args.compile else ''}, {where})\n"
        )
        print(
            "| streams | aggregate tokens/s | vs 1 stream | TTFT p50 ms | ITL p50 ms | ITL p99 ms |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for r in service_rows:
            print(
                f"| {r['streams']} | {r['tok_s']:.1f} | {r['vs_one_stream']:.2f}x | "
                f"{r['ttft_p50_ms']:.1f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"decode": decode_rows, "service": service_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
