"""The v1 ``TokenizerService`` servicer: request checks and proto mapping over a Tokenizer.

No tokenization logic lives here; the work is done by ``gptforge.tokenizer.Tokenizer`` (or any
object with the same ``encode`` / ``decode_bytes`` / ``n_vocab`` / ``eot_token`` /
``special_tokens`` / ``fingerprint`` members, see :class:`TokenizerLike`).

Hostile load is bounded three ways:

- small requests (under ``INLINE_BYTES``) run on the event loop at once, so health checks and
  short calls are always answered quickly;
- larger ones run on a small thread pool, admitted only while the request bytes in flight stay
  under ``TokenizerLimits.max_work_bytes``; beyond it RESOURCE_EXHAUSTED comes at once;
- replies are built one message at a time and their size counted as they grow: a request whose
  reply cannot fit ``max_send_message_bytes`` is refused from a lower bound before any work, or
  as soon as the reply passes the limit, so memory stays bounded by the reply limit.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import grpc
from gptforge.api.server import (
    REQUEST_BYTES,
    InvalidArgumentError,
    ResourceExhaustedError,
    grpc_errors,
)
from gptforge.api.tokenizer.v1 import tokenizer_pb2 as pb
from gptforge.api.tokenizer.v1 import tokenizer_pb2_grpc as pb_grpc

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TokenizerService"].full_name
# Below this many input bytes a request is encoded on the event loop: a thread hop costs more.
INLINE_BYTES = 8192
# Batches at least this large are encoded on several threads (thread start-up costs ~1 ms).
THREADED_CHARS = 256 * 1024
# Texts are encoded in groups of about this many characters, so ids in Python lists (tens of
# bytes per id) never exist for more than one group at a time.
CHUNK_CHARS = 4 * THREADED_CHARS
# Bytes a reply entry adds around its message (field tag and length) at most.
ENTRY_OVERHEAD = 6
_MODES = {v.number: v.name for v in pb.SpecialTokenMode.DESCRIPTOR.values}


class TokenizerLike(Protocol):
    """What the service needs from a tokenizer (``gptforge.tokenizer.Tokenizer`` has it all)."""

    @property
    def n_vocab(self) -> int: ...
    @property
    def eot_token(self) -> int: ...
    @property
    def special_tokens(self) -> dict[str, int]: ...
    @property
    def fingerprint(self) -> str: ...

    def encode(
        self,
        text: str,
        *,
        allowed_special: Collection[str] | Literal["all"] = ...,
        disallowed_special: Collection[str] | Literal["all"] = ...,
    ) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


@dataclass(frozen=True)
class TokenizerLimits:
    """Per-request limits of the tokenizer service (requests above them: RESOURCE_EXHAUSTED).

    Args:
        max_batch_size: most texts or sequences in one request.
        max_text_bytes: longest text, in UTF-8 bytes.
        max_ids_per_sequence: most ids in one decode sequence.
        max_work_bytes: request bytes being worked on at once (over every call); a request that
            would pass it gets RESOURCE_EXHAUSTED at once.
        worker_threads: threads that encode and decode requests too large for the event loop.
    """

    max_batch_size: int = 1024
    max_text_bytes: int = 4 * 1024 * 1024
    max_ids_per_sequence: int = 1024 * 1024
    max_work_bytes: int = 32 * 1024 * 1024
    worker_threads: int = min(4, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_text_bytes",
            "max_ids_per_sequence",
            "max_work_bytes",
            "worker_threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")


def _size(request: Any) -> int:
    """The request's size in bytes, as received (cheap); measured only when called directly."""
    return REQUEST_BYTES.get() or request.ByteSize()


