"""Tokenizer benchmark: gptforge vs HF tokenizers, raw tiktoken and rustbpe, side by side.

Measured in one run, on the embedded default corpus and on a ~20 MB corpus built from it
(the default corpus repeated):

- training time of a byte-level BPE (GPT-2 regex) vs HF ``tokenizers`` alone and ``rustbpe``;
- encode throughput in MB/s, single thread and batched, vs raw ``tiktoken`` (an Encoding built
  from the same ranks) and HF ``tokenizers`` (the same tokenizer.json);
- tokenizer service Encode requests/s at concurrency 1, 8 and 32 (``gptforge.services.tokenizer``).

Every timing is the best of ``--repeats`` runs. stdout gets markdown tables only; progress goes
to stderr. Usage: ``make bench-tokenizer`` or
``uv run python bench/bench_tokenizer.py [--small] [--vocab-size N] [--big-mb MB]``.
Targets: encode >= 0.9x raw tiktoken and >= 4x HF tokenizers single-threaded;
training time <= 1.1x HF tokenizers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from gptforge.corpus import iter_documents  # noqa: E402
from gptforge.tokenizer import GPT2_PATTERN, Tokenizer  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Timing:
    """Best wall time and best process CPU time (all threads) of repeated runs, seconds.

    On a busy shared machine wall time also measures the neighbours; CPU time does not, so
    both are reported.
    """

    wall: float
    cpu: float


def best_of(repeats: int, fn: Callable[[], object]) -> Timing:
    """Smallest wall and CPU time of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(min(walls), min(cpus))


@dataclass
class Corpus:
    name: str
    docs: list[str]

    @property
    def nbytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.docs)

    @property
    def mb(self) -> float:
        return self.nbytes / 1e6


