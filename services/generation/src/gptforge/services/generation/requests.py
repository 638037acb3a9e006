"""Turn a ``GenerateRequest`` into a prompt and per-completion :class:`SamplingParams`.

Every check raises :class:`InvalidArgumentError` whose message starts with the proto field
name, so clients see ``INVALID_ARGUMENT`` naming what to fix. Limits live in
:class:`GenerationLimits` and are reported by ``GetModelInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptforge.api.errors import InvalidArgumentError
from gptforge.api.generation.v1 import generation_pb2 as pb
from gptforge.sampling import SamplingParams, fresh_seed

MAX_REQUEST_ID_BYTES = 128


@dataclass(frozen=True)
class GenerationLimits:
    """What the service accepts; defaults derive from the model's context length.

    Args:
        max_new_tokens: cap for ``max_new_tokens`` (default: the context length).
        default_max_new_tokens: used when a request leaves ``max_new_tokens`` unset.
        max_batch_size: sequences decoded together.
        max_tokens_in_flight: admission budget (default: 2 x max_batch_size x context).
        max_n, max_top_logprobs, max_stop_sequences, max_stop_sequence_bytes,
        max_stop_token_ids: per-request caps.
        context_length: positions per sequence (default: the model's ``block_size``; smaller
            saves cache memory; MM-Rec, which has no length limit, also accepts larger).
    """

    max_new_tokens: int | None = None
    default_max_new_tokens: int = 128
    max_batch_size: int = 16
    max_tokens_in_flight: int | None = None
    max_n: int = 8
    max_top_logprobs: int = 20
    max_stop_sequences: int = 16
    max_stop_sequence_bytes: int = 256
    max_stop_token_ids: int = 32
    context_length: int | None = None

    def resolved(self, block_size: int, *, unbounded: bool = False) -> GenerationLimits:
        """Fill the model-dependent defaults and validate.

        Args:
            block_size: the model's training context (the default context length).
            unbounded: the architecture has no length limit (MM-Rec), so ``context_length``
                may exceed ``block_size``; otherwise it is capped at ``block_size``.
        """
        ctx = self.context_length or block_size
        if not unbounded:
            ctx = min(ctx, block_size)
        out = GenerationLimits(
            max_new_tokens=min(self.max_new_tokens or ctx, ctx),
            default_max_new_tokens=min(self.default_max_new_tokens, ctx - 1),
            max_batch_size=self.max_batch_size,
            max_tokens_in_flight=self.max_tokens_in_flight or 2 * self.max_batch_size * ctx,
            max_n=self.max_n,
            max_top_logprobs=min(self.max_top_logprobs, 20),
            max_stop_sequences=min(self.max_stop_sequences, 16),
            max_stop_sequence_bytes=self.max_stop_sequence_bytes,
            max_stop_token_ids=self.max_stop_token_ids,
            context_length=ctx,
        )
        if ctx < 2 or out.max_batch_size < 1 or out.max_n < 1:
            raise ValueError(f"limits: context_length, max_batch_size and max_n too small: {out!r}")
        return out


@dataclass
class ParsedRequest:
    """A validated request: the prompt the model sees and one params object per completion."""

    prompt_ids: list[int]
    params: list[SamplingParams]
    truncated: int
    cut_to_context: bool
    request_id: str


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message)


def parse_request(
    req: pb.GenerateRequest, tokenizer: Any, vocab_size: int, limits: GenerationLimits
) -> ParsedRequest:
    """Validate ``req`` against the model and ``limits`` (resolved); raise naming the field."""
    ctx = limits.context_length
    assert ctx is not None and limits.max_new_tokens is not None
    if len(req.request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise _bad(
            f"request_id is {len(req.request_id.encode())} bytes; at most {MAX_REQUEST_ID_BYTES}"
        )
    which = req.WhichOneof("prompt")
    if which is None:
        raise _bad("prompt: set either `text` or `token_ids`")
    if which == "text":
        if not req.text:
            raise _bad("text: the prompt is empty; send at least one character")
        try:
            ids = tokenizer.encode(
                req.text, allowed_special="all" if req.allow_special_tokens else frozenset()
            )
        except ValueError as exc:
            raise _bad(f"text: {exc} (set allow_special_tokens=true to encode them)") from exc
        if not ids:
            raise _bad(f"text: {req.text!r} encodes to no tokens")
    else:
        ids = list(req.token_ids.ids)
        if not ids:
            raise _bad("token_ids: the prompt is empty; send at least one token id")
        bad = [t for t in ids if t >= vocab_size]
        if bad:
            raise _bad(
                f"token_ids: ids {bad[:5]!r} are >= vocab_size {vocab_size}; encode with the "
                "server's tokenizer (GetModelInfo has its fingerprint)"
            )

    if req.HasField("max_new_tokens"):
        max_new = req.max_new_tokens
        if not 1 <= max_new <= limits.max_new_tokens:
            raise _bad(f"max_new_tokens must be in [1, {limits.max_new_tokens}], got {max_new}")
        cut = False
    else:
        max_new = limits.default_max_new_tokens
        cut = False
    truncated = 0
    room = ctx - len(ids)
    if req.slide_tokens > ctx:
        raise _bad(f"slide_tokens must be in [0, {ctx}] (the context), got {req.slide_tokens}")
    if req.HasField("max_new_tokens") and len(ids) + max_new > ctx and not req.slide_tokens:
        if not req.truncate_prompt:
            raise _bad(
                f"max_new_tokens: prompt ({len(ids)} tokens) + max_new_tokens ({max_new}) exceeds "
                f"the context of {ctx} tokens; shorten the prompt, lower max_new_tokens or set "
                "truncate_prompt or slide_tokens"
            )
        truncated = len(ids) + max_new - ctx
    elif not req.HasField("max_new_tokens") and not req.slide_tokens:
        if room < 1:
            if not req.truncate_prompt:
                raise _bad(
                    f"text/token_ids: the prompt has {len(ids)} tokens, the context holds {ctx} "
                    f"(at most {ctx - 1} prompt tokens); shorten it or set truncate_prompt"
                )
            truncated = len(ids) - (ctx - 1)
            room = 1
        if max_new > room:
            max_new, cut = room, True
    ids = ids[truncated:]

    if req.HasField("min_new_tokens") and req.min_new_tokens > max_new:
        raise _bad(f"min_new_tokens ({req.min_new_tokens}) must be <= max_new_tokens ({max_new})")
    if req.HasField("temperature") and not req.temperature >= 0:
        raise _bad(f"temperature must be >= 0 (0 = greedy), got {req.temperature!r}")
    if req.HasField("top_p") and not 0 < req.top_p <= 1:
        raise _bad(f"top_p must be in (0, 1], got {req.top_p!r}")
    if req.HasField("repetition_penalty") and not req.repetition_penalty > 0:
        raise _bad(f"repetition_penalty must be > 0 (1 = off), got {req.repetition_penalty!r}")
    if len(req.stop) > limits.max_stop_sequences:
        raise _bad(f"stop has {len(req.stop)} sequences; at most {limits.max_stop_sequences}")
    for i, s in enumerate(req.stop):
        if not s or len(s.encode()) > limits.max_stop_sequence_bytes:
            raise _bad(
                f"stop[{i}] must be non-empty and at most {limits.max_stop_sequence_bytes} UTF-8 "
                f"bytes, got {len(s.encode())} bytes"
            )
    if len(req.stop_token_ids) > limits.max_stop_token_ids:
        raise _bad(
            f"stop_token_ids has {len(req.stop_token_ids)} ids; at most {limits.max_stop_token_ids}"
        )
    bad = [t for t in req.stop_token_ids if t >= vocab_size]
    if bad:
        raise _bad(f"stop_token_ids {bad[:5]!r} are >= vocab_size {vocab_size}")
    n = req.n or 1
    if n > limits.max_n:
        raise _bad(f"n must be in [1, {limits.max_n}], got {n}")
    if req.top_logprobs > limits.max_top_logprobs:
        raise _bad(
            f"top_logprobs must be in [0, {limits.max_top_logprobs}], got {req.top_logprobs}"
        )
    if req.top_logprobs and not req.logprobs:
        raise _bad("top_logprobs needs logprobs=true")

    base_seed = req.seed if req.HasField("seed") else fresh_seed()
    try:
        params = [
            SamplingParams(
                max_new_tokens=max_new,
                temperature=req.temperature if req.HasField("temperature") else 1.0,
                top_k=req.top_k if req.HasField("top_k") else 0,
                top_p=req.top_p if req.HasField("top_p") else 1.0,
                repetition_penalty=(
                    req.repetition_penalty if req.HasField("repetition_penalty") else 1.0
                ),
                min_new_tokens=req.min_new_tokens,
                stop_token_ids=tuple(req.stop_token_ids),
                stop=tuple(req.stop),
                seed=(base_seed + i) % 2**64,
                logprobs=(req.top_logprobs if req.logprobs else None),
                ignore_eos=req.ignore_eos,
                slide_tokens=req.slide_tokens,
            )
            for i in range(n)
        ]
    except ValueError as exc:  # SamplingParams messages start with the field name too
        raise _bad(str(exc)) from exc
    return ParsedRequest(ids, params, truncated, cut, req.request_id)
