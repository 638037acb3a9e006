"""Blocking Python client of the v1 GenerationService.

Errors surface as ``grpc.RpcError`` with the server's status code and message (for example
``INVALID_ARGUMENT: temperature must be >= 0 ...``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from gptforge.api.channel import auth_metadata, create_channel
from gptforge.api.generation.v1 import generation_pb2 as pb
from gptforge.api.generation.v1 import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_OPTIONAL = (
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
)


def build_request(
    prompt: str | Sequence[int],
    *,
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    n: int = 1,
    logprobs: bool = False,
    top_logprobs: int = 0,
    allow_special_tokens: bool = False,
    truncate_prompt: bool = False,
    request_id: str = "",
    slide_tokens: int = 0,
) -> pb.GenerateRequest:
    """A ``GenerateRequest``; ``None`` leaves an optional field unset (server default).

    Args:
        prompt: text, or token ids of the server's tokenizer.
        (others): as in ``generation.proto``.
    """
    req = pb.GenerateRequest(
        stop=list(stop),
        stop_token_ids=list(stop_token_ids),
        ignore_eos=ignore_eos,
        n=n,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        allow_special_tokens=allow_special_tokens,
        truncate_prompt=truncate_prompt,
        request_id=request_id,
        slide_tokens=slide_tokens,
    )
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.ids.extend(prompt)
    values = locals()
    for name in _OPTIONAL:
        if values[name] is not None:
            setattr(req, name, values[name])
    return req


class GenerationClient:
    """Talk to a GenerationService.

    Args:
        target: ``host:port``.
        tls_root_cert: None for plaintext; the PEM (path/bytes) that signed the server's cert.
        auth_token: shared token when the server requires one.
        timeout: default deadline per call, in seconds.

    >>> client = GenerationClient("127.0.0.1:50052")  # doctest: +SKIP
    >>> for chunk in client.generate_stream("Once upon", max_new_tokens=20):  # doctest: +SKIP
    ...     print(chunk.text, end="")
    """

    def __init__(
        self,
        target: str,
        *,
        tls_root_cert: str | Path | bytes | bool | None = None,
        auth_token: str | None = None,
        timeout: float | None = 120.0,
        server_name: str | None = None,
    ) -> None:
        self.channel = create_channel(target, tls_root_cert=tls_root_cert, server_name=server_name)
        self.stub = pb_grpc.GenerationServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = auth_metadata(auth_token)
        self.timeout = timeout

    def generate(
        self, prompt: str | Sequence[int] | pb.GenerateRequest, **kwargs: Any
    ) -> pb.GenerateResponse:
        """Unary Generate; ``kwargs`` as in :func:`build_request` (plus ``timeout``)."""
        timeout = kwargs.pop("timeout", self.timeout)
        req = prompt if isinstance(prompt, pb.GenerateRequest) else build_request(prompt, **kwargs)
        return self.stub.Generate(req, timeout=timeout, metadata=self.metadata)

    def generate_stream(
        self, prompt: str | Sequence[int] | pb.GenerateRequest, **kwargs: Any
    ) -> Any:
        """Server-streaming GenerateStream; iterate the returned call, ``.cancel()`` to stop."""
        timeout = kwargs.pop("timeout", self.timeout)
        req = prompt if isinstance(prompt, pb.GenerateRequest) else build_request(prompt, **kwargs)
        return self.stub.GenerateStream(req, timeout=timeout, metadata=self.metadata)

    def stream_text(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[str]:
        """Yield the text deltas of completion 0 as they arrive."""
        for chunk in self.generate_stream(prompt, **kwargs):
            if chunk.index == 0 and chunk.text:
                yield chunk.text

    def model_info(self) -> pb.GetModelInfoResponse:
        """GetModelInfo: model, tokenizer fingerprint and every server limit."""
        return self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata
        )

    def health(self, service: str = "") -> str:
        """Health status name (``SERVING``, ``NOT_SERVING``, ...) of ``service`` ("" = overall)."""
        resp = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_until_serving(self, timeout: float = 120.0) -> None:
        """Poll health until SERVING; raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = "unreachable"
        while time.monotonic() < deadline:
            try:
                last = self.health()
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING after {timeout:.0f}s (last status {last})")

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