def build_corpora(small: bool, big_mb: float) -> list[Corpus]:
    docs = list(iter_documents("default"))
    if small:  # a quick check that everything runs
        docs = docs[: max(1, len(docs) // 8)]
        big_mb = min(big_mb, 2.0)
    base = Corpus("default", docs)
    copies = max(1, round(big_mb * 1e6 / base.nbytes))
    big = Corpus(f"default x{copies}", docs * copies)
    return [base, big]


# --- training ------------------------------------------------------------------------------
def train_hf_alone(docs: list[str], vocab_size: int) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(docs, trainer=trainer)
    hf.add_special_tokens(["<|endoftext|>"])


def train_rustbpe(docs: list[str], vocab_size: int) -> None:
    import rustbpe

    rustbpe.Tokenizer().train_from_iterator(iter(docs), vocab_size - 1, pattern=GPT2_PATTERN)


def bench_training(corpora: list[Corpus], vocab_size: int, repeats: int) -> list[str]:
    try:
        import rustbpe  # noqa: F401

        have_rustbpe = True
    except ImportError:
        have_rustbpe = False
    rows = [
        f"Training a {vocab_size}-token byte-level BPE (GPT-2 regex), best of {repeats}, wall "
        "seconds (ratio = gptforge / peer, < 1 is faster; ratio CPU: the same on process CPU "
        "time, all threads):",
        "",
        "| corpus | MB | gptforge s | HF tokenizers s | ratio | ratio CPU | rustbpe s | ratio "
        "| ratio CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus in corpora:
        log(f"training on {corpus.name} ({corpus.mb:.1f} MB)")
        ours = best_of(
            repeats,
            lambda c=corpus: Tokenizer.train(
                texts=c.docs, vocab_size=vocab_size, show_progress=False
            ),
        )
        hf = best_of(repeats, lambda c=corpus: train_hf_alone(c.docs, vocab_size))
        if have_rustbpe:
            rb = best_of(repeats, lambda c=corpus: train_rustbpe(c.docs, vocab_size))
            rb_cells = f"{rb.wall:.2f} | {ours.wall / rb.wall:.2f}x | {ours.cpu / rb.cpu:.2f}x"
        else:
            rb_cells = "not installed | - | -"
        rows.append(
            f"| {corpus.name} | {corpus.mb:.1f} | {ours.wall:.2f} | {hf.wall:.2f} | "
            f"{ours.wall / hf.wall:.2f}x | {ours.cpu / hf.cpu:.2f}x | {rb_cells} |"
        )
    return rows


# --- encoding ------------------------------------------------------------------------------
def encode_times(
    tok: Tokenizer, raw: object, hf: object, docs: list[str], threads: int, repeats: int
) -> tuple[dict[str, Timing], dict[str, Timing]]:
    """Best wall times of encoding ``docs`` one by one and batched, per implementation."""
    for warm in (tok.encode_batch, raw.encode_batch):  # type: ignore[attr-defined]
        warm(docs[:64], num_threads=threads)  # first calls build per-thread regex state
    hf.encode_batch(docs[:64])  # type: ignore[attr-defined]
    single = {
        "gptforge": best_of(repeats, lambda: [tok.encode(d) for d in docs]),
        "tiktoken": best_of(repeats, lambda: [raw.encode(d) for d in docs]),  # type: ignore[attr-defined]
        "hf": best_of(repeats, lambda: [hf.encode(d, add_special_tokens=False) for d in docs]),  # type: ignore[attr-defined]
    }
    batched = {
        "gptforge": best_of(repeats, lambda: tok.encode_batch(docs, num_threads=threads)),
        "tiktoken": best_of(repeats, lambda: raw.encode_batch(docs, num_threads=threads)),  # type: ignore[attr-defined]
        "hf": best_of(repeats, lambda: hf.encode_batch(docs, add_special_tokens=False)),  # type: ignore[attr-defined]
    }
    return single, batched


def bench_encoding(tok: Tokenizer, corpora: list[Corpus], threads: int, repeats: int) -> list[str]:
    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer

    raw = tiktoken.Encoding(
        "raw",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=tok.mergeable_ranks,
        special_tokens=tok.special_tokens,
    )
    hf = HFTokenizer.from_str(tok.hf.to_str())
    rows = [
        f"Encoding with a {tok.n_vocab}-token tokenizer, MB/s on wall time (best of {repeats}; "
        "ratio = gptforge / peer, > 1 is faster; ratio CPU: the same on process CPU time; "
        f"batched = {threads} threads for gptforge and tiktoken, rayon on all cores for HF):",
        "",
        "| corpus | mode | gptforge | tiktoken | ratio | ratio CPU | HF tokenizers | ratio "
        "| ratio CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus in corpora:
        docs, mb = corpus.docs, corpus.mb
        expected = [tok.encode(d, disallowed_special=()) for d in docs[:50]]
        assert [raw.encode_ordinary(d) for d in docs[:50]] == expected
        assert [e.ids for e in hf.encode_batch(docs[:50], add_special_tokens=False)] == expected
        log(f"encoding {corpus.name} ({mb:.1f} MB)")
        single, batched = encode_times(tok, raw, hf, docs, threads, repeats)
        for mode, t in (("single thread", single), ("batched", batched)):
            ours, tk, h = (mb / t[k].wall for k in ("gptforge", "tiktoken", "hf"))
            cpu_tk = t["tiktoken"].cpu / t["gptforge"].cpu
            cpu_hf = t["hf"].cpu / t["gptforge"].cpu
            rows.append(
                f"| {corpus.name} | {mode} | {ours:.1f} | {tk:.1f} | {ours / tk:.2f}x | "
                f"{cpu_tk:.2f}x | {h:.1f} | {ours / h:.2f}x | {cpu_hf:.2f}x |"
            )
    return rows


# --- service -------------------------------------------------------------------------------
def bench_service(tok: Tokenizer, seconds: float, levels: tuple[int, ...]) -> list[str]:
    try:
        from gptforge.services.tokenizer.loadgen import encode_load
        from gptforge.services.tokenizer.server import serve_in_background
    except ImportError as e:
        return [f"Service: skipped, gptforge.services.tokenizer is not available ({e})."]
    rows = [
        f"Tokenizer service Encode over gRPC on loopback ({seconds:g} s per level, one short "
        "text per request, each answer checked):",
        "",
        "| concurrency | requests/s | MB/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    with serve_in_background(tok) as server:
        for level in levels:
            log(f"service load at concurrency {level}")
            result = asyncio.run(encode_load(server.address, concurrency=level, seconds=seconds))
            rows.append(
                f"| {level} | {result.requests_per_s:.0f} | {result.mb_per_s:.2f} | "
                f"{result.latency_ms(0.5):.2f} | {result.latency_ms(0.99):.2f} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", "--quick", action="store_true", help="tiny sizes: a quick check")
    parser.add_argument("--vocab-size", type=int, default=None, help="default 8192 (--small: 2048)")
    parser.add_argument("--big-mb", type=float, default=20.0, help="size of the large corpus")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--small: 1)")
    parser.add_argument("--threads", type=int, default=8, help="threads of batched encoding")
    parser.add_argument(
        "--service-seconds", type=float, default=None, help="default 3 (--small: 0.5)"
    )
    parser.add_argument("--no-service", action="store_true", help="skip the gRPC service part")
    args = parser.parse_args(argv)
    vocab_size = args.vocab_size or (2048 if args.small else 8192)
    repeats = args.repeats or (1 if args.small else 3)
    seconds = args.service_seconds or (0.5 if args.small else 3.0)

    corpora = build_corpora(args.small, args.big_mb)
    out = bench_training(corpora, vocab_size, repeats)
    tok = Tokenizer.train(texts=corpora[0].docs, vocab_size=vocab_size, show_progress=False)
    out += [""] + bench_encoding(tok, corpora, args.threads, repeats)
    if not args.no_service:
        out += [""] + bench_service(tok, seconds, (1, 8, 32))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
