"""gptforge.api.server: status mapping, auth, TLS, health, graceful shutdown, config checks.

A tiny raw-bytes service (no proto needed) runs on the real ``grpc.aio`` server on 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gptforge.api.channel import auth_metadata, create_channel
from gptforge.api.server import (
    BackgroundServer,
    InvalidArgumentError,
    ResourceExhaustedError,
    RunningServer,
    ServerConfig,
    grpc_errors,
    start_server,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "gptforge.test.v1.Echo"


@grpc_errors
async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Echo; special payloads raise the errors under test."""
    if request == b"value":
        raise ValueError("field x=b'value' is bad; send anything else")
    if request == b"full":
        raise ResourceExhaustedError("server full; retry later")
    if request == b"invalid":
        raise InvalidArgumentError("field y is bad")
    if request == b"bug":
        raise KeyError("secret internal detail")
    if request.startswith(b"sleep"):
        await asyncio.sleep(float(request[5:]))
    return request


@grpc_errors
async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Yields the request's bytes one by one, then fails when asked to."""
    for b in request.rstrip(b"!?"):
        await asyncio.sleep(0.01)
        yield bytes([b])
    if request.endswith(b"!"):
        raise ValueError("stream input ends with '!'")
    if request.endswith(b"?"):
        raise RuntimeError("boom")


STREAM_CLOSED = threading.Event()


