"""GGUF export types side by side: file size, perplexity against f16 and llama.cpp decode speed.

For each type gptforge writes (``f32 f16 q8_0 q5_1 q5_0 q4_1 q4_0`` with the ``gguf`` package,
``q6_k q5_k_m q4_k_m`` with llama.cpp's quantizer when llama-cpp-python is importable here):

- the file size, and its ratio to f16;
- perplexity on a text with the file's own weights, dequantized back into our PyTorch model
  (GPT family): what the quantization alone costs, measured without llama.cpp;
- where an interpreter with llama-cpp-python exists ($GPTFORGE_LLAMA_CPP_PYTHON or
  ``make llama-cpp``'s), llama.cpp's perplexity on the same tokens, the mean KL divergence of
  its next-token distributions from those of the f16 file and how often their top token agrees
  (both discriminate between types where perplexity barely moves), and its greedy decode rate,
  best of 5, per wall second and per CPU second of the process (the latter moves less with the
  load of a shared machine), measured by llama.cpp itself on the file we wrote.

Without ``--ckpt`` a ``tiny`` GPT (n_embd 256, so every K-type fits its rows) is trained for
``--train-steps`` on the default corpus (Python's documentation), and perplexity is measured on
documents held out from that training.

Usage: ``make bench-gguf`` or ``uv run python bench/bench_gguf.py [--ckpt RUN --text FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peers import peer_python

TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q5_1", "q5_0", "q4_k_m", "q4_1", "q4_0")

# Runs in the llama-cpp-python interpreter: perplexity of the tokens (the log-probabilities are
# saved for the comparison with f16), then the best of 5 greedy decodes, in wall and CPU time.
LLAMA_CPP_CHILD = """
import json, math, sys, time
import numpy as np
from llama_cpp import Llama
path, windows, n_new, threads, out = (sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]),
                                      int(sys.argv[4]), sys.argv[5])
llm = Llama(model_path=path, n_ctx=len(windows[0]), logits_all=True, verbose=False,
            n_threads=threads, n_batch=len(windows[0]))
logps = []
for tokens in windows:
    llm.reset()
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
    m = scores.max(-1, keepdims=True)
    logps.append(scores - m - np.log(np.exp(scores - m).sum(-1, keepdims=True)))
logp = np.stack(logps)  # (W, T-1, V)
np.save(out, logp.astype(np.float32))
targets = np.asarray([w[1:] for w in windows])
nll = -np.take_along_axis(logp, targets[..., None], -1).mean()
tokens, rates, cpu_rates = windows[0], [], []
for _ in range(5):
    llm.reset()
    n = 0
    for _tok in llm.generate(tokens[:16], temp=0.0):
        n += 1
        if n == 1:
            t1, c1 = time.perf_counter(), time.process_time()
        if n == n_new:
            break
    rates.append((n - 1) / (time.perf_counter() - t1))
    cpu_rates.append((n - 1) / max(time.process_time() - c1, 1e-9))
print(json.dumps({"ppl": math.exp(float(nll)), "tok_s": max(rates), "tok_cpu_s": max(cpu_rates)}))
"""


def corpus_texts() -> tuple[str, str]:
    """``(train text, held-out text)`` of the default corpus (the last 5% of documents held out)."""
    from gptforge.corpus.default import default_corpus_path

    docs = [json.loads(line)["text"] for line in default_corpus_path().read_text().splitlines()]
    cut = len(docs) * 19 // 20
    return "\n\n".join(docs[:cut]), "\n\n".join(docs[cut:])


def trained_tiny(tmp: Path, train_text: str, steps: int, chars: int) -> Path:
    """A ``tiny`` GPT trained for ``steps`` AdamW steps on the first ``chars`` of ``train_text``."""
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir
    from gptforge.tokenizer import EOT, Tokenizer

    train_text = train_text[:chars]
    tok = Tokenizer.train(texts=[train_text], vocab_size=2048, special_tokens=[EOT],
                          show_progress=False)  # fmt: skip
    tok.save(tmp / "tokenizer")
    data = torch.tensor(tok.encode(train_text, disallowed_special=()))
    torch.manual_seed(0)
    model = build_model(get_config("tiny", vocab_size=tok.n_vocab, block_size=128))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    for step in range(steps):
        starts = torch.randint(0, len(data) - 129, (16,))
        batch = torch.stack([data[i : i + 129] for i in starts])  # (B, T+1)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            print(f"train step {step}: loss {loss.item():.3f}", file=sys.stderr)
    return save_model_dir(model.eval(), tmp / "model", tokenizer_dir=tmp / "tokenizer")


def dequantized_model(run: Path, gguf_path: Path) -> torch.nn.Module:
    """Our model with every weight replaced by the GGUF file's, dequantized (GPT family)."""
    import gguf
    from gptforge.conversion.gguf_export import GPT2_GGUF_MAP
    from gptforge.conversion.mapping import split_layer
    from gptforge.modeling.io import load_model_dir

    model = load_model_dir(run, dtype=torch.float32)
    params = dict(model.named_parameters())
    ours = {v: k for k, v in GPT2_GGUF_MAP.items() if v is not None}
    with torch.no_grad():
        for t in gguf.GGUFReader(gguf_path).tensors:
            template, layer = split_layer(t.name)
            name = ours[template].format(layer) if layer is not None else ours[template]
            if name not in params:  # zero biases written for llama.cpp's graph
                continue
            data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(
                [int(x) for x in reversed(t.shape)]
            )
            rows = torch.from_numpy(data.astype("float32"))
            params[name][: rows.shape[0]].copy_(rows)
    return model.eval()


