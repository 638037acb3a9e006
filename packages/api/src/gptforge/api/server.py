"""Shared ``grpc.aio`` server plumbing for the gptforge services.

Both services build their server here so they behave the same way:

- health checking (``grpc.health.v1.Health``, per service and overall ``""``) and reflection;
- explicit max message sizes, ``SO_REUSEPORT`` off (a busy port fails instead of being shared);
- optional TLS (PEM cert + key) and an optional shared-token auth interceptor
  (``authorization: Bearer <token>`` metadata; health checks stay open for probes);
- graceful shutdown: health turns NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get
  ``grace_seconds`` to finish (:meth:`RunningServer.stop`, :func:`serve_until_signal`);
- :class:`BackgroundServer` runs a server on its own event loop thread (tests, demo, benchmarks);
- :func:`grpc_errors` maps handler exceptions to status codes (see :mod:`gptforge.api.errors`),
  and a request that does not parse gets INVALID_ARGUMENT (:class:`RequestParseInterceptor`).

>>> async def main():
...     running = await start_server(ServerConfig(port=0), register, ["pkg.v1.MyService"])
...     await serve_until_signal(running)  # SIGTERM/SIGINT -> graceful stop
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import hmac
import inspect
import logging
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from gptforge.api.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
    grpc_errors,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = [
    "AUTH_METADATA_KEY",
    "REQUEST_BYTES",
    "BackgroundServer",
    "InvalidArgumentError",
    "RequestParseInterceptor",
    "ResourceExhaustedError",
    "RunningServer",
    "ServerConfig",
    "ServiceError",
    "TokenAuthInterceptor",
    "UnavailableError",
    "grpc_errors",
    "serve_until_signal",
    "start_server",
]

log = logging.getLogger("gptforge.api")

AUTH_METADATA_KEY = "authorization"
MiB = 1024 * 1024
# Health checks must answer without a token so load balancers and probes can use them.
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Requests larger than this are parsed on a worker thread: parsing is O(size) and the event
# loop must keep answering health checks and streaming tokens meanwhile.
THREAD_PARSE_BYTES = 64 * 1024
# Size of the request being handled, set before the handler runs (its cost without re-measuring:
# ByteSize() or reading every string field is O(size) with the GIL held).
REQUEST_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("request_bytes", default=0)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BUFFER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Network and safety settings shared by every gptforge gRPC server.

    Args:
        host: interface to bind; loopback by default. Use ``0.0.0.0`` only with TLS and a token.
        port: TCP port; 0 picks a free one (read it from :attr:`RunningServer.port`).
        max_receive_message_bytes: largest request message accepted (RESOURCE_EXHAUSTED above).
        max_send_message_bytes: largest response message sent.
        tls_cert: PEM certificate chain file; needs ``tls_key``.
        tls_key: PEM private key file; needs ``tls_cert``.
        auth_token: when set, every call except health checks must carry
            ``authorization: Bearer <auth_token>`` metadata, else UNAUTHENTICATED.
        grace_seconds: how long in-flight calls may run after shutdown starts.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_receive_message_bytes: int = 16 * MiB
    max_send_message_bytes: int = 64 * MiB
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = None
    grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} is not a TCP port; use 0..65535 (0 = any free)")
        for name in ("max_receive_message_bytes", "max_send_message_bytes"):
            value = getattr(self, name)
            if not 1024 <= value <= 2**31 - 1:
                raise ValueError(f"{name}={value!r} must be in 1024..{2**31 - 1} bytes")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                f"tls_cert={self.tls_cert!r} and tls_key={self.tls_key!r}: give both PEM files "
                "for TLS, or neither for a plaintext server"
            )
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError(
                "auth_token is empty; pass a non-empty shared token or None for no auth"
            )
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds={self.grace_seconds!r} must be >= 0")

    @property
    def tls(self) -> bool:
        """Whether the server uses TLS."""
        return self.tls_cert is not None

    def grpc_options(self) -> list[tuple[str, Any]]:
        """The channel arguments applied to the server."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
        ]


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read the TLS {what} {str(path)!r}: {exc}; pass a PEM file"
        ) from exc


