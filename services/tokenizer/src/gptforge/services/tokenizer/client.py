"""Python clients of the v1 TokenizerService: :class:`TokenizerClient` (blocking) and
:class:`AsyncTokenizerClient` (``grpc.aio``). Both raise ``grpc.RpcError`` with the server's status
code and message on failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptforge.api.channel import auth_metadata, create_channel
from gptforge.api.tokenizer.v1 import tokenizer_pb2 as pb
from gptforge.api.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SpecialMode = Literal["reject", "allow_all", "as_text"]
_MODES: dict[str, pb.SpecialTokenMode] = {
    "reject": pb.SPECIAL_TOKEN_MODE_REJECT,
    "allow_all": pb.SPECIAL_TOKEN_MODE_ALLOW_ALL,
    "as_text": pb.SPECIAL_TOKEN_MODE_AS_TEXT,
}


@dataclass(frozen=True)
class EncodedText:
    """One encoded text: ids, and when requested each token's bytes and byte span."""

    ids: list[int]
    pieces: list[bytes]
    offsets: list[tuple[int, int]]


def _mode(special_tokens: SpecialMode) -> pb.SpecialTokenMode:
    try:
        return _MODES[special_tokens]
    except KeyError:
        raise ValueError(
            f"special_tokens={special_tokens!r} is not a mode; use one of {sorted(_MODES)}"
        ) from None


def _encode_request(
    texts: Sequence[str],
    special_tokens: SpecialMode,
    allowed_special: Sequence[str],
    pieces: bool = False,
    offsets: bool = False,
) -> pb.EncodeRequest:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one str; use encode() for one text")
    return pb.EncodeRequest(
        texts=texts,
        special_token_mode=_mode(special_tokens),
        allowed_special=allowed_special,
        return_pieces=pieces,
        return_offsets=offsets,
    )


def _count_request(
    texts: Sequence[str], special_tokens: SpecialMode, allowed_special: Sequence[str]
) -> pb.CountTokensRequest:
    if isinstance(texts, str):
        texts = [texts]
    return pb.CountTokensRequest(
        texts=texts, special_token_mode=_mode(special_tokens), allowed_special=allowed_special
    )


def _decode_request(
    sequences: Sequence[Sequence[int]], skip_special_tokens: bool, data: bool = False
) -> pb.DecodeRequest:
    return pb.DecodeRequest(
        sequences=[pb.DecodeSequence(ids=list(s)) for s in sequences],
        skip_special_tokens=skip_special_tokens,
        return_bytes=data,
    )


def _encoded(enc: pb.Encoding) -> EncodedText:
    return EncodedText(
        ids=list(enc.ids),
        pieces=list(enc.pieces),
        offsets=list(zip(enc.byte_starts, enc.byte_ends, strict=True)),
    )


