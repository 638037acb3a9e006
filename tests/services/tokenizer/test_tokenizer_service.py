"""The tokenizer service end to end: real grpc.aio server on 127.0.0.1:0, real client."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gptforge.api.server import RunningServer, ServerConfig
from gptforge.api.tokenizer.v1 import tokenizer_pb2 as pb
from gptforge.services.tokenizer import AsyncTokenizerClient, TokenizerLimits, start
from gptforge.tokenizer import CHAT_TOKENS, EOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "İstanbul'da ılık bir gün; Iğdır ve ıspanak.",
    "東京は大きい都市です。",
    "Emoji 🙂🚀 and a ZWJ family 👩‍💻",
    "  whitespace\t\truns\n\n\n  ",
    "",
]


async def _code(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details() or ""


async def test_encode_decode_roundtrip_matches_library(client: AsyncTokenizerClient, tokenizer):
    ids = await client.encode_batch(TEXTS)
    assert ids == [tokenizer.encode(t) for t in TEXTS]
    assert await client.decode_batch(ids) == TEXTS
    assert await client.count_tokens(TEXTS) == [len(x) for x in ids]
    assert await client.encode(TEXTS[0]) == ids[0]


async def test_pieces_and_byte_offsets_cover_the_utf8_text(client: AsyncTokenizerClient):
    details = await client.encode_detailed(TEXTS)
    saw_partial_char = False
    for text, enc in zip(TEXTS, details, strict=True):
        raw = text.encode("utf-8")
        assert b"".join(enc.pieces) == raw
        assert len(enc.offsets) == len(enc.ids) == len(enc.pieces)
        pos = 0
        for (begin, end), piece in zip(enc.offsets, enc.pieces, strict=True):
            assert begin == pos and end == begin + len(piece)
            assert raw[begin:end] == piece
            pos = end
        assert pos == len(raw)
        for piece in enc.pieces:
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError:
                saw_partial_char = True
    # the tiny vocabulary splits emoji/CJK into byte tokens: pieces must travel as raw bytes
    assert saw_partial_char


async def test_decode_partial_character_gives_exact_bytes_and_replacement_text(
    client: AsyncTokenizerClient,
):
    details = await client.encode_detailed(["🙂"])
    ids = details[0].ids
    assert len(ids) > 1, "the test needs the emoji split over several tokens"
    head = ids[:-1]
    expected = b"".join(details[0].pieces[:-1])
    assert await client.decode_bytes(head) == expected
    assert await client.decode(head) == expected.decode("utf-8", errors="replace")
    assert "\ufffd" in await client.decode(head)


async def test_special_token_text_is_refused_unless_allowed(
    client: AsyncTokenizerClient, tokenizer
):
    text = "hello <|endoftext|> world"
    code, details = await _code(client.encode_batch(["fine", text]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1]" in details and "'<|endoftext|>'" in details and "allowed_special" in details

    eot = tokenizer.special_tokens["<|endoftext|>"]
    allowed = await client.encode(text, allowed_special=["<|endoftext|>"])
    assert allowed.count(eot) == 1
    assert await client.encode(text, special_tokens="allow_all") == allowed
    as_text = await client.encode(text, special_tokens="as_text")
    assert eot not in as_text and len(as_text) > len(allowed)
    assert await client.decode(as_text) == text == await client.decode(allowed)

    # allowing one special token does not allow another
    code, details = await _code(client.encode("<INST>", allowed_special=["<|endoftext|>"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'<INST>'" in details


async def test_special_tokens_encode_atomically_and_can_be_skipped(
    client: AsyncTokenizerClient, tokenizer
):
    text = "<INST>Say hi</INST><RESP>hi</RESP><|endoftext|>"
    ids = await client.encode(text, special_tokens="allow_all")
    for special in ("<INST>", "</INST>", "<RESP>", "</RESP>", "<|endoftext|>"):
        assert tokenizer.special_tokens[special] in ids
    assert await client.decode(ids) == text
    assert await client.decode(ids, skip_special_tokens=True) == "Say hihi"


async def test_bad_special_arguments_name_the_field(server: RunningServer):
    async with AsyncTokenizerClient(server.address) as client:
        code, details = await _code(client.encode("x", allowed_special=["<nope>"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "allowed_special" in details and "'<nope>'" in details and "<|endoftext|>" in details
        request = pb.EncodeRequest(texts=["x"], special_token_mode=42)
        code, details = await _code(client.stub.Encode(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "special_token_mode=42" in details and "SPECIAL_TOKEN_MODE_AS_TEXT" in details


async def test_request_with_invalid_utf8_is_invalid_argument(client: AsyncTokenizerClient):
    encode = client.channel.unary_unary("/gptforge.api.tokenizer.v1.TokenizerService/Encode")
    code, details = await _code(encode(b"\x0a\x02\xff\xfe"))  # texts[0] = invalid UTF-8
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "EncodeRequest" in details


async def test_decode_out_of_vocabulary_id_is_invalid_argument(
    client: AsyncTokenizerClient, tokenizer
):
    n = tokenizer.n_vocab
    code, details = await _code(client.decode_batch([[1, 2], [3, n + 5, 4]]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"sequences[1].ids[1]={n + 5}" in details and f"n_vocab={n}" in details


async def test_limits_give_resource_exhausted_or_invalid_argument(
    client: AsyncTokenizerClient, limits: TokenizerLimits
):
    cases = [
        (client.encode_batch([]), grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
        (client.decode_batch([]), grpc.StatusCode.INVALID_ARGUMENT, "sequences is empty"),
        (
            client.encode_batch(["a"] * (limits.max_batch_size + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"max_batch_size={limits.max_batch_size}",
        ),
        (
            client.count_tokens(["a"] * (limits.max_batch_size + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_batch_size",
        ),
        (
            client.decode_batch([[1]] * (limits.max_batch_size + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_batch_size",
        ),
        (
            client.encode_batch(["ok", "ı" * limits.max_text_bytes]),  # 2 bytes per char
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "texts[1]",
        ),
        (
            client.decode([1] * (limits.max_ids_per_sequence + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_ids_per_sequence",
        ),
    ]
    for coro, want, fragment in cases:
        code, details = await _code(coro)
        assert code == want, (fragment, details)
        assert fragment in details
    # the server keeps serving after every refusal
    assert await client.decode(await client.encode("still here")) == "still here"


async def test_message_over_the_grpc_limit_is_resource_exhausted(tokenizer):
    small = await start(tokenizer, ServerConfig(port=0, max_receive_message_bytes=4096))
    try:
        async with AsyncTokenizerClient(small.address) as client:
            code, _ = await _code(client.encode("x" * 10_000))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await client.count_tokens(["x" * 100]) == [len(await client.encode("x" * 100))]
    finally:
        await small.stop(0)


async def test_info_reports_vocabulary_and_limits(
    client: AsyncTokenizerClient, tokenizer, limits: TokenizerLimits
):
    info = await client.info()
    assert info.n_vocab == tokenizer.n_vocab
    assert info.eot_token == tokenizer.eot_token
    assert dict(info.special_tokens) == tokenizer.special_tokens
    assert {EOT, *CHAT_TOKENS} <= set(info.special_tokens)
    assert info.fingerprint == tokenizer.fingerprint and info.name == "test"
    assert info.limits.max_batch_size == limits.max_batch_size
    assert info.limits.max_text_bytes == limits.max_text_bytes
    assert info.limits.max_receive_message_bytes > 0


async def test_32_concurrent_clients_all_get_their_own_answer(server: RunningServer, tokenizer):
    texts = [f"client {i}: {TEXTS[i % len(TEXTS)]} #{i * 7919}" for i in range(32)]
    clients = [AsyncTokenizerClient(server.address, timeout=20) for _ in texts]
    try:
        results = await asyncio.gather(
            *(c.encode_detailed([t, t.upper()]) for c, t in zip(clients, texts, strict=True))
        )
        decoded = await asyncio.gather(
            *(c.decode(r[0].ids) for c, r in zip(clients, results, strict=True))
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    for text, result, back in zip(texts, results, decoded, strict=True):
        assert result[0].ids == tokenizer.encode(text)
        assert result[1].ids == tokenizer.encode(text.upper())
        assert back == text


async def test_health_is_serving_and_reflection_lists_the_service(
    server: RunningServer, client: AsyncTokenizerClient
):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert await client.health() == "SERVING"
    assert await client.health("gptforge.api.tokenizer.v1.TokenizerService") == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {"gptforge.api.tokenizer.v1.TokenizerService", "grpc.health.v1.Health"} <= names


@pytest.fixture(scope="module")
def blocking_client(tokenizer):
    """A blocking client of a server on its own thread (hypothesis drives sync tests)."""
    from gptforge.services.tokenizer import TokenizerClient, serve_in_background

    with serve_in_background(tokenizer) as bg, TokenizerClient(bg.address) as client:
        yield client


_TEXT = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
        st.sampled_from(["🙂", "👩‍💻", "東京", "İı", "  \t\n", "<|endoftext|>", "<INST>"]),
    ),
    max_size=6,
).map("".join)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_TEXT)
def test_hyp_service_matches_library_with_offsets(blocking_client, tokenizer, text):
    detail = blocking_client.encode_detailed([text], special_tokens="allow_all")[0]
    assert detail.ids == tokenizer.encode(text, allowed_special="all")
    raw = text.encode("utf-8")
    assert b"".join(detail.pieces) == raw
    assert [raw[a:b] for a, b in detail.offsets] == detail.pieces
    assert blocking_client.decode(detail.ids) == text
    as_text = blocking_client.encode(text, special_tokens="as_text")
    assert as_text == tokenizer.encode(text, disallowed_special=())


async def test_large_batch_takes_the_threaded_path_with_identical_ids(
    client: AsyncTokenizerClient, tokenizer, monkeypatch
):
    from gptforge.services.tokenizer import servicer

    calls = []
    real = tokenizer.encode_batch
    monkeypatch.setattr(servicer, "THREADED_CHARS", 100)
    monkeypatch.setattr(tokenizer, "encode_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    texts = [t * 3 for t in TEXTS]
    assert await client.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    assert calls, "encode_batch was not used for a batch over THREADED_CHARS"