@grpc_errors
async def forever(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Streams until cancelled; records that its cleanup ran."""
    try:
        while True:
            await asyncio.sleep(0.01)
            yield b"."
    finally:
        STREAM_CLOSED.set()


def register(server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Forever": grpc.unary_stream_rpc_method_handler(forever),
        },
    )
    server.add_generic_rpc_handlers((handler,))


async def start(config: ServerConfig | None = None) -> RunningServer:
    return await start_server(config or ServerConfig(port=0), register, [SERVICE])


async def call(channel: grpc.aio.Channel, payload: bytes, metadata=()) -> bytes:
    return await channel.unary_unary(f"/{SERVICE}/Unary")(payload, metadata=metadata, timeout=10)


async def call_stream(channel: grpc.aio.Channel, payload: bytes, metadata=()) -> list[bytes]:
    return [
        m
        async for m in channel.unary_stream(f"/{SERVICE}/Stream")(
            payload, metadata=metadata, timeout=10
        )
    ]


async def status_of(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details() or ""


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    server = await start()
    yield server
    await server.stop(0)


async def test_handler_errors_map_to_status_codes_never_unknown(running: RunningServer):
    async with create_channel(running.address, aio=True) as channel:
        assert await call(channel, b"hello") == b"hello"
        assert await status_of(call(channel, b"value")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "field x=b'value' is bad; send anything else",
        )
        assert (await status_of(call(channel, b"invalid")))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert (await status_of(call(channel, b"full")))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        code, details = await status_of(call(channel, b"bug"))
        assert code == grpc.StatusCode.INTERNAL
        assert "KeyError" in details and "secret" not in details and "Traceback" not in details
        # streams: messages before the failure arrive, then the mapped status
        assert await call_stream(channel, b"abc") == [b"a", b"b", b"c"]
        code, details = await status_of(call_stream(channel, b"ab!"))
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "stream input ends with '!'")
        code, details = await status_of(call_stream(channel, b"ab?"))
        assert code == grpc.StatusCode.INTERNAL and "boom" not in details
        assert await call(channel, b"still serving") == b"still serving"


async def test_unparsable_request_is_invalid_argument_not_unknown(running: RunningServer):
    garbage = b"\x0a\x02\xff\xfe"  # field 1 (a string) holding invalid UTF-8
    async with create_channel(running.address, aio=True) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        code, details = await status_of(check(garbage, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot parse" in details
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        code, _ = await status_of(_drain(watch(garbage, timeout=10)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        reply = await check(health_pb2.HealthCheckRequest(service=SERVICE).SerializeToString())
        assert health_pb2.HealthCheckResponse.FromString(reply).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


async def _drain(call) -> list:
    return [m async for m in call]


async def test_client_cancel_runs_the_stream_handlers_cleanup_at_once(running: RunningServer):
    STREAM_CLOSED.clear()
    async with create_channel(running.address, aio=True) as channel:
        endless = channel.unary_stream(f"/{SERVICE}/Forever")(b"", timeout=10)
        async for _ in endless:
            break
        endless.cancel()
        for _ in range(100):
            if STREAM_CLOSED.is_set():
                break
            await asyncio.sleep(0.01)
        assert STREAM_CLOSED.is_set(), "the handler's finally did not run within 1 s of cancel"
        assert await call(channel, b"after") == b"after"


def test_grpc_errors_refuses_sync_handlers():
    with pytest.raises(TypeError, match="async def"):
        grpc_errors(lambda request, context: request)


async def test_auth_token_is_required_except_for_health():
    server = await start(ServerConfig(port=0, auth_token="s3cret"))
    try:
        async with create_channel(server.address, aio=True) as channel:
            for metadata in ((), auth_metadata("wrong"), (("authorization", "s3cret"),)):
                code, details = await status_of(call(channel, b"x", metadata))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                assert "Bearer <token>" in details
                code, _ = await status_of(call_stream(channel, b"xy", metadata))
                assert code == grpc.StatusCode.UNAUTHENTICATED
            assert await call(channel, b"x", auth_metadata("s3cret")) == b"x"
            assert await call_stream(channel, b"xy", auth_metadata("s3cret")) == [b"x", b"y"]
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_health_follows_set_serving_and_shutdown(running: RunningServer):
    async with create_channel(running.address, aio=True) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await running.set_serving(False)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, _ = await status_of(health.Check(health_pb2.HealthCheckRequest(service="nope")))
        assert code == grpc.StatusCode.NOT_FOUND


async def test_graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones():
    server = await start(ServerConfig(port=0, grace_seconds=5))
    async with create_channel(server.address, aio=True) as channel:
        assert await call(channel, b"warm") == b"warm"
        in_flight = asyncio.ensure_future(call(channel, b"sleep0.6"))
        streaming = asyncio.ensure_future(call_stream(channel, b"0123456789"))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.1)
        code, _ = await status_of(call(channel, b"late"))
        assert code == grpc.StatusCode.UNAVAILABLE
        async with create_channel(server.address, aio=True) as fresh:
            code, _ = await status_of(call(fresh, b"late"))
            assert code == grpc.StatusCode.UNAVAILABLE
        assert await in_flight == b"sleep0.6"
        assert b"".join(await streaming) == b"0123456789"
        await stopping


async def test_grace_period_cancels_calls_that_run_too_long():
    server = await start(ServerConfig(port=0))
    async with create_channel(server.address, aio=True) as channel:
        slow = asyncio.ensure_future(call(channel, b"sleep30"))
        await asyncio.sleep(0.2)
        await server.stop(grace=0.2)
        code, _ = await status_of(slow)
        assert code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


async def test_tls_server_needs_a_tls_client(self_signed_cert):
    cert, key = self_signed_cert
    server = await start(ServerConfig(port=0, tls_cert=cert, tls_key=key))
    try:
        async with create_channel(server.address, aio=True, tls_root_cert=cert) as channel:
            assert await call(channel, b"secure") == b"secure"
        async with create_channel(server.address, aio=True) as plaintext:
            code, _ = await status_of(call(plaintext, b"x"))
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"port": 70000}, "port=70000"),
        ({"tls_cert": Path("c.pem")}, "give both PEM files"),
        ({"auth_token": "  "}, "auth_token is empty"),
        ({"max_receive_message_bytes": 10}, "max_receive_message_bytes=10"),
        ({"grace_seconds": -1}, "grace_seconds=-1"),
    ],
)
def test_server_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        ServerConfig(**kwargs)


async def test_missing_tls_file_and_busy_port_fail_clearly(tmp_path: Path, running: RunningServer):
    with pytest.raises(ValueError, match="cannot read the TLS key"):
        await start(ServerConfig(port=0, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"))
    with pytest.raises(OSError, match="cannot bind"):
        await start(ServerConfig(port=running.port))


def test_background_server_serves_blocking_clients():
    with BackgroundServer(start) as bg:
        channel = create_channel(bg.address)
        try:
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"sync", timeout=10) == b"sync"
        finally:
            channel.close()
    assert bg.running is not None and bg.running.stopped.is_set()


async def test_shutdown_ends_health_watches_instead_of_waiting_out_the_grace():
    server = await start(ServerConfig(port=0, grace_seconds=60))
    async with create_channel(server.address, aio=True) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(server.stop(), timeout=30)  # the grace would be 60 s
        took = loop.time() - began
        last = await watch.read()
        assert last.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await watch.read() is grpc.aio.EOF
        assert await watch.code() == grpc.StatusCode.OK
        assert took < 30


async def test_tls_key_that_does_not_match_the_certificate_is_named(
    tmp_path: Path, self_signed_cert
):
    import shutil
    import subprocess

    cert, _ = self_signed_cert
    other = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True
    )
    assert shutil.which("openssl")
    with pytest.raises(ValueError, match="does not match certificate") as err:
        await start(ServerConfig(port=0, tls_cert=cert, tls_key=other))
    assert "port" not in str(err.value)


async def test_a_signal_during_loading_stops_at_once_and_a_failed_load_is_raised():
    import os
    import signal

    from gptforge.api.server import serve_until_signal

    server = await start(ServerConfig(port=0))
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    never = asyncio.ensure_future(asyncio.sleep(3600))
    assert await asyncio.wait_for(serve_until_signal(server, loading=never), 10) is False
    assert server.stopped.is_set() and never.cancelled()

    server = await start(ServerConfig(port=0))

    async def broken() -> None:
        raise ValueError("context_length=1 must be >= 2")

    with pytest.raises(ValueError, match="context_length=1"):
        await serve_until_signal(server, loading=broken())
    assert server.stopped.is_set()
