"""`make test-load`: 64 concurrent 1 MiB Encodes in a loop from another process against a real
tokenizer server; a small Encode and a health check from this process are timed unloaded and
loaded and printed with the server's peak RSS (docs/services.md reports them). Asserted: small
calls are answered correctly, large ones get OK or RESOURCE_EXHAUSTED (never a deadline), and
memory (test_tokenizer_service_load.py checks the refusal itself, deterministically)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gptforge.services.tokenizer import TokenizerClient

MiB = 1024 * 1024

FLOOD = """
import asyncio, sys
from gptforge.api.channel import create_channel
from gptforge.api.tokenizer.v1 import tokenizer_pb2 as pb, tokenizer_pb2_grpc as pb_grpc

async def one(stub, request, codes):
    while True:
        try:
            await stub.Encode(request, timeout=60)
            codes.append("OK")
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code().name)

async def main():
    request = pb.EncodeRequest(texts=["the quick brown fox jumps " * 40_000])  # ~1 MiB
    codes = []
    async with create_channel(sys.argv[1], aio=True) as channel:
        stub = pb_grpc.TokenizerServiceStub(channel)
        tasks = [asyncio.ensure_future(one(stub, request, codes)) for _ in range(64)]
        while len(codes) < 64:
            await asyncio.sleep(0.05)
        print("started", flush=True)
        await asyncio.sleep(float(sys.argv[2]))
        print(" ".join(sorted(set(codes))), len(codes), codes.count("OK"), flush=True)
        for t in tasks:
            t.cancel()

asyncio.run(main())
"""


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise KeyError("VmHWM")


def _time_small_calls(address: str, seconds: float) -> dict[str, float]:
    encode_ms, health_ms = [], []
    with TokenizerClient(address, timeout=30) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            assert c.encode("hello world") == c.encode("hello world")
            encode_ms.append(500 * (time.perf_counter() - began))
            began = time.perf_counter()
            assert c.health() == "SERVING"
            health_ms.append(1000 * (time.perf_counter() - began))
            time.sleep(0.02)
    return {
        "encode_p50": statistics.median(encode_ms),
        "encode_max": max(encode_ms),
        "health_p50": statistics.median(health_ms),
        "health_max": max(health_ms),
    }


@pytest.mark.load
def test_a_flood_of_large_encodes_is_bounded_and_small_calls_answer(tmp_path, capsys):
    from gptforge.tokenizer import Tokenizer

    tok = Tokenizer.train(
        texts=["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=300
    )
    tok.save(tmp_path / "tok")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gptforge.cli", "serve", "tokenizer", "--tokenizer"]
    server = subprocess.Popen(
        [*cmd, str(tmp_path / "tok"), "--port", "0"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        address = server.stdout.readline().split("listening on ")[1].split()[0]
        unloaded = _time_small_calls(address, 3)
        serving = _peak_kib(server.pid)
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, address, "6"], stdout=subprocess.PIPE, text=True
        )
        assert flood.stdout is not None
        assert flood.stdout.readline().strip() == "started"
        loaded = _time_small_calls(address, 4)
        codes, calls, ok = flood.stdout.readline().rsplit(maxsplit=2)
        flood.wait(timeout=60)
        peak = _peak_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert set(codes.split()) <= {"OK", "RESOURCE_EXHAUSTED"} and int(ok) > 0
    # work admitted (32 MiB of request bytes) x ids and reply per byte, plus 64 requests of
    # 1 MiB held as gRPC buffer, bytes and parsed message
    bound = serving + (32 * 8 + 64 * 3) * MiB // 1024
    with capsys.disabled():
        print(
            f"\ntokenizer RSS serving {serving // 1024} MiB, peak {peak // 1024} MiB, bound {bound // 1024} MiB"
        )
        print(f"flood: {calls} Encodes of 1 MiB, {ok} admitted, the rest RESOURCE_EXHAUSTED")
        for name, row in (("unloaded", unloaded), ("loaded", loaded)):
            print(
                f"{name:9s} small Encode p50 {row['encode_p50']:6.1f} ms max {row['encode_max']:6.1f} ms, "
                f"health p50 {row['health_p50']:6.1f} ms max {row['health_max']:6.1f} ms"
            )
    assert peak <= bound, (peak, bound)