class _Base:
    def __init__(
        self,
        target: str,
        *,
        auth_token: str | None,
        tls_root_cert: str | Path | bytes | bool | None,
        timeout: float | None,
        server_name: str | None,
        aio: bool,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = auth_metadata(auth_token)
        self.channel: Any = create_channel(
            target, tls_root_cert=tls_root_cert, aio=aio, server_name=server_name
        )
        self.stub = pb_grpc.TokenizerServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _kw(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "metadata": self._metadata}


class TokenizerClient(_Base):
    """Blocking client of a TokenizerService.

    Args:
        target: ``host:port`` of the server.
        auth_token: shared token when the server was started with one.
        tls_root_cert: PEM path/bytes to trust for a TLS server (True: system roots).
        timeout: per-call deadline in seconds (None: no deadline).
        server_name: TLS host name to verify when it differs from ``target``'s host.

    >>> with TokenizerClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     ids = client.encode("hello world")
    ...     client.decode(ids)
    'hello world'
    """

    def __init__(
        self,
        target: str,
        *,
        auth_token: str | None = None,
        tls_root_cert: str | Path | bytes | bool | None = None,
        timeout: float | None = 30.0,
        server_name: str | None = None,
    ) -> None:
        super().__init__(
            target,
            auth_token=auth_token,
            tls_root_cert=tls_root_cert,
            timeout=timeout,
            server_name=server_name,
            aio=False,
        )

    def encode(
        self,
        text: str,
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[int]:
        """Token ids of one text."""
        return self.encode_batch(
            [text], special_tokens=special_tokens, allowed_special=allowed_special
        )[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[list[int]]:
        """Token ids of each text (one request)."""
        response = self.stub.Encode(
            _encode_request(texts, special_tokens, allowed_special), **self._kw()
        )
        return [list(e.ids) for e in response.encodings]

    def encode_detailed(
        self,
        texts: Sequence[str],
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[EncodedText]:
        """Ids, token bytes and byte spans of each text."""
        request = _encode_request(texts, special_tokens, allowed_special, pieces=True, offsets=True)
        return [_encoded(e) for e in self.stub.Encode(request, **self._kw()).encodings]

    def count_tokens(
        self,
        texts: str | Sequence[str],
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[int]:
        """Token count of each text."""
        request = _count_request(texts, special_tokens, allowed_special)  # type: ignore[arg-type]
        return list(self.stub.CountTokens(request, **self._kw()).counts)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of one id sequence (invalid UTF-8 replaced by U+FFFD)."""
        return self.decode_batch([ids], skip_special_tokens=skip_special_tokens)[0]

    def decode_batch(
        self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool = False
    ) -> list[str]:
        """Text of each id sequence (one request)."""
        response = self.stub.Decode(_decode_request(sequences, skip_special_tokens), **self._kw())
        return [r.text for r in response.results]

    def decode_bytes(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> bytes:
        """The exact bytes of one id sequence."""
        request = _decode_request([ids], skip_special_tokens, data=True)
        return self.stub.Decode(request, **self._kw()).results[0].data

    def info(self) -> pb.GetTokenizerInfoResponse:
        """Vocabulary size, special tokens, fingerprint and server limits."""
        return self.stub.GetTokenizerInfo(pb.GetTokenizerInfoRequest(), **self._kw())

    def health(self, service: str = "") -> str:
        """Health status name (``SERVING``, ``NOT_SERVING``, ...) of the server or one service."""
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> TokenizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTokenizerClient(_Base):
    """``grpc.aio`` client of a TokenizerService; the same methods as :class:`TokenizerClient`,
    as coroutines. Use it inside an event loop (``async with AsyncTokenizerClient(addr) as c``).
    """

    def __init__(
        self,
        target: str,
        *,
        auth_token: str | None = None,
        tls_root_cert: str | Path | bytes | bool | None = None,
        timeout: float | None = 30.0,
        server_name: str | None = None,
    ) -> None:
        super().__init__(
            target,
            auth_token=auth_token,
            tls_root_cert=tls_root_cert,
            timeout=timeout,
            server_name=server_name,
            aio=True,
        )

    async def encode(
        self,
        text: str,
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[int]:
        """Token ids of one text."""
        return (
            await self.encode_batch(
                [text], special_tokens=special_tokens, allowed_special=allowed_special
            )
        )[0]

    async def encode_batch(
        self,
        texts: Sequence[str],
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[list[int]]:
        """Token ids of each text (one request)."""
        request = _encode_request(texts, special_tokens, allowed_special)
        response = await self.stub.Encode(request, **self._kw())
        return [list(e.ids) for e in response.encodings]

    async def encode_detailed(
        self,
        texts: Sequence[str],
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[EncodedText]:
        """Ids, token bytes and byte spans of each text."""
        request = _encode_request(texts, special_tokens, allowed_special, pieces=True, offsets=True)
        return [_encoded(e) for e in (await self.stub.Encode(request, **self._kw())).encodings]

    async def count_tokens(
        self,
        texts: str | Sequence[str],
        *,
        special_tokens: SpecialMode = "reject",
        allowed_special: Sequence[str] = (),
    ) -> list[int]:
        """Token count of each text."""
        request = _count_request(texts, special_tokens, allowed_special)  # type: ignore[arg-type]
        return list((await self.stub.CountTokens(request, **self._kw())).counts)

    async def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of one id sequence."""
        return (await self.decode_batch([ids], skip_special_tokens=skip_special_tokens))[0]

    async def decode_batch(
        self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool = False
    ) -> list[str]:
        """Text of each id sequence (one request)."""
        response = await self.stub.Decode(
            _decode_request(sequences, skip_special_tokens), **self._kw()
        )
        return [r.text for r in response.results]

    async def decode_bytes(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> bytes:
        """The exact bytes of one id sequence."""
        request = _decode_request([ids], skip_special_tokens, data=True)
        return (await self.stub.Decode(request, **self._kw())).results[0].data

    async def info(self) -> pb.GetTokenizerInfoResponse:
        """Vocabulary size, special tokens, fingerprint and server limits."""
        return await self.stub.GetTokenizerInfo(pb.GetTokenizerInfoRequest(), **self._kw())

    async def health(self, service: str = "") -> str:
        """Health status name of the server or one service."""
        response = await self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncTokenizerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncTokenizerClient", "EncodedText", "TokenizerClient"]
