"""`make test-load`: one client sends maximum-size requests in a loop against a real server
process; other streams' largest inter-token gap, health-check latency and the server's peak RSS
are measured unloaded and loaded and printed (docs/services.md reports them).

The only assertions are on correctness and on memory: every stream completes, every attack is
refused with INVALID_ARGUMENT, and the peak RSS stays under the documented bound
``serving RSS + clients x (2 x largest message sent + 4 x max_receive_message_bytes)``
(serving: the peak under ordinary streams; gRPC holds an oversized message, in its frames and
reassembled, before it refuses it; an accepted one exists as gRPC's buffer, its bytes, the
parsed message and the prompt string) (the message in gRPC's buffer, its bytes,
the parsed message and the prompt string, for each maximum-size request in flight).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from gptforge.services.generation import GenerationClient
from gptforge.services.generation.server import longest_token_bytes

MiB = 1024 * 1024
RECEIVE = 4 * MiB  # the generation service's default max_receive_message_bytes
STREAMS, TOKENS = 3, 300


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


ATTACKER = """
import ast, sys
import grpc
from gptforge.services.generation import GenerationClient

attack = [piece * count for piece, count in ast.literal_eval(sys.argv[2])]
with GenerationClient(sys.argv[1], timeout=60) as c:
    i = 0
    while True:
        try:
            c.generate(attack[i % len(attack)], max_new_tokens=1)
            print("OK", flush=True)
        except grpc.RpcError as exc:
            print(exc.code().name, flush=True)
        i += 1
"""


def _measure(address: str, attack: list[tuple[str, int]] | None) -> dict[str, float]:
    """Largest inter-token gap of STREAMS streams and health latency, with or without attack."""
    gaps: list[float] = []
    health_ms: list[float] = []
    refused: list[grpc.StatusCode] = []
    done = threading.Event()
    attacking = threading.Event()

    def stream(seed: int) -> None:
        with GenerationClient(address, timeout=300) as c:
            last, worst, count = None, 0.0, 0
            for chunk in c.generate_stream(
                [1, 2, 3], max_new_tokens=TOKENS, ignore_eos=True, seed=seed
            ):
                now = time.perf_counter()
                if last is not None and chunk.token_ids:
                    worst = max(worst, now - last)
                last = now
                count += len(chunk.token_ids)
            assert count == TOKENS
            gaps.append(worst)

    def probe() -> None:
        with GenerationClient(address, timeout=30) as c:
            while not done.is_set():
                began = time.perf_counter()
                assert c.health() == "SERVING"
                health_ms.append(1000 * (time.perf_counter() - began))
                time.sleep(0.05)

    def attacker() -> None:
        # Its own process, so building 16 MiB requests does not slow this one's clients.
        assert attack is not None
        proc = subprocess.Popen(
            [sys.executable, "-c", ATTACKER, address, repr(attack)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        refused.append(getattr(grpc.StatusCode, proc.stdout.readline().strip()))
        attacking.set()
        done.wait()
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        refused.extend(getattr(grpc.StatusCode, name) for name in out.split())

    side = [threading.Thread(target=probe)]
    if attack is not None:
        side.append(threading.Thread(target=attacker))
    for t in side:
        t.start()
    if attack is not None:
        assert attacking.wait(120)  # the attack is under way before the streams start
    streams = [threading.Thread(target=stream, args=(s,)) for s in range(STREAMS)]
    for t in streams:
        t.start()
    for t in streams:
        t.join()
    done.set()
    for t in side:
        t.join()
    assert len(gaps) == STREAMS
    assert set(refused) <= {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }, set(refused)
    return {
        "max_gap_ms": 1000 * max(gaps),
        "health_p50_ms": statistics.median(health_ms),
        "health_max_ms": max(health_ms),
        "attacks": len(refused),
    }


@pytest.mark.load
def test_max_size_requests_in_a_loop_do_not_stall_other_streams(tmp_path, capsys):
    import torch
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir
    from gptforge.tokenizer import Tokenizer

    texts = ["The quick brown fox jumps over the lazy dog. " * 40, "你好，世界。" * 40]
    tok = Tokenizer.train(texts=texts * 10, vocab_size=400, show_progress=False)
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = build_model(get_config("debug", vocab_size=tok.n_vocab, block_size=1024))
    save_model_dir(model, tmp_path / "run", tokenizer_dir=tmp_path / "tok")
    max_prompt_bytes = 1023 * longest_token_bytes(tok)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "gptforge.cli",
        "serve",
        "generation",
        "--ckpt",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        [*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        address = line.split("listening on ")[1].split()[0]
        with GenerationClient(address) as c:
            c.wait_until_serving(timeout=120)
        idle = _rss_kib(proc.pid, "VmRSS")
        unloaded = _measure(address, None)
        serving = _rss_kib(proc.pid, "VmHWM")  # peak under ordinary streams
        attack = [  # (piece, repeats): over the message limit's worth, just over and at the bound
            ("w", 4 * RECEIVE),  # refused by gRPC itself, never parsed
            ("x", RECEIVE - 4096),
            ("y", max_prompt_bytes + 1),
            ("ab ", max_prompt_bytes // 3),
        ]
        loaded = _measure(address, attack)
        peak = _rss_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    largest = max(len(piece) * count for piece, count in attack)
    bound = serving + 1 * (2 * largest + 4 * RECEIVE) // 1024  # one attacking client
    with capsys.disabled():
        print(
            f"\nRSS idle {idle / 1024:.0f} MiB, serving {serving / 1024:.0f} MiB, peak under "
            f"attack {peak / 1024:.0f} MiB, bound {bound / 1024:.0f} MiB"
        )
        for name, row in (("unloaded", unloaded), ("loaded", loaded)):
            print(
                f"{name:9s} max inter-token gap {row['max_gap_ms']:7.1f} ms, health p50 "
                f"{row['health_p50_ms']:6.1f} ms, max {row['health_max_ms']:6.1f} ms, "
                f"attack requests {row['attacks']}"
            )
    assert loaded["attacks"] > 0
    assert peak <= bound, (peak, bound)
