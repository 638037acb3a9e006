"""Start-up, shutdown, auth and the CLI of the generation service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from gptforge.api.server import BackgroundServer, ServerConfig
from gptforge.services.generation import GenerationClient, serve_in_background, start
from typer.testing import CliRunner

from .conftest import LIMITS, build_debug


def test_health_is_not_serving_until_loaded_and_warm(tokenizer):
    release = threading.Event()

    def loader():
        release.wait(30)
        return build_debug(tokenizer), tokenizer

    bg = BackgroundServer(
        lambda: start(loader, config=ServerConfig(port=0), limits=LIMITS, wait_ready=False)
    ).start()
    try:
        with GenerationClient(bg.address, timeout=10) as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as err:
                c.generate("hello", max_new_tokens=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            c.wait_until_serving(timeout=30)
            assert (
                len(c.generate("hi", max_new_tokens=2, ignore_eos=True).completions[0].token_ids)
                == 2
            )
    finally:
        release.set()
        bg.stop(grace=0.5)


def test_auth_token_is_required_but_health_stays_open(model, tokenizer):
    cfg = ServerConfig(port=0, auth_token="s3cret")
    with serve_in_background(model, tokenizer, cfg, LIMITS) as bg:
        with GenerationClient(bg.address) as anon:
            assert anon.health() == "SERVING"
            with pytest.raises(grpc.RpcError) as err:
                anon.generate("hello", max_new_tokens=2)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with GenerationClient(bg.address, auth_token="s3cret") as ok:
            assert ok.generate("hello", max_new_tokens=2).usage.completion_tokens >= 1


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory, tokenizer):
    """A debug-sized GPT with a 1024-token context, so one stream lasts long enough to SIGTERM."""
    import torch
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir

    root = tmp_path_factory.mktemp("gen-long")
    tokenizer.save(root / "tok")
    torch.manual_seed(0)
    model = build_model(get_config("debug", vocab_size=tokenizer.n_vocab, block_size=1024))
    return save_model_dir(model, root / "run", tokenizer_dir=root / "tok")


def test_sigterm_during_a_stream_lets_it_finish(long_model_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptforge.cli",
            "serve",
            "generation",
            "--ckpt",
            str(long_model_dir),
            "--port",
            "0",
            "--grace-seconds",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        address = None
        deadline = time.monotonic() + 120
        while address is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "server exited before listening"
            if "listening on" in line:
                address = line.split("listening on ")[1].split()[0]
        with GenerationClient(address, timeout=120) as c:
            c.wait_until_serving(timeout=120)
            stream = c.generate_stream([1, 2, 3], max_new_tokens=1000, ignore_eos=True, seed=1)
            first = next(stream)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as err:  # new calls are refused while draining
                c.generate("hello", max_new_tokens=2, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            rest = list(stream)
        tokens = len(first.token_ids) + sum(len(ch.token_ids) for ch in rest)
        assert tokens == 1000 and rest[-1].usage.completion_tokens == 1000
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_client_generate_streams_from_the_server(server):
    from gptforge.cli.main import app

    result = CliRunner().invoke(
        app,
        [
            "client",
            "generate",
            "hello",
            "--target",
            server.address,
            "--max-new-tokens",
            "6",
            "--seed",
            "3",
            "--temperature",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    with GenerationClient(server.address) as c:
        expected = (
            c.generate("hello", max_new_tokens=6, seed=3, temperature=0.0).completions[0].text
        )
    assert result.stdout.startswith(expected)


def test_cli_client_reports_invalid_argument(server):
    from gptforge.cli.main import app

    result = CliRunner().invoke(
        app, ["client", "generate", "hello", "--target", server.address, "--temperature", "-1"]
    )
    assert result.exit_code == 1 and "INVALID_ARGUMENT: temperature" in result.output


def test_cli_generate_streams_the_library_output(model_dir, tokenizer):
    from gptforge.cli.main import app
    from gptforge.conversion import load_any
    from gptforge.sampling import SamplingParams, generate_batch

    model, tok, _ = load_any(model_dir)
    (ref,) = generate_batch(
        model,
        [tok.encode("hello")],
        SamplingParams(max_new_tokens=12, temperature=0.0),
        tokenizer=tok,
    )
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--ckpt",
            str(model_dir),
            "--prompt",
            "hello",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello" + ref.text + "\n"


def test_recurrent_mmrec_is_served_with_continuous_batching(tokenizer):
    import torch
    from gptforge.modeling import ARCHITECTURES, build_model, get_config
    from gptforge.sampling import SamplingParams, stream_generate

    if "mmrec" not in ARCHITECTURES:
        pytest.skip("mmrec is not registered yet")

    def build():
        torch.manual_seed(0)
        return build_model(get_config("mmrec-debug", vocab_size=tokenizer.n_vocab)).eval()

    prompts = [[1, 2, 3], [7, 8, 9, 10, 11]]
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    ref = build()
    expected = [[e.token_id for e in stream_generate(ref, p, params)] for p in prompts]
    with (
        serve_in_background(build(), tokenizer, ServerConfig(port=0), LIMITS) as bg,
        GenerationClient(bg.address) as c,
    ):
        assert c.model_info().limits.max_batch_size == LIMITS.max_batch_size
        first = c.generate_stream(prompts[0], max_new_tokens=6, temperature=0.0, ignore_eos=True)
        second = c.generate(prompts[1], max_new_tokens=6, temperature=0.0, ignore_eos=True)
        assert [t for ch in first for t in ch.token_ids] == expected[0]
        assert list(second.completions[0].token_ids) == expected[1]


def test_reflection_lists_the_generation_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert "gptforge.api.generation.v1.GenerationService" in services
    assert "grpc.health.v1.Health" in services
