"""Compiled decoding (``compile=True``): the same tokens as eager decoding, one graph reused.

Slow: the first decode step of each model compiles (seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils as dynamo_utils
from gptforge.modeling import build_model, get_config
from gptforge.sampling import SamplingParams, generate, generate_batch, stream_generate

pytestmark = pytest.mark.slow


def _model(preset: str):
    torch.manual_seed(0)
    return build_model(get_config(preset, vocab_size=300)).eval()


def _graphs() -> int:
    return int(dynamo_utils.counters["stats"]["unique_graphs"])


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "mmrec-debug"])
def test_compiled_generate_gives_the_eager_tokens(preset):
    model = _model(preset)
    prompt = torch.tensor([[5, 17, 42, 7], [9, 9, 1, 250]])
    eager = generate(model, prompt, 12, temperature=0.0)
    compiled = generate(model, prompt, 12, temperature=0.0, compile=True)
    assert compiled.tolist() == eager.tolist()
    # Sampling draws from the same per-row generators, so seeded output matches too.
    kw = dict(temperature=0.9, top_k=40, seed=11)
    assert generate(model, prompt, 12, compile=True, **kw).tolist() == (
        generate(model, prompt, 12, **kw).tolist()
    )


def test_compiled_generate_reuses_one_graph_across_calls():
    model = _model("llama-debug")
    generate(model, [1, 2, 3], 4, temperature=0.0, compile=True)  # compiles
    before = _graphs()
    for prompt, n in [([4, 5], 9), ([7, 8, 9, 10, 11], 3), ([12], 20)]:
        out = generate(model, prompt, n, temperature=0.0, compile=True)
        assert out.tolist() == generate(model, prompt, n, temperature=0.0).tolist()
    assert _graphs() == before, "a new prompt or length must not compile a new graph"


def test_compiled_continuous_batching_matches_eager(tokenizer):
    torch.manual_seed(1)
    model = build_model(get_config("debug", vocab_size=tokenizer.n_vocab)).eval()
    prompts = [tokenizer.encode(t) for t in ("Hello world", "Çağrı İstanbul", "你好", "Party 🎉")]
    params = [
        SamplingParams(max_new_tokens=n, temperature=t, top_k=k, seed=s, ignore_eos=True)
        for n, t, k, s in [(10, 0.0, 0, 1), (4, 0.8, 20, 2), (7, 1.0, 0, 3), (12, 0.7, 50, 4)]
    ]
    # Two slots for four prompts: sequences join and leave while others decode.
    eager = generate_batch(model, prompts, params, tokenizer=tokenizer, max_batch_size=2)
    compiled = generate_batch(
        model, prompts, params, tokenizer=tokenizer, max_batch_size=2, compile=True
    )
    assert [c.token_ids for c in compiled] == [c.token_ids for c in eager]
    assert [c.text for c in compiled] == [c.text for c in eager]
    streamed = list(stream_generate(model, prompts[0], params[0], compile=True))
    assert [e.token_id for e in streamed] == eager[0].token_ids


def test_compiled_steps_run_the_live_rows_bucket_and_precompile_covers_every_bucket(
    monkeypatch,
):
    from gptforge.sampling import batch as batch_mod

    model = _model("llama-debug")
    gen = batch_mod.BatchGenerator(model, max_batch_size=4, max_seq_len=64, compile=True)
    assert gen.precompile() == 3  # batch buckets 1, 2, 4
    before = _graphs()
    rows: list[int] = []
    step = batch_mod.compiled_decode_one_token

    def spy(model, tokens, input_pos):
        rows.append(tokens.size(0))
        return step(model, tokens, input_pos)

    monkeypatch.setattr(batch_mod, "compiled_decode_one_token", spy)
    params = SamplingParams(max_new_tokens=30, temperature=0.0, ignore_eos=True)
    gen.add([1, 2, 3], params)
    gen.step()
    gen.add([4, 5], params)
    gen.add([6], params)
    gen.step()
    assert rows == [1, 4], "one live row decodes 1 row; slots 0-2 decode the 4-row bucket"
    assert _graphs() == before, "precompile() must have compiled every bucket already"
    with pytest.raises(RuntimeError, match="idle"):
        gen.precompile()


def test_compiled_service_streams_match_the_eager_library(tokenizer):
    from concurrent.futures import ThreadPoolExecutor

    from gptforge.api.server import ServerConfig
    from gptforge.services.generation import (
        GenerationClient,
        GenerationLimits,
        serve_in_background,
    )

    torch.manual_seed(2)
    model = build_model(get_config("debug", vocab_size=tokenizer.n_vocab)).eval()
    prompts = [f"{w} {i}" for i, w in enumerate(["hello", "世界", "ağır", "🎉"] * 2)]
    expected = []
    for i, p in enumerate(prompts):
        params = SamplingParams(max_new_tokens=10, seed=i, ignore_eos=True)
        events = list(stream_generate(model, tokenizer.encode(p), params, tokenizer=tokenizer))
        expected.append(([e.token_id for e in events], "".join(e.text for e in events)))
    limits = GenerationLimits(max_batch_size=4, default_max_new_tokens=16)
    config = ServerConfig(port=0, grace_seconds=2.0)
    with (
        serve_in_background(model, tokenizer, config, limits, compile=True) as bg,
        GenerationClient(bg.address, timeout=120) as client,
    ):

        def one(i: int) -> tuple[list[int], str]:
            c = client.generate(prompts[i], max_new_tokens=10, seed=i, ignore_eos=True)
            return list(c.completions[0].token_ids), c.completions[0].text

        with ThreadPoolExecutor(8) as pool:  # 8 requests on 4 slots: joins and leaves
            assert list(pool.map(one, range(len(prompts)))) == expected


def test_cli_generate_compile_prints_the_eager_text(tmp_path, tokenizer):
    from gptforge.cli.main import app
    from gptforge.modeling.io import save_model_dir
    from typer.testing import CliRunner

    torch.manual_seed(3)
    model = build_model(get_config("llama-debug", vocab_size=tokenizer.n_vocab)).eval()
    tokenizer.save(tmp_path / "tok")
    run = save_model_dir(model, tmp_path / "run", tokenizer_dir=tmp_path / "tok")
    args = ["generate", "--ckpt", str(run), "--prompt", "Hello", "--max-new-tokens", "8"]
    args += ["--temperature", "0"]
    eager = CliRunner().invoke(app, args)
    compiled = CliRunner().invoke(app, [*args, "--compile"])
    assert eager.exit_code == 0 and compiled.exit_code == 0, compiled.output
    assert compiled.stdout == eager.stdout and compiled.stdout.startswith("Hello")


@pytest.mark.parametrize("mode", ["float32", "int8-dynamic"])
def test_compiled_decoding_runs_the_opaque_cpu_layers_eagerly(mode, monkeypatch):
    from gptforge.sampling import precision

    model = _model("debug")
    monkeypatch.setattr(precision, "PACK_MIN_BYTES", 0)  # oneDNN packing even at this size
    reduced = precision.apply_weight_precision(model, mode)
    prompt = [5, 17, 42, 7]
    eager = generate(reduced, prompt, 8, temperature=0.0)
    assert generate(reduced, prompt, 8, temperature=0.0, compile=True).tolist() == eager.tolist()