def _return_large_buffers_to_the_os() -> None:
    """Serve every allocation of ``LARGE_BUFFER_BYTES`` or more from its own mapping (glibc).

    glibc raises its mmap threshold after the first large buffer is freed, so later
    request-sized buffers come from per-thread heaps that keep the memory: a client sending
    maximum-size messages in a loop then grows the server by tens of MiB per worker thread.
    A fixed threshold returns each such buffer to the OS when it is freed.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


def _check_key_pair(cert: Path, key: Path) -> None:
    """Fail with one line when the key does not belong to the certificate (gRPC only says
    that it cannot bind)."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ValueError(
            f"TLS key {str(key)!r} does not match certificate {str(cert)!r} ({exc.reason}); "
            "pass the private key the certificate was issued for"
        ) from None
    except OSError as exc:
        raise ValueError(
            f"cannot read the TLS certificate/key {str(cert)!r}/{str(key)!r}: {exc}"
        ) from None


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # a bare IPv6 address
        host = f"[{host}]"
    return f"{host}:{port}"


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` metadata (UNAUTHENTICATED).

    Args:
        token: the shared secret; compared in constant time.
        open_methods: full method names that need no token (health checks by default).
    """

    def __init__(self, token: str, open_methods: frozenset[str] = HEALTH_METHODS) -> None:
        self._expected = f"Bearer {token}".encode()
        self._open = open_methods

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._open:
            return handler
        if self._authorized(handler_call_details):
            return handler
        return _denying_handler(handler, handler_call_details.method)


def _denying_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts with UNAUTHENTICATED."""
    message = (
        f"{method} needs a valid token: send metadata "
        f"'{AUTH_METADATA_KEY}: Bearer <token>' (client option auth_token / --auth-token)"
    )

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **codecs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **codecs)


class RequestParseInterceptor(grpc.aio.ServerInterceptor):
    """Answers a request that does not parse (e.g. invalid UTF-8 in a string field) with
    INVALID_ARGUMENT; without it ``grpc.aio`` reports the DecodeError as UNKNOWN.

    Only unary-request methods are wrapped (their one message is parsed here, before the
    handler runs); streaming-request methods keep gRPC's own handling.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method

        async def parsed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            REQUEST_BYTES.set(len(raw))
            try:
                if len(raw) > THREAD_PARSE_BYTES:
                    return await asyncio.to_thread(parse, raw)
                return parse(raw)
            except Exception as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"cannot parse the request of {method} ({type(exc).__name__}: {exc}); "
                    "send a message of the method's request type (string fields must be UTF-8)",
                )

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await inner(await parsed(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(
                unary, response_serializer=handler.response_serializer
            )
        stream_inner = handler.unary_stream

        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            result = stream_inner(await parsed(raw, context), context)
            if inspect.isasyncgen(result):
                try:
                    async for item in result:
                        yield item
                finally:  # run the handler's cleanup now on cancel, not at garbage collection
                    await result.aclose()
            else:  # a coroutine that writes with context.write()
                await result

        return grpc.unary_stream_rpc_method_handler(
            stream, response_serializer=handler.response_serializer
        )


class ClosingHealthServicer(health.aio.HealthServicer):
    """``grpc.health.v1.Health`` whose ``Watch`` streams end (OK) once shutdown has begun.

    The reference servicer keeps every Watch open forever, so a graceful stop always waited
    the whole grace period for the clients' health watchers. Here a Watch sends the
    NOT_SERVING update and returns, and in-flight work alone decides how long a stop takes.
    """

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        # Same loop as the reference servicer (its private state), plus the exit on shutdown.
        condition = self._server_watchers[request.service]
        last = None
        async with condition:
            while True:
                status = self._server_status.get(
                    request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
                if self._gracefully_shutting_down:
                    return
                await condition.wait()

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service, and wake every Watch so that it ends."""
        await super().enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()


@dataclass
class RunningServer:
    """A started server with its health servicer; stop it with :meth:`stop`."""

    server: grpc.aio.Server
    health: ClosingHealthServicer
    config: ServerConfig
    port: int
    service_names: tuple[str, ...]
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        """``host:port`` to pass to a client."""
        return _bind_address(self.config.host, self.port)

    async def set_serving(self, serving: bool) -> None:
        """Set every service's health (and the overall ``""`` status) to SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish.

        Args:
            grace: seconds in-flight calls may still run (default ``config.grace_seconds``);
                calls still running after it are cancelled.
        """
        if self.stopped.is_set():
            return
        grace = self.config.grace_seconds if grace is None else grace
        log.info("shutting down %s (grace %.1fs)", self.address, grace)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.stopped.set()

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped."""
        await self.server.wait_for_termination()


async def start_server(
    config: ServerConfig,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    serving: bool = True,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Build, bind and start a ``grpc.aio`` server with health, reflection, limits, TLS and auth.

    Args:
        config: network and safety settings.
        register: adds the servicers, e.g. ``lambda s: add_FooServicer_to_server(impl, s)``.
        service_names: full names of the registered services (``pkg.v1.FooService``), for
            health and reflection.
        serving: initial health status; pass False and call ``set_serving(True)`` after warm-up.
        interceptors: extra server interceptors (run after the auth check).
    """
    # Auth first (outermost): an unauthenticated caller learns nothing, not even parse errors.
    all_interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.auth_token is not None:
        all_interceptors.append(TokenAuthInterceptor(config.auth_token))
    all_interceptors.append(RequestParseInterceptor())
    all_interceptors.extend(interceptors)
    _return_large_buffers_to_the_os()
    server = grpc.aio.server(interceptors=all_interceptors, options=config.grpc_options())
    register(server)
    health_servicer = ClosingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = _bind_address(config.host, config.port)
    try:
        if config.tls:
            assert config.tls_cert is not None and config.tls_key is not None
            credentials = grpc.ssl_server_credentials(
                [(_read_pem(config.tls_key, "key"), _read_pem(config.tls_cert, "certificate"))]
            )
            _check_key_pair(config.tls_cert, config.tls_key)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(
            f"cannot bind {address!r}: {exc}; the port may be in use or the host not local. "
            "Pick another port (0 = any free one) or host"
        ) from exc
    if port == 0:
        raise OSError(f"cannot bind {address!r}; pick another port (0 = any free one) or host")
    await server.start()
    running = RunningServer(server, health_servicer, config, port, names)
    await running.set_serving(serving)
    log.info(
        "serving %s on %s (tls=%s, auth=%s)",
        names,
        running.address,
        config.tls,
        config.auth_token is not None,
    )
    return running


async def serve_until_signal(
    running: RunningServer,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    *,
    loading: Awaitable[Any] | None = None,
    announce: Callable[[], object] | None = None,
) -> bool:
    """Serve until one of ``signals`` arrives, then stop gracefully (main thread only).

    Args:
        running: the started server.
        signals: the signals that stop it.
        loading: work that must finish before the server is useful (a model's load and
            warm-up). A signal meanwhile stops the server at once, without waiting for it;
            its failure stops the server and is raised.
        announce: called once the signal handlers are in place (print the address there: a
            signal sent as soon as it shows is then handled).

    Returns:
        False when a signal arrived before ``loading`` finished, else True.
    """
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, received.set)
    waiter = asyncio.ensure_future(received.wait())
    try:
        if announce is not None:
            announce()
        if loading is not None:
            work = asyncio.ensure_future(loading)
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.info("signal during start-up: stopping without waiting for it")
                work.cancel()
                await running.stop(0)
                return False
            if work.exception() is not None:
                await running.stop(0)
                work.result()
        done = asyncio.ensure_future(running.wait_for_termination())
        await asyncio.wait({done, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if received.is_set():
            await running.stop()
        done.cancel()
        return True
    finally:
        waiter.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)


class BackgroundServer:
    """Runs a server on a private event loop in a daemon thread (tests, demo, benchmarks).

    Args:
        factory: coroutine function that starts the server, e.g.
            ``lambda: tokenizer_service.start(tokenizer, ServerConfig())``.

    >>> with BackgroundServer(factory) as bg:  # doctest: +SKIP
    ...     client = TokenizerClient(bg.address)
    """

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, RunningServer]]) -> None:
        self._factory = factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="gptforge-grpc-server"
        )
        self.running: RunningServer | None = None

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start the loop thread and the server; returns once the port is bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._factory(), self._loop)
        try:
            self.running = future.result(timeout)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @property
    def address(self) -> str:
        """``host:port`` of the running server."""
        if self.running is None:
            raise RuntimeError("BackgroundServer is not started; call start() first")
        return self.running.address

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self.running is None:
            raise RuntimeError("BackgroundServer is not started; call start() first")
        return self.running.port

    def call(self, coro: Awaitable[Any], timeout: float | None = 30.0) -> Any:
        """Run a coroutine on the server's loop (e.g. ``bg.call(bg.running.set_serving(False))``)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> None:
        """Stop the server gracefully and end the loop thread."""
        if self.running is not None:
            self.call(self.running.stop(grace), timeout)
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self if self.running is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)
