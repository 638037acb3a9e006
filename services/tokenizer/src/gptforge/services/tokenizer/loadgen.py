"""A small closed-loop load generator for the tokenizer service (benchmarks, capacity checks).

``concurrency`` clients, each on its own channel, send Encode requests back to back for
``seconds``; every answer is checked against the first one for the same text so a wrong reply
under load is an error, not a number.

>>> result = asyncio.run(encode_load("127.0.0.1:50051", concurrency=8))  # doctest: +SKIP
>>> print(result.row())
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gptforge.services.tokenizer.client import AsyncTokenizerClient

DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Tokenizers turn text into ids; the service does it over gRPC.",
    "İstanbul, 東京 and 🙂 all survive a byte-level BPE round trip.",
)


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency of one load run."""

    concurrency: int
    requests: int
    seconds: float
    texts_per_request: int
    bytes_sent: int
    latencies_ms: tuple[float, ...]

    @property
    def requests_per_s(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds

    @property
    def mb_per_s(self) -> float:
        """Encoded text throughput in MB/s (10^6 bytes)."""
        return self.bytes_sent / self.seconds / 1e6

    def latency_ms(self, q: float) -> float:
        """Latency quantile ``q`` in milliseconds (0 <= q <= 1)."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def row(self) -> str:
        """One human-readable line."""
        return (
            f"concurrency {self.concurrency:>3}: {self.requests_per_s:8.0f} req/s "
            f"({self.mb_per_s:6.2f} MB/s), p50 {self.latency_ms(0.5):6.2f} ms, "
            f"p99 {self.latency_ms(0.99):6.2f} ms"
        )


async def encode_load(
    target: str,
    *,
    concurrency: int = 1,
    seconds: float = 2.0,
    texts: Sequence[str] = DEFAULT_TEXTS,
    texts_per_request: int = 1,
    auth_token: str | None = None,
) -> LoadResult:
    """Drive Encode on ``target`` with ``concurrency`` closed-loop clients for ``seconds``.

    Args:
        target: ``host:port`` of a running tokenizer service.
        concurrency: number of clients, each with its own channel and one request in flight.
        seconds: measuring time after a short warm-up.
        texts: texts cycled through by the clients.
        texts_per_request: batch size of each Encode request.
        auth_token: shared token when the server needs one.
    """
    if concurrency < 1 or seconds <= 0 or texts_per_request < 1 or not texts:
        raise ValueError(
            f"concurrency={concurrency!r}, seconds={seconds!r}, "
            f"texts_per_request={texts_per_request!r} must be positive and texts non-empty"
        )
    batches = [
        [texts[(i + j) % len(texts)] for j in range(texts_per_request)] for i in range(len(texts))
    ]
    clients = [AsyncTokenizerClient(target, auth_token=auth_token) for _ in range(concurrency)]
    expected = [await clients[0].encode_batch(b) for b in batches]  # also warms the server
    latencies: list[float] = []
    counts = [0] * concurrency
    sent = [0] * concurrency
    sizes = [sum(len(t.encode("utf-8")) for t in b) for b in batches]

    async def worker(k: int, deadline: float) -> None:
        client, i = clients[k], k
        while time.perf_counter() < deadline:
            batch = i % len(batches)
            start = time.perf_counter()
            got = await client.encode_batch(batches[batch])
            latencies.append((time.perf_counter() - start) * 1e3)
            if got != expected[batch]:
                raise AssertionError(f"wrong answer under load for {batches[batch]!r}")
            counts[k] += 1
            sent[k] += sizes[batch]
            i += 1

    try:
        await asyncio.gather(*(worker(k, time.perf_counter() + 0.2) for k in range(concurrency)))
        latencies.clear()
        counts, sent = [0] * concurrency, [0] * concurrency
        begin = time.perf_counter()
        await asyncio.gather(*(worker(k, begin + seconds) for k in range(concurrency)))
        elapsed = time.perf_counter() - begin
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return LoadResult(
        concurrency, sum(counts), elapsed, texts_per_request, sum(sent), tuple(latencies)
    )
