"""Hostile input and faults: work bounded before it is done, budgets and flags checked at start,
clean exits on signals during warm-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import grpc
import pytest
from gptforge.api.server import ServerConfig
from gptforge.services.generation import GenerationClient, GenerationLimits, serve_in_background
from gptforge.services.generation.server import longest_token_bytes

CTX = 64  # the debug preset's block_size


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_a_prompt_over_max_prompt_bytes_is_refused_without_tokenizing(client, tokenizer):
    limit = (CTX - 1) * longest_token_bytes(tokenizer)
    with mock.patch.object(tokenizer, "encode", wraps=tokenizer.encode) as encode:
        for size in (limit + 1, 15 * 2**20):  # just over the bound, and near the message limit
            code, details = _code(lambda n=size: client.generate("a" * n, max_new_tokens=1))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("text:") and f"max_prompt_bytes={limit}" in details
        assert encode.call_count == 0
        # at the bound the prompt is tokenized (and then too long for the context by tokens)
        code, details = _code(lambda: client.generate("ab" * (limit // 2), max_new_tokens=1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and encode.call_count == 1


def test_a_huge_token_ids_prompt_with_truncate_keeps_its_end(client):
    ids = [(i % 200) + 1 for i in range(500_000)]
    reply = client.generate(ids, truncate_prompt=True, ignore_eos=True)
    kept = CTX - 1 - 0  # the default max_new_tokens is cut to the room left (one token)
    assert reply.usage.prompt_tokens == kept
    assert reply.usage.truncated_prompt_tokens == len(ids) - kept
    code, details = _code(lambda: client.generate(ids))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("token_ids:")


def test_a_request_over_the_whole_budget_is_invalid_not_retry_later(model, tokenizer):
    limits = GenerationLimits(max_batch_size=2, max_tokens_in_flight=CTX)
    bg = serve_in_background(model, tokenizer, ServerConfig(port=0), limits)
    with bg, GenerationClient(bg.address, timeout=60) as c:
        code, details = _code(lambda: c.generate([1], max_new_tokens=CTX - 1, n=2))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"max_tokens_in_flight={CTX}" in details and "retry" not in details
        assert c.generate([1], max_new_tokens=CTX - 1, ignore_eos=True).usage.total_tokens == CTX


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size=0 must be >= 1 (--max-batch-size)"),
        ({"max_batch_size": -3}, "max_batch_size=-3"),
        ({"context_length": 1}, "context_length=1 must be >= 2"),
        ({"default_max_new_tokens": 0}, "default_max_new_tokens=0 must be >= 1"),
        ({"max_tokens_in_flight": 2}, "max_tokens_in_flight=2 must be >= 3"),
    ],
)
def test_limits_refuse_bad_values_in_one_line(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        GenerationLimits(**kwargs)


def test_a_budget_below_the_context_is_refused_at_start():
    with pytest.raises(ValueError, match="max_tokens_in_flight=3 is below the context of 64"):
        GenerationLimits(max_tokens_in_flight=3).resolved(CTX)
    assert GenerationLimits(max_tokens_in_flight=CTX).resolved(CTX).max_tokens_in_flight == CTX


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptforge.cli", "serve", "generation", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_bad_flags_fail_in_one_line_and_a_token_argument_warns(model_dir):
    bad = _cli(
        "--ckpt", str(model_dir), "--port", "0", "--max-batch-size", "0", "--auth-token", "t"
    )
    assert bad.returncode == 1, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "max_batch_size=0 must be >= 1" in bad.stderr
    assert "GPTFORGE_AUTH_TOKEN" in bad.stderr  # the warning about `ps`
    # only known after loading the model: still one line, exit 1
    late = _cli("--ckpt", str(model_dir), "--port", "0", "--max-tokens-in-flight", "3")
    assert late.returncode == 1, late.stderr
    assert "Traceback" not in late.stderr + late.stdout
    assert "max_tokens_in_flight=3 is below the context" in late.stderr


SLOW_START = """
import threading, time
from gptforge.api.server import ServerConfig
from gptforge.services.generation.server import serve_model

def load():
    time.sleep(3600)  # a load or compile that takes long

serve_model(load, ServerConfig(port=0, grace_seconds=30))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_warm_up_exits_cleanly(sig):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLOW_START)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stderr.read() if proc.stderr else ""
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped during start-up" in out
