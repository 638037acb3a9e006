"""Client-side helpers shared by the gptforge service clients: channels and auth metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from gptforge.api.server import AUTH_METADATA_KEY, MiB

__all__ = ["auth_metadata", "channel_options", "create_channel"]


def channel_options(max_message_bytes: int = 64 * MiB) -> list[tuple[str, Any]]:
    """Channel arguments: message size limits both ways (gRPC's default receive limit is 4 MiB)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def auth_metadata(auth_token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a shared token (empty without one)."""
    if auth_token is None:
        return ()
    return ((AUTH_METADATA_KEY, f"Bearer {auth_token}"),)


def _credentials(tls_root_cert: str | Path | bytes | bool) -> grpc.ChannelCredentials:
    if tls_root_cert is True:
        return grpc.ssl_channel_credentials()  # the system's trusted roots
    if isinstance(tls_root_cert, bytes):
        return grpc.ssl_channel_credentials(root_certificates=tls_root_cert)
    path = Path(tls_root_cert)  # type: ignore[arg-type]
    try:
        return grpc.ssl_channel_credentials(root_certificates=path.read_bytes())
    except OSError as exc:
        raise ValueError(
            f"cannot read the TLS root certificate {str(path)!r}: {exc}; pass the PEM file "
            "that signed the server's certificate (for a self-signed server: its cert)"
        ) from exc


def create_channel(
    target: str,
    *,
    tls_root_cert: str | Path | bytes | bool | None = None,
    aio: bool = False,
    max_message_bytes: int = 64 * MiB,
    server_name: str | None = None,
) -> grpc.Channel | grpc.aio.Channel:
    """Open a channel to ``target`` (``host:port``), plaintext or TLS.

    Args:
        target: ``host:port`` of the server.
        tls_root_cert: None for plaintext; a PEM path/bytes of the CA (or self-signed cert) to
            trust; True for the system's trusted roots.
        aio: return a ``grpc.aio.Channel`` instead of a blocking ``grpc.Channel``.
        max_message_bytes: message size limit in both directions.
        server_name: TLS name to check instead of the target's host (``grpc.ssl_target_name_override``).
    """
    options = channel_options(max_message_bytes)
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    module: Any = grpc.aio if aio else grpc
    if tls_root_cert is None or tls_root_cert is False:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, _credentials(tls_root_cert), options=options)
