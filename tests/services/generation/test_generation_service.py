"""GenerationService behaviour with the real server on 127.0.0.1:0 and the real client."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
from gptforge.api.generation.v1 import generation_pb2 as pb
from gptforge.api.server import ServerConfig
from gptforge.sampling import SamplingParams, stream_generate
from gptforge.services.generation import GenerationClient, GenerationLimits, serve_in_background

from .conftest import LIMITS, build_debug, slow_down


@pytest.fixture(scope="module")
def ref_model(tokenizer):
    """Same weights as the served model, but its own caches (the server's engine owns the other)."""
    return build_debug(tokenizer)


def reference(ref_model, tokenizer, prompt: str, **kw) -> tuple[list[int], str]:
    params = SamplingParams(**kw)
    events = list(stream_generate(ref_model, tokenizer.encode(prompt), params, tokenizer=tokenizer))
    return [e.token_id for e in events], "".join(e.text for e in events)


def _joined(chunks) -> tuple[list[int], str, list]:
    ids, text, last = [], "", []
    for c in chunks:
        ids += list(c.token_ids)
        text += c.text
        last.append(c)
    return ids, text, last


def test_streamed_text_joined_equals_unary_result(client):
    kw = dict(max_new_tokens=20, seed=7, temperature=0.9, top_k=50, ignore_eos=True)
    unary = client.generate("Hello world", **kw)
    ids, text, chunks = _joined(client.generate_stream("Hello world", **kw))
    (c,) = unary.completions
    assert ids == list(c.token_ids) and text == c.text
    assert chunks[-1].usage.completion_tokens == 20 == unary.usage.completion_tokens
    assert c.finish_reason == pb.FINISH_REASON_LENGTH and c.seed == 7


def test_service_output_equals_the_library_for_the_same_seed(client, ref_model, tokenizer):
    ids, text = reference(
        ref_model, tokenizer, "İstanbul", max_new_tokens=12, seed=99, temperature=0.8
    )
    (c,) = client.generate("İstanbul", max_new_tokens=12, seed=99, temperature=0.8).completions
    assert list(c.token_ids) == ids and c.text == text


def test_same_seed_same_output_alone_and_in_a_busy_batch(client):
    kw = dict(max_new_tokens=24, seed=1234, temperature=1.0, ignore_eos=True)
    alone = client.generate("The quick", **kw).completions[0]
    with ThreadPoolExecutor(6) as pool:
        noise = [
            pool.submit(client.generate, "Party " * (1 + i), max_new_tokens=30, seed=i)
            for i in range(5)
        ]
        time.sleep(0.05)
        busy = pool.submit(client.generate, "The quick", **kw).result().completions[0]
        for f in noise:
            f.result()
    assert list(busy.token_ids) == list(alone.token_ids) and busy.text == alone.text


def test_n_completions_use_seed_plus_index(client, ref_model, tokenizer):
    resp = client.generate("hello", n=3, seed=50, max_new_tokens=8, ignore_eos=True)
    assert [c.index for c in resp.completions] == [0, 1, 2]
    for c in resp.completions:
        ids, _ = reference(
            ref_model, tokenizer, "hello", max_new_tokens=8, seed=50 + c.index, ignore_eos=True
        )
        assert c.seed == 50 + c.index and list(c.token_ids) == ids


def test_sixteen_concurrent_streams_all_complete_correctly(client, ref_model, tokenizer):
    prompts = [f"{w} {i}" for i, w in enumerate(["hello", "世界", "ağır", "🎉"] * 4)]
    expected = [
        reference(ref_model, tokenizer, p, max_new_tokens=12, seed=i, ignore_eos=True)
        for i, p in enumerate(prompts)
    ]

    def one(i: int):
        return _joined(
            client.generate_stream(prompts[i], max_new_tokens=12, seed=i, ignore_eos=True)
        )

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for (ids, text, _), (ref_ids, ref_text) in zip(results, expected, strict=True):
        assert ids == ref_ids and text == ref_text


def test_logprobs_and_top_logprobs(client):
    (c,) = client.generate(
        "hello", max_new_tokens=5, seed=1, logprobs=True, top_logprobs=3, ignore_eos=True
    ).completions
    assert len(c.logprobs) == 5
    for lp, tid in zip(c.logprobs, c.token_ids, strict=True):
        assert lp.token_id == tid and lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].logprob >= lp.logprob - 1e-5


def test_model_info_reports_model_tokenizer_and_limits(client, tokenizer, model):
    info = client.model_info()
    assert info.architecture == "gpt" and info.vocab_size == tokenizer.n_vocab
    assert (
        info.context_length == model.config.block_size and info.eos_token_id == tokenizer.eot_token
    )
    assert info.tokenizer_fingerprint == tokenizer.fingerprint
    assert info.limits.max_batch_size == 4 and info.limits.default_max_new_tokens == 16


def test_unset_max_new_tokens_is_cut_to_the_context(client, model):
    block = model.config.block_size
    prompt = list(range(1, block - 2))  # block - 3 tokens: room for 3; the default is 16
    (c,) = client.generate(prompt, ignore_eos=True).completions
    assert len(c.token_ids) == 3 and c.finish_reason == pb.FINISH_REASON_CONTEXT_LENGTH


