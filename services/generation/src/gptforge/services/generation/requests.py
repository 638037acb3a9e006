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
# Request id, numbers and field tags together stay under this many bytes.
SMALL_FIELDS_BYTES = 4096


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
        max_prompt_bytes: longest text prompt in UTF-8 bytes, refused before it is tokenized
            (default: (context - 1) x the tokenizer's longest token: any longer text has more
            tokens than the context holds).
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
    max_prompt_bytes: int | None = None

    def __post_init__(self) -> None:
        least = {
            "max_new_tokens": 1,
            "default_max_new_tokens": 1,
            "max_batch_size": 1,
            "max_tokens_in_flight": 3,
            "max_n": 1,
            "max_top_logprobs": 0,
            "max_stop_sequences": 0,
            "max_stop_sequence_bytes": 1,
            "max_stop_token_ids": 0,
            "context_length": 2,
            "max_prompt_bytes": 1,
        }
        for name, low in least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name}={value!r} must be >= {low} ({flag})")

    def resolved(
        self, block_size: int, *, unbounded: bool = False, max_token_bytes: int = 1
    ) -> GenerationLimits:
        """Fill the model-dependent defaults and validate them against the context.

        Args:
            block_size: the model's training context (the default context length).
            unbounded: the architecture has no length limit (MM-Rec), so ``context_length``
                may exceed ``block_size``; otherwise it is capped at ``block_size``.
            max_token_bytes: the tokenizer's longest token in bytes (bounds prompt bytes).
        """
        ctx = self.context_length or block_size
        if not unbounded:
            ctx = min(ctx, block_size)
        if ctx < 2:
            raise ValueError(f"context_length={ctx} must be >= 2 (one prompt and one new token)")
        budget = self.max_tokens_in_flight or 2 * self.max_batch_size * ctx
        if budget < ctx:
            raise ValueError(
                f"max_tokens_in_flight={budget} is below the context of {ctx} tokens, so a "
                f"full-context request could never run; use at least {ctx} "
                "(--max-tokens-in-flight 0 = 2 x max_batch_size x context)"
            )
        out = GenerationLimits(
            max_new_tokens=min(self.max_new_tokens or ctx, ctx),
            default_max_new_tokens=min(self.default_max_new_tokens, ctx - 1),
            max_batch_size=self.max_batch_size,
            max_tokens_in_flight=budget,
            max_n=self.max_n,
            max_top_logprobs=min(self.max_top_logprobs, 20),
            max_stop_sequences=min(self.max_stop_sequences, 16),
            max_stop_sequence_bytes=self.max_stop_sequence_bytes,
            max_stop_token_ids=self.max_stop_token_ids,
            context_length=ctx,
            max_prompt_bytes=self.max_prompt_bytes or (ctx - 1) * max_token_bytes,
        )
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


def _encode_prompt(
    req: pb.GenerateRequest, tokenizer: Any, limits: GenerationLimits, request_bytes: int
) -> list[int]:
    """Tokenize ``req.text``, refusing by length first: the work must not grow with the input."""
    limit = limits.max_prompt_bytes
    assert limit is not None
    # Whatever the other fields add is bounded by the limits, so a request larger than the
    # prompt limit plus that has a prompt over the limit: refused before the text is read.
    others = SMALL_FIELDS_BYTES + limits.max_stop_sequences * (limits.max_stop_sequence_bytes + 3)
    if request_bytes > limit + others:
        size = request_bytes - others
    elif not req.text:
        raise _bad("text: the prompt is empty; send at least one character")
    else:  # a character is at least one UTF-8 byte, so len() alone refuses most long prompts
        size = len(req.text) if len(req.text) > limit else len(req.text.encode())
    if size > limit:
        raise _bad(
            f"text: the prompt has at least {size} UTF-8 bytes, over the server's "
            f"max_prompt_bytes={limit} (more tokens than the context of "
            f"{limits.context_length} holds); shorten it, or send token_ids with truncate_prompt"
        )
    try:
        ids: list[int] = tokenizer.encode(
            req.text, allowed_special="all" if req.allow_special_tokens else frozenset()
        )
    except ValueError as exc:
        raise _bad(f"text: {exc} (set allow_special_tokens=true to encode them)") from exc
    if not ids:
        raise _bad(f"text: {req.text!r} encodes to no tokens")
    return ids


def _prompt_ids(req: pb.GenerateRequest, vocab_size: int, ctx: int) -> tuple[list[int], int]:
    """The prompt ids to keep and how many were dropped; only the kept tail is copied."""
    given = req.token_ids.ids
    if not given:
        raise _bad("token_ids: the prompt is empty; send at least one token id")
    dropped = 0
    if req.slide_tokens and len(given) > ctx:  # a sliding window sees the last ctx tokens
        dropped = len(given) - ctx
    elif len(given) > ctx - 1 and not req.slide_tokens:
        if not req.truncate_prompt:
            raise _bad(
                f"token_ids: the prompt has {len(given)} tokens, the context holds {ctx} "
                f"(at most {ctx - 1} prompt tokens); shorten it or set truncate_prompt"
            )
        dropped = len(given) - (ctx - 1)
    ids = list(given[dropped:])
    bad = [t for t in ids if t >= vocab_size]
    if bad:
        raise _bad(
            f"token_ids: ids {bad[:5]!r} are >= vocab_size {vocab_size}; encode with the "
            "server's tokenizer (GetModelInfo has its fingerprint)"
        )
    return ids, dropped