def torch_ppl(model: torch.nn.Module, windows: list[list[int]]) -> float:
    x = torch.tensor(windows)  # (W, T)
    with torch.no_grad():
        logits = model(x)[0][:, :-1]  # (W, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    return math.exp(nll.item())


def llama_cpp_row(py: str, path: Path, windows: list[list[int]], n_new: int, threads: int) -> dict:
    """llama.cpp's perplexity and decode rates; its log-probabilities go to ``path`` + ``.npy``."""
    logp = path.with_suffix(".npy")
    res = subprocess.run(
        [py, "-c", LLAMA_CPP_CHILD, str(path), json.dumps(windows), str(n_new), str(threads),
         str(logp)],
        capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def against_f16(logp: np.ndarray, base: np.ndarray) -> dict:
    """Mean KL(f16 || this type) per token and the share of positions whose top token is f16's."""
    kl = (np.exp(base) * (base - logp)).sum(-1).mean()
    top1 = (logp.argmax(-1) == base.argmax(-1)).mean()
    return {"kl": float(kl), "top1": float(top1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=None, help="our run (default: train a tiny GPT)")
    ap.add_argument("--text", type=Path, default=None, help="held-out text file for perplexity")
    ap.add_argument("--train-steps", type=int, default=80)
    ap.add_argument("--train-chars", type=int, default=400_000)
    ap.add_argument("--windows", type=int, default=8, help="perplexity windows of 128 tokens")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--llama-threads", type=int, default=None, help="llama.cpp's threads (default: --threads)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llama_threads = args.llama_threads or args.threads
    from gptforge.conversion.gguf_export import export_gguf
    from gptforge.conversion.tokenizer_files import load_tokenizer_from
    from gptforge.modeling.io import read_config

    llama_py = peer_python("llama_cpp", "GPTFORGE_LLAMA_CPP_PYTHON", "llama-cpp-venv")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.ckpt is None:
            train_text, text = corpus_texts()
            run = trained_tiny(tmp, train_text, args.train_steps, args.train_chars)
        else:
            run = args.ckpt
            text = args.text.read_text(encoding="utf-8") if args.text else corpus_texts()[1]
        cfg = read_config(run)
        ids = load_tokenizer_from(run).encode(text, disallowed_special=())
        T = min(128, cfg.block_size)
        windows = [ids[i * T : (i + 1) * T] for i in range(min(args.windows, len(ids) // T))]
        rows = []
        logps: dict[str, np.ndarray] = {}  # llama.cpp's log-probabilities per type
        for dtype in args.types.split(","):
            path = tmp / f"model-{dtype}.gguf"
            notes: list[str] = []
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                export_gguf(run, path, dtype=dtype, modelfile=False, report=notes.append)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 (a type that cannot be made here is a row)
                rows.append({"type": dtype, "error": str(e).split(":")[0]})
                continue
            row = {"type": dtype, "bytes": path.stat().st_size, "fallbacks": len(notes),
                   "export_s": time.perf_counter() - w0, "export_cpu_s": time.process_time() - c0}  # fmt: skip
            if cfg.arch == "gpt":
                row["torch_ppl"] = torch_ppl(dequantized_model(run, path), windows)
            if llama_py is not None:
                row.update(llama_cpp_row(llama_py, path, windows, args.new_tokens, llama_threads))
                logps[dtype] = np.load(path.with_suffix(".npy"))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    if "f16" in logps:
        for row in rows:
            if row["type"] in logps:
                row.update(against_f16(logps[row["type"]], logps["f16"]))
    print_table(rows, sum(map(len, windows)), llama_py is not None)
    return 0


def print_table(rows: list[dict], n_tokens: int, with_llama: bool) -> None:
    base = next((r for r in rows if r["type"] == "f16" and "bytes" in r), None)
    print(f"\nGGUF types ({n_tokens} tokens for perplexity; ratios against f16)\n")
    head = (
        "| type | file MiB | x f16 | tensors not at the type | ppl (dequantized, PyTorch) | x f16 |"
    )
    if with_llama:
        head += (
            " llama.cpp ppl | x f16 | KL vs f16 (llama.cpp) | top-1 = f16 |"
            " decode tok/s (wall) | decode tok/CPU-s |"
        )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    nan = float("nan")
    for r in rows:
        if "error" in r:
            print(f"| {r['type']} | {r['error']} |")
            continue
        size = r["bytes"] / 2**20
        ratio = r["bytes"] / base["bytes"] if base else nan
        ppl = r.get("torch_ppl", nan)
        pratio = ppl / base["torch_ppl"] if base and "torch_ppl" in base else nan
        line = f"| {r['type']} | {size:.2f} | {ratio:.2f} | {r['fallbacks']} | {ppl:.3f} | {pratio:.4f} |"
        if with_llama:
            lppl = r.get("ppl", nan)
            lratio = lppl / base["ppl"] if base and "ppl" in base else nan
            line += (
                f" {lppl:.3f} | {lratio:.4f} | {r.get('kl', nan):.2e} | {r.get('top1', nan):.1%} |"
                f" {r.get('tok_s', nan):.0f} | {r.get('tok_cpu_s', nan):.0f} |"
            )
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
