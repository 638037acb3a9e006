"""CLI verbs of the tokenizer service: ``serve tokenizer`` and ``client tokenize|detokenize|tokenizer-info``.

grpc and the service are imported inside the commands so ``gptforge --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from gptforge.cli.options import warn_token_on_command_line

T = TypeVar("T")
AUTH_ENV = "GPTFORGE_AUTH_TOKEN"
DEFAULT_TARGET = "127.0.0.1:50051"

TargetOpt = Annotated[str, typer.Option("--target", help="host:port of the tokenizer service.")]
AuthOpt = Annotated[
    str | None,
    typer.Option(
        "--auth-token",
        envvar=AUTH_ENV,
        show_envvar=True,
        help="Shared token the server was started with (prefer the env variable).",
    ),
]
RootCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--tls-root-cert", help="PEM to trust for a TLS server (its cert if self-signed)."
    ),
]


class SpecialMode(StrEnum):
    """How special-token text in the input is handled."""

    reject = "reject"
    allow_all = "allow_all"
    as_text = "as_text"


def serve_tokenizer(
    tokenizer: Annotated[
        Path, typer.Option("--tokenizer", help="Tokenizer directory (Tokenizer.save).")
    ],
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback unless exposed on purpose.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port).")] = 50051,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate chain (with --tls-key).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key (with --tls-cert).")
    ] = None,
    auth_token: Annotated[
        str | None,
        typer.Option(
            "--auth-token",
            envvar=AUTH_ENV,
            show_envvar=True,
            help="Require 'authorization: Bearer <token>' on every call but health checks.",
        ),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most texts/sequences per request.")] = 1024,
    max_text_bytes: Annotated[int, typer.Option(help="Longest text in UTF-8 bytes.")] = 4
    * 1024
    * 1024,
    max_receive_message_bytes: Annotated[int, typer.Option(help="Largest request message.")] = 16
    * 1024
    * 1024,
    max_work_bytes: Annotated[
        int,
        typer.Option(help="Request bytes worked on at once; beyond: RESOURCE_EXHAUSTED at once."),
    ] = 32 * 1024 * 1024,
    grace_seconds: Annotated[
        float, typer.Option(help="Time in-flight calls get on SIGTERM/SIGINT.")
    ] = 10.0,
) -> None:
    """Serve a tokenizer over gRPC (TokenizerService v1) until SIGTERM/SIGINT.

    Health checking and reflection are on; Ctrl-C stops gracefully (in-flight calls finish).
    """
    from gptforge.api.server import ServerConfig
    from gptforge.services.tokenizer import TokenizerLimits, serve

    warn_token_on_command_line()
    if host not in {"127.0.0.1", "localhost", "::1"} and (auth_token is None or tls_cert is None):
        typer.secho(
            f"warning: serving on {host!r} without TLS and an auth token; anyone who can "
            "reach the port can call it",
            err=True,
            fg="yellow",
        )
    try:
        config = ServerConfig(
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            auth_token=auth_token,
            grace_seconds=grace_seconds,
            max_receive_message_bytes=max_receive_message_bytes,
        )
        limits = TokenizerLimits(
            max_batch_size=max_batch_size,
            max_text_bytes=max_text_bytes,
            max_work_bytes=max_work_bytes,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        serve(tokenizer, config, limits)
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from exc


def _client(target: str, auth_token: str | None, tls_root_cert: Path | None) -> Any:
    from gptforge.services.tokenizer import TokenizerClient

    return TokenizerClient(target, auth_token=auth_token, tls_root_cert=tls_root_cert)


def _call(fn: Callable[[], T]) -> T:
    """Run a client call; print a gRPC failure as 'error: CODE: details' and exit 1."""
    import grpc

    try:
        return fn()
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        hint = ""
        if code == "UNAVAILABLE":
            hint = " (is the service running? start it with `gptforge serve tokenizer --tokenizer DIR`)"
        elif code == "UNAUTHENTICATED":
            hint = f" (pass --auth-token or set {AUTH_ENV})"
        typer.secho(f"error: {code}: {details}{hint}", err=True, fg="red")
        raise typer.Exit(1) from exc


def client_tokenize(
    texts: Annotated[list[str], typer.Argument(help="Texts to encode.")],
    target: TargetOpt = DEFAULT_TARGET,
    special_tokens: Annotated[
        SpecialMode, typer.Option(help="Special-token text handling.")
    ] = SpecialMode.reject,
    pieces: Annotated[
        bool, typer.Option("--pieces", help="Show each token's bytes and byte span.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    auth_token: AuthOpt = None,
    tls_root_cert: RootCertOpt = None,
) -> None:
    """Encode TEXTS with a running tokenizer service and print the token ids."""
    with _client(target, auth_token, tls_root_cert) as client:
        encoded = _call(lambda: client.encode_detailed(texts, special_tokens=special_tokens.value))
    for text, enc in zip(texts, encoded, strict=True):
        if as_json:
            record: dict[str, Any] = {"text": text, "ids": enc.ids}
            if pieces:
                record["pieces"] = [p.hex() for p in enc.pieces]
                record["offsets"] = enc.offsets
            typer.echo(json.dumps(record, ensure_ascii=False))
        elif pieces:
            typer.echo(f"{text!r}: {len(enc.ids)} tokens")
            for token_id, piece, (start, end) in zip(enc.ids, enc.pieces, enc.offsets, strict=True):
                typer.echo(f"  {token_id:>7}  [{start:>5}, {end:>5})  {piece!r}")
        else:
            typer.echo(" ".join(map(str, enc.ids)))


def client_detokenize(
    ids: Annotated[list[int], typer.Argument(help="Token ids to decode.")],
    target: TargetOpt = DEFAULT_TARGET,
    skip_special_tokens: Annotated[
        bool, typer.Option(help="Drop special tokens from the text.")
    ] = False,
    auth_token: AuthOpt = None,
    tls_root_cert: RootCertOpt = None,
) -> None:
    """Decode token IDS with a running tokenizer service and print the text."""
    with _client(target, auth_token, tls_root_cert) as client:
        typer.echo(_call(lambda: client.decode(ids, skip_special_tokens=skip_special_tokens)))


def client_tokenizer_info(
    target: TargetOpt = DEFAULT_TARGET,
    auth_token: AuthOpt = None,
    tls_root_cert: RootCertOpt = None,
) -> None:
    """Print the served tokenizer's vocabulary size, special tokens, fingerprint and limits."""
    from google.protobuf.json_format import MessageToDict

    with _client(target, auth_token, tls_root_cert) as client:
        info = _call(client.info)
        status = _call(client.health)
    record = MessageToDict(
        info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    record["health"] = status
    typer.echo(json.dumps(record, indent=2, ensure_ascii=False))


def client_tokenizer_load(
    target: TargetOpt = DEFAULT_TARGET,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated client counts to run.")
    ] = "1,8,32",
    seconds: Annotated[float, typer.Option(help="Measuring time per concurrency level.")] = 2.0,
    batch: Annotated[int, typer.Option(help="Texts per Encode request.")] = 1,
    auth_token: AuthOpt = None,
) -> None:
    """Measure Encode requests/s and latency of a running tokenizer service (closed loop)."""
    import asyncio

    from gptforge.services.tokenizer.loadgen import encode_load

    try:
        levels = [int(x) for x in concurrency.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--concurrency={concurrency!r}: use numbers like 1,8,32") from exc

    def run(level: int) -> Any:
        return asyncio.run(
            encode_load(
                target,
                concurrency=level,
                seconds=seconds,
                texts_per_request=batch,
                auth_token=auth_token,
            )
        )

    for level in levels:
        result = _call(functools.partial(run, level))
        typer.echo(result.row())


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add ``serve tokenizer`` and the tokenizer ``client`` verbs."""
    groups["serve"].command("tokenizer")(serve_tokenizer)
    groups["client"].command("tokenize")(client_tokenize)
    groups["client"].command("detokenize")(client_detokenize)
    groups["client"].command("tokenizer-info")(client_tokenizer_info)
    groups["client"].command("tokenizer-load")(client_tokenizer_load)