def _max_new_tokens(req: pb.GenerateRequest, limits: GenerationLimits) -> int:
    """The request's ``max_new_tokens`` within the server's cap, or the server's default."""
    assert limits.max_new_tokens is not None
    if not req.HasField("max_new_tokens"):
        return limits.default_max_new_tokens
    if not 1 <= req.max_new_tokens <= limits.max_new_tokens:
        raise _bad(
            f"max_new_tokens must be in [1, {limits.max_new_tokens}], got {req.max_new_tokens}"
        )
    return req.max_new_tokens


def _fit_context(
    req: pb.GenerateRequest, ids: list[int], max_new: int, ctx: int
) -> tuple[int, int, bool]:
    """Prompt tokens to drop from the front, the new tokens to ask for, and whether those were
    cut to the room the context leaves (only when the request left ``max_new_tokens`` unset)."""
    truncated = 0
    if req.slide_tokens and len(ids) > ctx:  # the window starts on the prompt's last tokens
        truncated = len(ids) - ctx
    room = ctx - len(ids)
    if req.slide_tokens > ctx:
        raise _bad(f"slide_tokens must be in [0, {ctx}] (the context), got {req.slide_tokens}")
    if req.slide_tokens:
        return truncated, max_new, False
    if req.HasField("max_new_tokens"):
        if len(ids) + max_new <= ctx:
            return truncated, max_new, False
        if not req.truncate_prompt:
            raise _bad(
                f"max_new_tokens: prompt ({len(ids)} tokens) + max_new_tokens ({max_new}) exceeds "
                f"the context of {ctx} tokens; shorten the prompt, lower max_new_tokens or set "
                "truncate_prompt or slide_tokens"
            )
        return len(ids) + max_new - ctx, max_new, False
    if room < 1:
        if not req.truncate_prompt:
            raise _bad(
                f"text/token_ids: the prompt has {len(ids)} tokens, the context holds {ctx} "
                f"(at most {ctx - 1} prompt tokens); shorten it or set truncate_prompt"
            )
        truncated = len(ids) - (ctx - 1)
        room = 1
    return (truncated, room, True) if max_new > room else (truncated, max_new, False)


def _check_counts(req: pb.GenerateRequest, limits: GenerationLimits) -> int:
    """Refuse stop lists, ``n`` and ``top_logprobs`` over the server's limits; the ``n`` to run.

    Values are checked by :class:`SamplingParams`; here only the server's count/byte limits.
    """
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
    n = req.n or 1
    if n > limits.max_n:
        raise _bad(f"n must be in [1, {limits.max_n}], got {n}")
    if req.top_logprobs > limits.max_top_logprobs:
        raise _bad(
            f"top_logprobs must be in [0, {limits.max_top_logprobs}], got {req.top_logprobs}"
        )
    if req.top_logprobs and not req.logprobs:
        raise _bad("top_logprobs needs logprobs=true")
    return n


def _sampling_params(
    req: pb.GenerateRequest, max_new: int, n: int, vocab_size: int
) -> list[SamplingParams]:
    """One :class:`SamplingParams` per completion; completion ``i`` draws from seed + i."""
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
        params[0].check_vocab(vocab_size)
    except ValueError as exc:  # SamplingParams messages start with the field name too
        raise _bad(str(exc)) from exc
    return params


def parse_request(
    req: pb.GenerateRequest,
    tokenizer: Any,
    vocab_size: int,
    limits: GenerationLimits,
    request_bytes: int = 0,
) -> ParsedRequest:
    """Validate ``req`` against the model and ``limits`` (resolved); raise naming the field.

    ``request_bytes`` (the size as received, 0 = unknown) lets an oversized text prompt be
    refused without reading it.
    """
    ctx = limits.context_length
    assert ctx is not None
    if len(req.request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise _bad(
            f"request_id is {len(req.request_id.encode())} bytes; at most {MAX_REQUEST_ID_BYTES}"
        )
    which = req.WhichOneof("prompt")
    if which is None:
        raise _bad("prompt: set either `text` or `token_ids`")
    if which == "text":
        ids, dropped = _encode_prompt(req, tokenizer, limits, request_bytes), 0
    else:
        ids, dropped = _prompt_ids(req, vocab_size, ctx)
    truncated, max_new, cut = _fit_context(req, ids, _max_new_tokens(req, limits), ctx)
    n = _check_counts(req, limits)
    params = _sampling_params(req, max_new, n, vocab_size)
    return ParsedRequest(ids[truncated:], params, truncated + dropped, cut, req.request_id)
