"""Status codes: every bad input is INVALID_ARGUMENT naming its field; an engine failure is
INTERNAL and the service recovers; nothing is ever UNKNOWN."""

from __future__ import annotations

import time

import grpc
import pytest
from gptforge.api.generation.v1 import generation_pb2 as pb
from gptforge.services.generation import build_request

from .conftest import LIMITS

CTX = 64  # the debug preset's block_size


def _req(**kw):
    prompt = kw.pop("prompt", "hello")
    return build_request(prompt, **kw)


BAD = [
    ("empty text", pb.GenerateRequest(text=""), "text"),
    ("no prompt", pb.GenerateRequest(), "prompt"),
    ("empty token ids", pb.GenerateRequest(token_ids=pb.TokenIds(ids=[])), "token_ids"),
    ("id >= vocab", _req(prompt=[1, 10_000]), "token_ids"),
    ("special text", _req(prompt="a <|endoftext|> b"), "text"),
    ("temperature < 0", _req(temperature=-0.5), "temperature"),
    ("top_p = 0", _req(top_p=0.0), "top_p"),
    ("top_p > 1", _req(top_p=1.5), "top_p"),
    ("repetition_penalty 0", _req(repetition_penalty=0.0), "repetition_penalty"),
    ("max_new_tokens 0", _req(max_new_tokens=0), "max_new_tokens"),
    ("max_new_tokens above cap", _req(max_new_tokens=CTX + 1), "max_new_tokens"),
    ("over the context", _req(prompt=[1] * 40, max_new_tokens=30), "max_new_tokens"),
    ("slide past the context", _req(max_new_tokens=4, slide_tokens=CTX + 1), "slide_tokens"),
    ("min_new_tokens > max", _req(max_new_tokens=3, min_new_tokens=4), "min_new_tokens"),
    ("too many stop strings", _req(stop=["x"] * 17), "stop"),
    ("empty stop string", _req(stop=[""]), "stop[0]"),
    ("stop token >= vocab", _req(stop_token_ids=[10_000]), "stop_token_ids"),
    ("n above cap", _req(n=9), "n"),
    ("top_logprobs above cap", _req(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("top_logprobs without logprobs", _req(top_logprobs=2), "top_logprobs"),
    ("long request_id", _req(request_id="x" * 129), "request_id"),
]


@pytest.mark.parametrize(("case", "req", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_invalid_argument_naming_the_field(client, case, req, field):
    for call in (client.stub.Generate, lambda r, **kw: list(client.stub.GenerateStream(r, **kw))):
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert err.value.details().startswith(field), err.value.details()


def test_truncate_prompt_keeps_the_end_of_a_long_prompt(client):
    resp = client.generate(list(range(1, 61)), max_new_tokens=10, truncate_prompt=True)
    assert resp.usage.truncated_prompt_tokens == 6 and resp.usage.prompt_tokens == 54


def test_slide_tokens_generates_past_the_context_only_when_asked(client):
    long = list(range(1, 61))
    with pytest.raises(grpc.RpcError) as err:
        client.generate(long, max_new_tokens=30, ignore_eos=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "slide_tokens" in err.value.details()
    resp = client.generate(long, max_new_tokens=30, ignore_eos=True, slide_tokens=8)
    assert len(resp.completions[0].token_ids) == 30
    assert resp.completions[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert resp.usage.truncated_prompt_tokens == 0
    longer = client.generate(list(range(1, 81)), max_new_tokens=5, slide_tokens=8)
    assert longer.usage.truncated_prompt_tokens == 80 - CTX  # the window starts on its end
    assert len(longer.completions[0].token_ids) >= 1


def test_special_tokens_allowed_on_request(client):
    resp = client.generate("a <|endoftext|> b", allow_special_tokens=True, max_new_tokens=2)
    assert resp.usage.prompt_tokens >= 3


def test_engine_failure_is_internal_and_the_service_recovers(tokenizer):
    from gptforge.api.server import ServerConfig
    from gptforge.services.generation import GenerationClient, serve_in_background

    from .conftest import build_debug

    model = build_debug(tokenizer)
    fail = {"on": False}

    def hook(module, args):
        if fail["on"] and args[0].size(1) == 1:  # decode steps only
            raise RuntimeError("simulated device failure")

    model.register_forward_pre_hook(hook)
    with (
        serve_in_background(model, tokenizer, ServerConfig(port=0), LIMITS) as bg,
        GenerationClient(bg.address) as c,
    ):
        fail["on"] = True
        for call in (c.generate, lambda p, **kw: list(c.generate_stream(p, **kw))):
            with pytest.raises(grpc.RpcError) as err:
                # ignore_eos: a random model may end at its first (prefill) token, before a decode
                call("hello", max_new_tokens=5, ignore_eos=True)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "simulated" not in err.value.details()  # no internals leak
        engine = bg.running.engine
        deadline = time.monotonic() + 2.0  # the engine releases the failed work on its thread
        while (engine.tokens_in_flight or engine.num_active) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.tokens_in_flight == 0 and engine.num_active == 0
        fail["on"] = False
        assert c.health() == "SERVING"
        ok = c.generate("hello", max_new_tokens=5, ignore_eos=True)
        assert len(ok.completions[0].token_ids) == 5
