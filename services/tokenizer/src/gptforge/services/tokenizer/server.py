"""Start the tokenizer service: ``start`` (async), ``serve`` (blocking, signals), background."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gptforge.api.server import (
    BackgroundServer,
    RunningServer,
    ServerConfig,
    serve_until_signal,
    start_server,
)
from gptforge.api.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from gptforge.services.tokenizer.servicer import (
    SERVICE_NAME,
    TokenizerLike,
    TokenizerLimits,
    TokenizerServicer,
)

log = logging.getLogger("gptforge.services.tokenizer")


async def start(
    tokenizer: TokenizerLike,
    config: ServerConfig | None = None,
    limits: TokenizerLimits | None = None,
    *,
    name: str = "",
) -> RunningServer:
    """Start a TokenizerService on the running event loop and return it (already SERVING).

    Args:
        tokenizer: the tokenizer to serve (``gptforge.tokenizer.Tokenizer``).
        config: network settings (loopback, a free port by default).
        limits: request limits.
        name: reported by GetTokenizerInfo (default: the tokenizer's ``name``).
    """
    config = config or ServerConfig()
    servicer = TokenizerServicer(
        tokenizer,
        limits,
        name=name,
        message_limits=(config.max_receive_message_bytes, config.max_send_message_bytes),
    )
    return await start_servicer(servicer, config)


async def start_servicer(servicer: TokenizerServicer, config: ServerConfig) -> RunningServer:
    """Start a server (health, reflection, limits, TLS, auth) for an already built servicer."""
    return await start_server(
        config,
        lambda server: pb_grpc.add_TokenizerServiceServicer_to_server(servicer, server),
        [SERVICE_NAME],
    )


def serve_in_background(
    tokenizer: TokenizerLike,
    config: ServerConfig | None = None,
    limits: TokenizerLimits | None = None,
    *,
    name: str = "",
) -> BackgroundServer:
    """Start the service on a background thread; ``.address`` to connect, ``.stop()`` to end.

    >>> with serve_in_background(tok) as bg:  # doctest: +SKIP
    ...     print(TokenizerClient(bg.address).encode("hello"))
    """
    return BackgroundServer(lambda: start(tokenizer, config, limits, name=name)).start()


def load_tokenizer(tokenizer_dir: str | Path) -> TokenizerLike:
    """Load a saved ``gptforge.tokenizer`` directory, failing with the fix when it is not one."""
    from gptforge.tokenizer import Tokenizer

    path = Path(tokenizer_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {str(path)!r} does not exist; train one with "
            "`gptforge tokenizer train --out DIR` or pass a run's `tokenizer/` directory"
        )
    return Tokenizer.from_dir(path)


def serve(
    tokenizer_dir: str | Path,
    config: ServerConfig | None = None,
    limits: TokenizerLimits | None = None,
) -> None:
    """Serve the tokenizer saved in ``tokenizer_dir`` until SIGTERM/SIGINT (graceful stop).

    Args:
        tokenizer_dir: a directory written by ``Tokenizer.save``.
        config: network settings (``127.0.0.1:50051`` is the CLI's default).
        limits: request limits.
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    config = config or ServerConfig(port=50051)

    async def main() -> None:
        running = await start(tokenizer, config, limits)
        await serve_until_signal(
            running,
            announce=lambda: print(
                f"tokenizer service listening on {running.address} "
                f"(tls={config.tls}, auth={config.auth_token is not None}); Ctrl-C to stop",
                flush=True,
            ),
        )
        print("tokenizer service stopped", flush=True)

    asyncio.run(main())
