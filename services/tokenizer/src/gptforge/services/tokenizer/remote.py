"""A tokenizer reached over the v1 gRPC contract (``grpc://host:port``), for data preparation.

Training nodes can tokenize through the shared tokenizer service instead of holding a copy of
the tokenizer: :class:`RemoteTokenizer` offers the subset of the ``Tokenizer`` API that
``gptforge.training.prepare_data`` needs (``encode_batch``, ``n_vocab``, ``eot_token``,
``fingerprint``) and gives the same ids as the local tokenizer (special-token text is encoded as
plain text on both paths). It talks through :class:`TokenizerClient`, the one client of the
service, and cuts work to the server's limits.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from gptforge.services.tokenizer.client import TokenizerClient

GRPC_SCHEME = "grpc://"


def _split_long(text: str, max_bytes: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_bytes`` UTF-8 bytes.

    Cuts fall just before a space that sits between two letters ("word| word"): byte-level BPE
    pre-tokenizers (GPT-2's and cl100k's patterns alike) end a letter run there and start the
    next pre-token with the space, so the concatenated ids equal those of the whole text.
    Texts with no such place are cut at a character boundary (ids may then differ slightly).
    """
    if len(text.encode("utf-8")) <= max_bytes:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        if len(text[start:].encode("utf-8")) <= max_bytes:
            pieces.append(text[start:])
            break
        # Characters are at most 4 bytes, so max_bytes // 4 characters always fit.
        limit = start + max(1, max_bytes // 4)
        cut = text.rfind(" ", start + 1, limit)
        while cut > start and not (
            text[cut - 1].isalpha() and cut + 1 < len(text) and text[cut + 1].isalpha()
        ):
            cut = text.rfind(" ", start + 1, cut)
        end = cut if cut > start else limit
        pieces.append(text[start:end])
        start = end
    return pieces


class RemoteTokenizer:
    """Encode through a running tokenizer service.

    Args:
        address: ``grpc://host:port`` (or ``host:port``).
        token: Shared auth token sent as ``authorization: Bearer ...`` (default:
            ``$GPTFORGE_AUTH_TOKEN`` when set).
        timeout: Seconds per call.

    >>> tok = RemoteTokenizer("grpc://127.0.0.1:50051")  # doctest: +SKIP
    >>> tok.encode_batch(["hello world"])  # doctest: +SKIP
    """

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.address = address
        target = address.removeprefix(GRPC_SCHEME)
        if not target or ":" not in target:
            raise ValueError(
                f"tokenizer address {address!r} is not grpc://host:port; e.g. grpc://127.0.0.1:50051"
            )
        token = token if token is not None else os.environ.get("GPTFORGE_AUTH_TOKEN")
        self._client = TokenizerClient(target, auth_token=token or None, timeout=timeout)
        try:
            info = self._client.info()
        except grpc.RpcError as exc:
            self._client.close()
            raise ConnectionError(
                f"cannot reach the tokenizer service at {address!r}: {exc.code().name} "
                f"{exc.details()}; start it with `gptforge serve tokenizer --tokenizer DIR`"
            ) from None
        self.n_vocab: int = int(info.n_vocab)
        self.eot_token: int = int(info.eot_token)
        self.fingerprint: str = info.fingerprint
        self.special_tokens: dict[str, int] = dict(info.special_tokens)
        self.name: str = info.name
        limits = info.limits
        self._max_batch = int(limits.max_batch_size) or 64
        self._max_bytes = int(limits.max_text_bytes) or (1 << 20)
        # Stay well under the message limit: ids cost up to ~5 bytes each in the response.
        recv = int(limits.max_send_message_bytes) or (4 << 20)
        self._max_request_bytes = max(1024, min(recv, 4 << 20) // 8)

    def _encode_call(self, texts: list[str]) -> list[list[int]]:
        try:
            return self._client.encode_batch(texts, special_tokens="as_text")
        except grpc.RpcError as exc:
            raise RuntimeError(
                f"tokenizer service {self.address!r} refused Encode of {len(texts)} texts: "
                f"{exc.code().name} {exc.details()}"
            ) from None

    def encode_batch(self, texts: list[str], **_: Any) -> list[list[int]]:
        """Ids of each text; special-token text is encoded as ordinary text.

        Long texts are split under the server's ``max_text_bytes`` and batches under its
        ``max_batch_size`` and message limits.
        """
        pieces: list[tuple[int, str]] = []
        for index, text in enumerate(texts):
            pieces.extend((index, part) for part in _split_long(text, self._max_bytes))
        out: list[list[int]] = [[] for _ in texts]
        batch: list[tuple[int, str]] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes
            if batch:
                for (index, _), ids in zip(
                    batch, self._encode_call([t for _, t in batch]), strict=True
                ):
                    out[index].extend(ids)
            batch, batch_bytes = [], 0

        for index, part in pieces:
            size = len(part.encode("utf-8"))
            if batch and (
                len(batch) >= self._max_batch or batch_bytes + size > self._max_request_bytes
            ):
                flush()
            batch.append((index, part))
            batch_bytes += size
        flush()
        return out

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        """Ids of one text (see :meth:`encode_batch`)."""
        return self.encode_batch([text], **kwargs)[0]

    def close(self) -> None:
        """Close the channel."""
        self._client.close()