def _chunks(texts: list[str]) -> Iterator[list[str]]:
    """Consecutive groups of texts of about ``CHUNK_CHARS`` characters (at least one text)."""
    group: list[str] = []
    chars = 0
    for text in texts:
        if group and chars + len(text) > CHUNK_CHARS:
            yield group
            group, chars = [], 0
        group.append(text)
        chars += len(text)
    if group:
        yield group


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    """Implements ``gptforge.api.tokenizer.v1.TokenizerService`` over one tokenizer.

    Args:
        tokenizer: the tokenizer to serve.
        limits: request limits.
        name: reported by GetTokenizerInfo (default: the tokenizer's own ``name``).
        message_limits: the server's (receive, send) message sizes, reported by GetTokenizerInfo.
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        limits: TokenizerLimits | None = None,
        *,
        name: str = "",
        message_limits: tuple[int, int] = (0, 0),
    ) -> None:
        self.tokenizer = tokenizer
        self.limits = limits or TokenizerLimits()
        self.name = name or str(getattr(tokenizer, "name", ""))
        self.message_limits = message_limits
        self._specials = dict(tokenizer.special_tokens)
        self._special_ids = frozenset(self._specials.values())
        self._n_vocab = int(tokenizer.n_vocab)
        self._pieces: dict[int, bytes] = {}
        self._pool = ThreadPoolExecutor(
            self.limits.worker_threads, thread_name_prefix="gptforge-tokenize"
        )
        self._work_lock = threading.Lock()
        self.work_bytes = 0  # request bytes admitted and not finished

    # ---- helpers -------------------------------------------------------------------------

    async def _run(self, nbytes: int, fn: Callable[..., T], *args: Any) -> T:
        """Run small jobs inline; admit large ones to the worker pool within the work budget."""
        if nbytes < INLINE_BYTES:
            return fn(*args)
        budget = self.limits.max_work_bytes
        with self._work_lock:
            if self.work_bytes + nbytes > budget:
                busy = self.work_bytes
                raise ResourceExhaustedError(
                    f"the tokenizer service is busy: {busy} of max_work_bytes={budget} request "
                    f"bytes in flight, this request has {nbytes}; retry with backoff or send "
                    "smaller requests"
                )
            self.work_bytes += nbytes

        def release(_: object) -> None:
            with self._work_lock:
                self.work_bytes -= nbytes

        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        future.add_done_callback(release)  # when the work ends, even if the caller went away
        return await asyncio.shield(future)

    def _reply_limit(self) -> int:
        return self.message_limits[1] or 2**31 - 1

    def _too_large(self, what: str, size: int, fix: str) -> ResourceExhaustedError:
        return ResourceExhaustedError(
            f"the reply would be {what}{size} bytes, over the server's max_send_message_bytes="
            f"{self._reply_limit()}; {fix}"
        )

    def _check_batch(self, size: int, field: str) -> None:
        if size == 0:
            raise InvalidArgumentError(
                f"{field} is empty; send 1..{self.limits.max_batch_size} entries"
            )
        if size > self.limits.max_batch_size:
            raise ResourceExhaustedError(
                f"{field} has {size} entries, over the server's max_batch_size="
                f"{self.limits.max_batch_size}; split the request into smaller batches"
            )

    def _check_texts(self, texts: Sequence[str]) -> int:
        """Check batch and text sizes; return the total UTF-8 size."""
        self._check_batch(len(texts), "texts")
        total = 0
        for i, text in enumerate(texts):
            size = len(text.encode("utf-8"))
            if size > self.limits.max_text_bytes:
                raise ResourceExhaustedError(
                    f"texts[{i}] is {size} UTF-8 bytes, over the server's max_text_bytes="
                    f"{self.limits.max_text_bytes}; split the text"
                )
            total += size
        return total

    def _special_args(
        self, mode: int, allowed: Sequence[str], texts: Sequence[str]
    ) -> tuple[Collection[str] | Literal["all"], Collection[str] | Literal["all"]]:
        """Turn the request's special-token mode into tokenizer arguments, refusing bad text."""
        if mode not in _MODES:
            raise InvalidArgumentError(
                f"special_token_mode={mode!r} is not a SpecialTokenMode; allowed: "
                f"{', '.join(f'{n} ({v})' for v, n in sorted(_MODES.items()))}"
            )
        unknown = [s for s in allowed if s not in self._specials]
        if unknown:
            raise InvalidArgumentError(
                f"allowed_special lists {unknown!r}, which are not special tokens of this "
                f"tokenizer; known special tokens: {sorted(self._specials)!r}"
            )
        if mode == pb.SPECIAL_TOKEN_MODE_ALLOW_ALL:
            return "all", "all"
        if mode == pb.SPECIAL_TOKEN_MODE_AS_TEXT:
            return frozenset(), frozenset()
        allowed_set = frozenset(allowed)
        refused = [s for s in self._specials if s not in allowed_set]
        for i, text in enumerate(texts):
            for special in refused:
                if special in text:
                    raise InvalidArgumentError(
                        f"texts[{i}] contains the special-token text {special!r}, refused by "
                        "special_token_mode=SPECIAL_TOKEN_MODE_REJECT; to encode it as the "
                        "special token list it in allowed_special or use "
                        "SPECIAL_TOKEN_MODE_ALLOW_ALL, to encode it as plain text use "
                        "SPECIAL_TOKEN_MODE_AS_TEXT (Python client and CLI: special_tokens="
                        "'allow_all' / 'as_text')"
                    )
        return allowed_set, "all"

    def _encode_all(
        self,
        texts: Sequence[str],
        allowed: Collection[str] | Literal["all"],
        disallowed: Collection[str] | Literal["all"],
    ) -> list[list[int]]:
        batch = getattr(self.tokenizer, "encode_batch", None)
        if batch is not None and len(texts) > 1 and sum(map(len, texts)) >= THREADED_CHARS:
            # gptforge's encode_batch spreads texts over threads (tiktoken releases the GIL)
            return batch(texts, allowed_special=allowed, disallowed_special=disallowed)
        encode = self.tokenizer.encode
        return [encode(t, allowed_special=allowed, disallowed_special=disallowed) for t in texts]

    def piece(self, token_id: int) -> bytes:
        """The bytes of one token (cached; the vocabulary is fixed while serving)."""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.tokenizer.decode_bytes([token_id])
        return piece

    def _fill_encoding(self, enc: pb.Encoding, ids: list[int], pieces: bool, offsets: bool) -> None:
        enc.ids.extend(ids)
        if pieces or offsets:
            token_bytes = [self.piece(i) for i in ids]
            if pieces:
                enc.pieces.extend(token_bytes)
            if offsets:
                starts, ends, pos = [], [], 0
                for b in token_bytes:
                    starts.append(pos)
                    pos += len(b)
                    ends.append(pos)
                enc.byte_starts.extend(starts)
                enc.byte_ends.extend(ends)

    # ---- RPCs ----------------------------------------------------------------------------

    @grpc_errors
    async def Encode(
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeResponse:
        """Encode a batch of texts (ids, optionally pieces and byte offsets)."""
        return await self._run(_size(request), self._encode_reply, request)

    def _encode_reply(self, request: pb.EncodeRequest) -> pb.EncodeResponse:
        texts = list(request.texts)
        nbytes = self._check_texts(texts)
        allowed, disallowed = self._special_args(
            request.special_token_mode, request.allowed_special, texts
        )
        pieces, offsets = request.return_pieces, request.return_offsets
        limit = self._reply_limit()
        # Pieces concatenate to the text, and every token costs at least a byte per field.
        if pieces and nbytes > limit:
            raise self._too_large(
                "at least ",
                nbytes,
                "send fewer texts per call, or leave return_pieces off (pieces repeat the text)",
            )
        reply, size, total = pb.EncodeResponse(), 0, 0
        for chunk in _chunks(texts):
            for ids in self._encode_all(chunk, allowed, disallowed):
                enc = reply.encodings.add()
                self._fill_encoding(enc, ids, pieces, offsets)
                size += enc.ByteSize() + ENTRY_OVERHEAD
                total += len(ids)
                if size > limit:
                    raise self._too_large(
                        "more than ",
                        size,
                        "send fewer texts per call, or leave return_pieces/return_offsets off",
                    )
        reply.total_tokens = total
        return reply

    @grpc_errors
    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        """Count the tokens of a batch of texts."""
        return await self._run(_size(request), self._count_reply, request)

    def _count_reply(self, request: pb.CountTokensRequest) -> pb.CountTokensResponse:
        texts = list(request.texts)
        self._check_texts(texts)
        allowed, disallowed = self._special_args(
            request.special_token_mode, request.allowed_special, texts
        )
        counts = [
            len(x) for chunk in _chunks(texts) for x in self._encode_all(chunk, allowed, disallowed)
        ]
        return pb.CountTokensResponse(counts=counts, total_tokens=sum(counts))

    def _check_ids(self, sequences: Sequence[pb.DecodeSequence]) -> list[list[int]]:
        self._check_batch(len(sequences), "sequences")
        out = []
        for i, seq in enumerate(sequences):
            ids = list(seq.ids)
            if len(ids) > self.limits.max_ids_per_sequence:
                raise ResourceExhaustedError(
                    f"sequences[{i}].ids has {len(ids)} ids, over the server's "
                    f"max_ids_per_sequence={self.limits.max_ids_per_sequence}; split it"
                )
            if ids and max(ids) >= self._n_vocab:
                j = next(j for j, t in enumerate(ids) if t >= self._n_vocab)
                raise InvalidArgumentError(
                    f"sequences[{i}].ids[{j}]={ids[j]!r} is outside the vocabulary "
                    f"(n_vocab={self._n_vocab}); ids must be in 0..{self._n_vocab - 1}"
                )
            out.append(ids)
        return out

    def _fill_decoded(self, result: pb.Decoded, ids: list[int], request: pb.DecodeRequest) -> None:
        if request.skip_special_tokens:
            ids = [t for t in ids if t not in self._special_ids]
        data = self.tokenizer.decode_bytes(ids)
        result.text = data.decode("utf-8", errors="replace")
        if request.return_bytes:
            result.data = data
        if request.return_pieces:
            result.pieces.extend(self.piece(t) for t in ids)

    @grpc_errors
    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecodeResponse:
        """Decode a batch of id sequences."""
        return await self._run(_size(request), self._decode_reply, request)

    def _decode_reply(self, request: pb.DecodeRequest) -> pb.DecodeResponse:
        sequences = self._check_ids(request.sequences)
        limit = self._reply_limit()
        if not request.skip_special_tokens:
            # Each id decodes to at least one byte of text, one of data, and a piece of 3.
            least = sum(map(len, sequences)) * (
                1 + request.return_bytes + 3 * request.return_pieces
            )
            if least > limit:
                raise self._too_large(
                    "at least ",
                    least,
                    "send fewer sequences per call, or leave return_bytes/return_pieces off",
                )
        reply, size = pb.DecodeResponse(), 0
        for ids in sequences:
            result = reply.results.add()
            self._fill_decoded(result, ids, request)
            size += result.ByteSize() + ENTRY_OVERHEAD
            if size > limit:
                raise self._too_large(
                    "more than ",
                    size,
                    "send fewer sequences per call, or leave return_bytes/return_pieces off",
                )
        return reply

    @grpc_errors
    async def GetTokenizerInfo(
        self, request: pb.GetTokenizerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTokenizerInfoResponse:
        """Describe the tokenizer and the server's limits."""
        receive, send = self.message_limits
        return pb.GetTokenizerInfoResponse(
            n_vocab=self._n_vocab,
            eot_token=int(self.tokenizer.eot_token),
            special_tokens=self._specials,
            fingerprint=str(self.tokenizer.fingerprint),
            name=self.name,
            limits=pb.TokenizerLimits(
                max_batch_size=self.limits.max_batch_size,
                max_text_bytes=self.limits.max_text_bytes,
                max_ids_per_sequence=self.limits.max_ids_per_sequence,
                max_receive_message_bytes=receive,
                max_send_message_bytes=send,
            ),
        )