def test_emoji_cjk_and_turkish_text_streams_intact(tokenizer):
    """A model forced (bigram table) to write a given text: every delta is whole characters."""
    target = "Çağrı 你好 🦀👍🏽 ışık"
    ids = tokenizer.encode(target) + [tokenizer.eot_token]
    assert len(set(ids[:-1])) == len(ids) - 1, "the forcing table needs distinct tokens"
    model = build_debug(tokenizer, seed=5)
    nxt = torch.full((model.config.vocab_size,), -1)
    nxt[torch.tensor(ids[:-1])] = torch.tensor(ids[1:])

    def force(module, args, output):
        logits, loss = output
        want = nxt[args[0]]  # (B, T)
        bias = torch.zeros_like(logits).scatter_(-1, want.clamp(min=0)[..., None], 1e4)
        return logits + bias * (want >= 0)[..., None], loss

    model.register_forward_hook(force)
    with (
        serve_in_background(model, tokenizer, ServerConfig(port=0), LIMITS) as bg,
        GenerationClient(bg.address) as c,
    ):
        chunks = list(c.generate_stream(ids[:1], max_new_tokens=40, temperature=0.0))
    deltas = [ch.text for ch in chunks]
    assert "".join(deltas) == tokenizer.decode(ids[1:-1])
    assert all("\ufffd" not in d for d in deltas)
    assert chunks[-2].finish_reason == pb.FINISH_REASON_EOS
    assert sum(1 for d in deltas if d == "") >= 1  # some token ended inside a character


@pytest.fixture(scope="module")
def slow_server(tokenizer):
    """2 slots, a budget of 200 tokens in flight, 20 ms per forward."""
    model = build_debug(tokenizer)
    slow_down(model, 0.02)
    limits = GenerationLimits(max_batch_size=2, max_tokens_in_flight=200)
    with serve_in_background(
        model, tokenizer, ServerConfig(port=0, grace_seconds=1.0), limits
    ) as bg:
        yield bg


def _engine(bg):
    return bg.running.engine


def _wait_idle(bg, timeout: float = 5.0) -> None:
    """Wait until cancelled work has left the engine (cancel reaches it asynchronously)."""
    engine = _engine(bg)
    deadline = time.monotonic() + timeout
    while (engine.tokens_in_flight or engine.num_active) and time.monotonic() < deadline:
        time.sleep(0.005)


def test_cancel_mid_stream_frees_the_slot(slow_server):
    _wait_idle(slow_server)
    with GenerationClient(slow_server.address) as c:
        call = c.generate_stream([1, 2, 3], max_new_tokens=50, ignore_eos=True)
        next(call)
        next(call)
        engine = _engine(slow_server)
        assert engine.num_active == 1 and engine.tokens_in_flight == 53
        call.cancel()
        deadline = time.monotonic() + 2.0
        while engine.num_active and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.num_active == 0 and engine.tokens_in_flight == 0
        # The freed budget takes new work at once.
        assert len(c.generate([1], max_new_tokens=2, ignore_eos=True).completions[0].token_ids) == 2


def test_deadline_frees_the_slot(slow_server):
    _wait_idle(slow_server)
    with GenerationClient(slow_server.address) as c:
        with pytest.raises(grpc.RpcError) as err:
            list(c.generate_stream([1, 2], max_new_tokens=60, ignore_eos=True, timeout=0.3))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        engine = _engine(slow_server)
        deadline = time.monotonic() + 2.0
        while engine.tokens_in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.num_active == 0 and engine.tokens_in_flight == 0


def test_twice_the_capacity_is_refused_at_once_and_health_stays_serving(slow_server):
    _wait_idle(slow_server)
    with GenerationClient(slow_server.address) as c:
        # Each request books 1 + 49 = 50 tokens; the budget is 200, so 4 fit and 4 do not.
        streams = [c.generate_stream([1], max_new_tokens=49, ignore_eos=True) for _ in range(4)]
        engine = _engine(slow_server)
        deadline = time.monotonic() + 5.0
        while engine.tokens_in_flight < 200 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.tokens_in_flight == 200  # two running, two queued for a slot
        refused = []
        for _ in range(4):
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                c.generate([1], max_new_tokens=49)
            refused.append(time.monotonic() - t0)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "tokens in flight" in err.value.details()
            assert c.health() == "SERVING"
        assert max(refused) < 0.5
        for s in streams:
            s.cancel()
    _wait_idle(slow_server)


def test_handlers_never_run_the_model_on_the_event_loop(slow_server):
    names = []

    def spy(module, args):
        names.append(threading.current_thread().name)

    _wait_idle(slow_server)
    model = _engine(slow_server).model
    h = model.register_forward_pre_hook(spy)
    try:
        with GenerationClient(slow_server.address) as c:
            c.generate([1, 2], max_new_tokens=3)
    finally:
        h.remove()
    assert names and set(names) == {"gptforge-engine"}


def test_mmrec_is_served_past_its_training_length(tokenizer):
    """MM-Rec has no length limit: the service accepts a context above ``block_size`` and
    generates past it, with the same tokens as the library."""
    from gptforge.modeling import build_model, get_config
    from gptforge.sampling import generate

    torch.manual_seed(0)
    model = build_model(get_config("mmrec-debug", vocab_size=tokenizer.n_vocab)).eval()
    block = model.config.block_size
    limits = GenerationLimits(max_batch_size=2, context_length=block + 40)
    prompt = list(range(1, block - 3))  # prompt + new tokens run 20 positions past block_size
    with (
        serve_in_background(model, tokenizer, ServerConfig(port=0), limits) as bg,
        GenerationClient(bg.address, timeout=60) as c,
    ):
        (got,) = c.generate(prompt, max_new_tokens=24, temperature=0.0, ignore_eos=True).completions
    want = generate(model, prompt, 24, temperature=0.0)[len(prompt) :].tolist()
    assert list(got.token_ids) == want
