"""Data preparation benchmark: ``gptforge data prepare`` vs a plain tiktoken baseline.

Generates a text corpus (stripped lines drawn at random from the embedded default corpus, one
file, so one document) at two sizes, and for each size runs, every one as its own process:

- the baseline: tiktoken ``encode_ordinary_batch`` (the same ranks as the gptforge tokenizer)
  over batches of lines, ids appended to a uint16 file, the end-of-text id at the end;
- ``gptforge data prepare --num-proc 1`` and ``--num-proc N``.

It reports peak RSS of the process tree (each process's ``VmHWM``, polled every 20 ms),
CPU-seconds (user + system of the process tree), wall time, MB/s, and whether
the prepared token stream equals the baseline's. Then (``--no-shapes`` skips it) it prepares a
smaller corpus as one huge line, 20,000 small files, ``.jsonl`` and parquet, reporting memory.

Usage: ``make bench-prepare`` or
``uv run python bench/bench_prepare.py [--sizes 50 200] [--num-proc 2] [--no-shapes] [--quick]``.
Targets: peak RSS < 1 GB at both sizes (within 10% of each other), CPU-s <= 1.0x the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BASELINE = r"""
import sys, numpy as np
from gptforge.tokenizer import Tokenizer
tok = Tokenizer.from_dir(sys.argv[1])
enc = tok.encoding
with open(sys.argv[2], encoding="utf-8") as src, open(sys.argv[3], "wb") as out:
    while True:
        lines = src.readlines(1 << 20)  # about 1 MB of whole lines per text
        if not lines:
            break
        batch = ["".join(lines)]
        for _ in range(7):
            more = src.readlines(1 << 20)
            if more:
                batch.append("".join(more))
        for ids in enc.encode_ordinary_batch(batch):
            np.array(ids, dtype=np.uint16).tofile(out)
    np.array([tok.eot_token], dtype=np.uint16).tofile(out)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _peak_mb(proc: psutil.Process) -> float:
    """The process's peak RSS since its exec (``VmHWM``), MB; 0 once it is gone."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return 0.0


def measure(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd``; its wall time, CPU-seconds and the peak RSS of its process tree (MB).

    The peak is each process's ``VmHWM`` (peak since exec, so no sample misses a spike), summed
    over the tree. ``ru_maxrss`` is not used: a child's counts the parent's memory from before
    its exec.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    root, peaks = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                peaks[p.pid] = max(peaks.get(p.pid, 0.0), _peak_mb(p))
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss": sum(peaks.values())}


def make_corpus(path: Path, mb: int, seed: int = 0) -> None:
    from gptforge.corpus import iter_documents

    docs = iter_documents("default")
    # Stripped lines: the baseline cuts its batches after a newline, which changes no id only
    # when the newline sits between two non-space characters.
    lines = [line.strip() for doc in docs for line in doc.splitlines() if line.strip()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < mb * 1_000_000:
            block = "\n".join(rng.choices(lines, k=2000)) + "\n"
            f.write(block)
            written += len(block.encode())


def stream_sha(data_dir: Path) -> tuple[str, int]:
    from gptforge.training.shards import replay

    meta = json.loads((data_dir / "meta.json").read_text())
    digest = hashlib.sha256()
    for block in replay(data_dir, meta):
        digest.update(block.tobytes())
    return digest.hexdigest(), int(meta["tokens"])


def prepare_cmd(src: Path, tok: Path, out: Path, num_proc: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gptforge.cli", "data", "prepare", "--input", str(src),
        "--tokenizer", str(tok), "--out", str(out), "--num-proc", str(num_proc),
        "--no-progress", *extra,
    ]  # fmt: skip


def bench_size(work: Path, tok: Path, mb: int, num_proc: int) -> list[str]:
    corpus = work / f"corpus-{mb}.txt"
    log(f"generating {mb} MB ...")
    make_corpus(corpus, mb)
    size = corpus.stat().st_size / 1e6
    log("baseline ...")
    base = measure([sys.executable, "-c", BASELINE, str(tok), str(corpus), str(work / "b.bin")])
    raw = (work / "b.bin").read_bytes()
    base_sha, base_tokens = hashlib.sha256(raw).hexdigest(), len(raw) // 2
    del raw
    rows = [("tiktoken baseline", base, True)]
    for n in sorted({1, num_proc}):
        log(f"gptforge --num-proc {n} ...")
        out = work / f"data-{n}"
        result = measure(prepare_cmd(corpus, tok, out, n))
        sha, tokens = stream_sha(out)
        rows.append((f"gptforge --num-proc {n}", result, sha == base_sha and tokens == base_tokens))
    (work / "b.bin").unlink()
    corpus.unlink()
    lines = []
    for name, r, equal in rows:
        lines.append(
            f"| {size:.0f} MB | {name} | {r['rss']:.0f} | {r['cpu']:.1f} | "
            f"{r['cpu'] / base['cpu']:.2f}x | {r['wall']:.1f} | {base['wall'] / r['wall']:.2f}x | "
            f"{size / r['wall']:.1f} | {'yes' if equal else 'NO'} |"
        )
    log(f"{base_tokens:,} tokens at {size:.0f} MB")
    return lines


def bench_shapes(work: Path, tok: Path, mb: int, num_proc: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = work / "shape.txt"
    make_corpus(corpus, mb, seed=1)
    text = corpus.read_text()
    lines = text.splitlines()
    shapes = {"one line": work / "line.txt", ".jsonl": work / "r.jsonl"}
    shapes["one line"].write_text(text.replace("\n", " "))
    with open(shapes[".jsonl"], "w") as f:
        for i in range(0, len(lines), 20):
            f.write(json.dumps({"text": "\n".join(lines[i : i + 20])}) + "\n")
    shapes["parquet"] = work / "r.parquet"
    docs = ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    pq.write_table(pa.table({"text": docs}), shapes["parquet"], row_group_size=2000)
    files = work / "files"
    files.mkdir()
    per = len(docs) // 20000 + 1
    for i in range(0, len(docs), per):
        (files / f"{i:07d}.txt").write_text("\n".join(docs[i : i + per]))
    shapes["20k files"] = files
    del text, lines, docs
    rows = []
    for name, src in shapes.items():
        log(f"shape {name} ...")
        r = measure(prepare_cmd(src, tok, work / "shape-out", num_proc))
        rows.append(f"| {name} ({mb} MB) | {r['rss']:.0f} | {r['cpu']:.1f} | {r['wall']:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[50, 200], help="corpus MB")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--shapes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also prepare one huge line, 20,000 files, .jsonl and parquet",
    )
    parser.add_argument("--shape-mb", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 40 MB, shapes 5 MB")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.shape_mb = [10, 40], 5
    from gptforge.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        work = Path(tmp)
        log("training an 8192-id tokenizer on the default corpus ...")
        Tokenizer.train("default", vocab_size=8192, show_progress=False).save(work / "tok")
        print(
            "| corpus | run | peak RSS MB | CPU-s | CPU vs baseline | wall s | speed-up vs "
            "baseline | MB/s | tokens equal |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for mb in args.sizes:
            for line in bench_size(work, work / "tok", mb, args.num_proc):
                print(line, flush=True)
        if args.shapes:
            print("\n| shape | peak RSS MB | CPU-s | wall s |\n|---|---|---|---|")
            for line in bench_shapes(work, work / "tok", args.shape_mb, args.num_proc):
                print(line, flush=True)


if __name__ == "__main__":
    main()
