"""Hostile load: replies that cannot fit are refused before or while they are built, and work in
flight is bounded (RESOURCE_EXHAUSTED at once beyond it) while small calls and health answer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from gptforge.api.channel import create_channel
from gptforge.api.server import ServerConfig
from gptforge.api.tokenizer.v1 import tokenizer_pb2 as pb
from gptforge.api.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from gptforge.services.tokenizer import TokenizerLimits, start
from grpc_health.v1 import health_pb2, health_pb2_grpc

MiB = 1024 * 1024
SEND = MiB  # a small reply limit keeps the texts that overflow it small


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


@pytest.fixture
async def stub(tokenizer):
    limits = TokenizerLimits(max_text_bytes=MiB, max_ids_per_sequence=4 * MiB)
    running = await start(tokenizer, ServerConfig(port=0, max_send_message_bytes=SEND), limits)
    async with create_channel(running.address, aio=True) as channel:
        yield pb_grpc.TokenizerServiceStub(channel)
    await running.stop(0)


async def test_encode_whose_pieces_cannot_fit_is_refused_up_front(stub, tokenizer, monkeypatch):
    calls = []
    monkeypatch.setattr(tokenizer, "encode_batch", lambda *a, **k: calls.append(a) or [])
    texts = ["東京は大きい都市です。" * 12_000] * 3  # 3 x 396 KiB, pieces repeat every byte
    code, details = await _status(stub.Encode(pb.EncodeRequest(texts=texts, return_pieces=True)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"max_send_message_bytes={SEND}" in details and "fewer texts" in details
    assert calls == []  # refused before any encoding


async def test_encode_and_decode_stop_once_the_reply_passes_the_limit(stub, tokenizer):
    texts = ["a b c d e f g h " * 20_000] * 3  # 3 x 313 KiB of one-byte tokens
    code, details = await _status(stub.Encode(pb.EncodeRequest(texts=texts, return_offsets=True)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_send_message_bytes" in details
    # the same texts without offsets fit, and match the tokenizer
    reply = await stub.Encode(pb.EncodeRequest(texts=texts[:1]))
    assert list(reply.encodings[0].ids) == tokenizer.encode(texts[0])
    ids = list(reply.encodings[0].ids)
    seqs = [pb.DecodeSequence(ids=ids)] * 3
    code, details = await _status(
        stub.Decode(pb.DecodeRequest(sequences=seqs, return_bytes=True, return_pieces=True))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_send_message_bytes" in details
    decoded = await stub.Decode(pb.DecodeRequest(sequences=seqs[:1]))
    assert decoded.results[0].text == texts[0]


class GatedTokenizer:
    """The real tokenizer, but encoding a long text waits for ``gate`` (a slow request)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.started = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        if len(text) > 16_384:
            self.started.set()
            self.gate.wait(30)
        return self.inner.encode(text, **kwargs)


async def test_work_in_flight_is_bounded_and_small_calls_still_answer(tokenizer):
    gated = GatedTokenizer(tokenizer)
    limits = TokenizerLimits(max_text_bytes=MiB, max_work_bytes=100_000)
    running = await start(gated, ServerConfig(port=0), limits)  # type: ignore[arg-type]
    big = pb.EncodeRequest(texts=["the quick brown fox " * 3_000])  # 60 kB
    try:
        async with create_channel(running.address, aio=True) as channel:
            stub = pb_grpc.TokenizerServiceStub(channel)
            first = asyncio.ensure_future(stub.Encode(big, timeout=30))
            await asyncio.to_thread(gated.started.wait, 10)
            code, details = await _status(stub.Encode(big, timeout=5))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_work_bytes=100000" in details
            small = await stub.Encode(pb.EncodeRequest(texts=["hello"]), timeout=5)
            assert list(small.encodings[0].ids) == tokenizer.encode("hello")
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert not first.done()
            gated.gate.set()
            assert len((await first).encodings[0].ids) > 0
            assert len((await stub.Encode(big, timeout=30)).encodings[0].ids) > 0  # freed
    finally:
        gated.gate.set()
        await running.stop(0)
