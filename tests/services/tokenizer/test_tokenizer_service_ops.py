"""Operating the tokenizer service: auth, TLS, graceful shutdown, internal errors, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from gptforge.api.server import ServerConfig
from gptforge.services.tokenizer import (
    AsyncTokenizerClient,
    TokenizerClient,
    TokenizerLimits,
    serve_in_background,
    start,
)
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[3]


async def test_auth_token_refusal_and_acceptance(tokenizer):
    server = await start(tokenizer, ServerConfig(port=0, auth_token="tok-123"))
    try:
        for token in (None, "wrong"):
            async with AsyncTokenizerClient(server.address, auth_token=token) as client:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.encode("hi")
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert await client.health() == "SERVING"  # probes need no token
        async with AsyncTokenizerClient(server.address, auth_token="tok-123") as client:
            assert await client.decode(await client.encode("hi")) == "hi"
    finally:
        await server.stop(0)


async def test_tls_round_trip(tokenizer, self_signed_cert):
    cert, key = self_signed_cert
    server = await start(
        tokenizer, ServerConfig(port=0, tls_cert=cert, tls_key=key, auth_token="t")
    )
    try:
        async with AsyncTokenizerClient(
            server.address, tls_root_cert=cert, auth_token="t"
        ) as client:
            assert await client.decode(await client.encode("über TLS")) == "über TLS"
    finally:
        await server.stop(0)


class _Faulty:
    """Wraps a tokenizer; encode of certain texts is slow or raises a non-input error."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.n_vocab, self.eot_token = inner.n_vocab, inner.eot_token
        self.special_tokens, self.fingerprint = inner.special_tokens, inner.fingerprint

    def encode(self, text: str, **kwargs) -> list[int]:
        if text.startswith("slow"):
            time.sleep(0.5)  # runs in a worker thread: the text is over the inline threshold
        if text == "crash":
            raise RuntimeError("tokenizer exploded at /secret/path")
        return self.inner.encode(text, **kwargs)

    def decode_bytes(self, ids) -> bytes:
        return self.inner.decode_bytes(ids)


async def test_internal_failure_is_internal_not_unknown_and_service_recovers(tokenizer):
    server = await start(tokenizer=_Faulty(tokenizer), config=ServerConfig(port=0))
    try:
        async with AsyncTokenizerClient(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.encode("crash")
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "RuntimeError" in info.value.details() and "secret" not in info.value.details()
            assert await client.encode("fine") == tokenizer.encode("fine")
    finally:
        await server.stop(0)


async def test_shutdown_lets_in_flight_calls_finish_and_refuses_new_ones(tokenizer):
    server = await start(_Faulty(tokenizer), ServerConfig(port=0, grace_seconds=5))
    slow_text = "slow " + "x" * 10_000
    async with AsyncTokenizerClient(server.address) as client:
        in_flight = asyncio.ensure_future(client.count_tokens([slow_text]))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.encode("late")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await in_flight == [len(tokenizer.encode(slow_text))]
        await stopping


def test_cli_client_commands(tokenizer):
    from gptforge.cli.main import app

    runner = CliRunner()
    with serve_in_background(
        tokenizer, ServerConfig(port=0), TokenizerLimits(max_batch_size=2)
    ) as bg:
        result = runner.invoke(
            app, ["client", "tokenize", "--target", bg.address, "hello world", "🙂"]
        )
        assert result.exit_code == 0, result.output
        lines = result.output.strip().splitlines()
        assert [list(map(int, line.split())) for line in lines] == [
            tokenizer.encode("hello world"),
            tokenizer.encode("🙂"),
        ]

        result = runner.invoke(
            app, ["client", "tokenize", "--target", bg.address, "--json", "--pieces", "hi 🙂"]
        )
        record = json.loads(result.output)
        assert b"".join(bytes.fromhex(p) for p in record["pieces"]) == "hi 🙂".encode()
        assert record["offsets"][-1][1] == len("hi 🙂".encode())

        ids = " ".join(map(str, tokenizer.encode("round trip")))
        result = runner.invoke(app, ["client", "detokenize", "--target", bg.address, *ids.split()])
        assert result.output.strip() == "round trip"

        result = runner.invoke(app, ["client", "tokenizer-info", "--target", bg.address])
        info = json.loads(result.output)
        assert info["n_vocab"] == tokenizer.n_vocab and info["health"] == "SERVING"
        assert info["limits"]["max_batch_size"] == 2

        result = runner.invoke(app, ["client", "tokenize", "--target", bg.address, "a", "b", "c"])
        assert result.exit_code == 1
        assert "RESOURCE_EXHAUSTED" in result.output and "max_batch_size=2" in result.output


def test_blocking_client_against_background_server(tokenizer):
    with serve_in_background(tokenizer) as bg, TokenizerClient(bg.address) as client:
        text = "İstanbul 東京 🙂"
        assert client.encode(text) == tokenizer.encode(text)
        assert client.decode_bytes(client.encode(text)) == text.encode()
        assert client.count_tokens(text) == [len(tokenizer.encode(text))]
        assert client.health() == "SERVING"


def test_serve_command_stops_gracefully_on_sigterm(tokenizer, tmp_path: Path):
    """The real `gptforge serve tokenizer` process: serve, answer, SIGTERM, exit 0."""
    tokenizer.save(tmp_path / "tok")
    env = {**os.environ, "GPTFORGE_AUTH_TOKEN": "cli-token"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptforge.cli",
            "serve",
            "tokenizer",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + (
            proc.stdout.read() if proc.poll() is not None else ""
        )
        address = line.split("listening on ")[1].split()[0]
        with TokenizerClient(address, auth_token="cli-token") as client:
            assert client.decode(client.encode("served")) == "served"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_load_generator_counts_only_correct_answers(server):
    from gptforge.services.tokenizer.loadgen import encode_load

    result = await encode_load(server.address, concurrency=4, seconds=0.3, texts_per_request=2)
    assert result.requests > 0 and len(result.latencies_ms) == result.requests
    assert 0 < result.latency_ms(0.5) <= result.latency_ms(0.99)
    assert "req/s" in result.row()


@pytest.mark.load
async def test_256_concurrent_clients_under_sustained_load(server):
    from gptforge.services.tokenizer.loadgen import encode_load

    result = await encode_load(server.address, concurrency=256, seconds=5.0)
    assert result.requests >= 256
