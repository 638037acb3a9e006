"""gpt-fast style generation on the model's KV cache: ``prefill``, ``decode_one_token``, ``generate``.

These functions only use the :class:`~gptforge.modeling.protocol.LanguageModel` contract
(``forward(idx, input_pos=..., rows=...)``, ``setup_caches``), so they work for every
architecture.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from gptforge.modeling.protocol import LanguageModel
from gptforge.sampling.processing import NEG_INF, apply_repetition_penalty, sample
from torch import Tensor


def model_config(model: LanguageModel) -> Any:
    """The model's config (``Any``: each architecture has its own dataclass)."""
    return model.config


def context_limit(model: LanguageModel) -> int | None:
    """Most positions one sequence may span, or None when the architecture has no limit
    (MM-Rec's recurrence)."""
    return model.max_context


def cache_length(model: LanguageModel, positions: int, *, compile: bool = False) -> int:
    """Cache positions to set up for a request spanning ``positions`` (prompt + new tokens):
    capped by the model's context limit, and the whole context when ``compile`` (the same
    cache shape on every call, so one compiled graph serves them all)."""
    limit = context_limit(model)
    if limit is None:
        return positions
    return limit if compile else min(positions, limit)


def check_slide(slide_tokens: int, context: int, prompt_len: int, max_new_tokens: int) -> None:
    """Raise ``ValueError`` unless ``slide_tokens`` lets ``prompt_len + max_new_tokens`` tokens
    run past a ``context``-position cache (a sliding window of 1 to ``context`` tokens)."""
    if slide_tokens == 0:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) + prompt ({prompt_len} tokens) exceeds the "
            f"model's context of {context} tokens; shorten the prompt, ask for fewer tokens or "
            "set slide_tokens > 0 to slide a window past the context"
        )
    if not 1 <= slide_tokens <= context:
        raise ValueError(
            f"slide_tokens must be in [1, {context}] (the context) to slide, got {slide_tokens!r}"
        )


def prefill(
    model: LanguageModel, idx: Tensor, input_pos: Tensor, rows: Tensor | None = None
) -> Tensor:
    """Run the prompt through the model, filling its caches; return last-position logits.

    Args:
        model: a model with caches set up (``model.setup_caches``).
        idx: ``(B, T)`` prompt token ids.
        input_pos: ``(T,)`` positions shared by all rows, or ``(B, T)`` per-row positions.
        rows: ``(B,)`` cache rows to fill (continuous batching); None means rows 0..B-1.

    Returns:
        ``(B, V)`` logits for the token after the prompt.
    """
    logits, _ = model(idx, input_pos=input_pos, rows=rows)  # (B, T, V)
    assert logits is not None, "return_logits defaults to True"
    return logits[:, -1]


def decode_one_token(model: LanguageModel, tokens: Tensor, input_pos: Tensor) -> Tensor:
    """Feed one token per row at ``input_pos``; return the next-token logits ``(B, V)``.

    Args:
        tokens: ``(B, 1)`` the previously sampled tokens.
        input_pos: ``(1,)`` shared position or ``(B, 1)`` per-row positions.
    """
    logits, _ = model(tokens, input_pos=input_pos)  # (B, 1, V)
    assert logits is not None, "return_logits defaults to True"
    return logits[:, -1]


#: Graphs dynamo may keep for the compiled decode step. Every compiled decode in a process
#: shares ``decode_one_token``'s code, and the default of 8 graphs is spent by two model
#: configurations or dtypes with a batch engine's buckets; past it dynamo runs eagerly.
COMPILED_GRAPHS = 64


@functools.cache
def _compiled_step(mode: str | None) -> Callable[..., Tensor]:
    # The model is an argument, not a closure: dynamo inlines it and guards on shapes, so one
    # compiled graph serves every model of the same configuration (and a deepcopy of it).
    return cast(Callable[..., Tensor], torch.compile(decode_one_token, dynamic=False, mode=mode))


def compiled_decode_one_token(model: LanguageModel, tokens: Tensor, input_pos: Tensor) -> Tensor:
    """:func:`decode_one_token` through ``torch.compile`` (gpt-fast's decode recipe).

    One graph with static shapes: keep the batch size, the cache length and the form of
    ``input_pos`` the same from step to step, or each new shape compiles again (``generate``
    and ``BatchGenerator`` with ``compile=True`` set their caches up that way). On CUDA the graph
    is captured as CUDA graphs (``mode="reduce-overhead"``), which removes the per-kernel launch
    cost that dominates small-batch decoding; the logits returned are then a copy, since the
    graph's output memory is reused by the next step. On CPU it runs inductor's C++ kernels,
    which measured no faster than eager decoding (``docs/generation.md``); the first call
    compiles (seconds to minutes).
    """
    cuda = tokens.device.type == "cuda"
    if cuda:
        torch.compiler.cudagraph_mark_step_begin()
    step = _compiled_step("reduce-overhead" if cuda else None)
    # The graph budget applies to this step only, not to other compiled code in the process
    # (set and restored by hand: ``config.patch`` costs ~350 us, a tenth of a tiny step).
    config = torch._dynamo.config
    saved = config.recompile_limit
    config.recompile_limit = max(saved, COMPILED_GRAPHS)
    try:
        logits = step(model, tokens, input_pos)
    finally:
        config.recompile_limit = saved
    return logits.clone() if cuda else logits


def suppress_tokens(logits: Tensor, rows: Sequence[int], token_ids: Sequence[int]) -> Tensor:
    """Set ``logits[r, t] = -inf`` for every row in ``rows`` and token in ``token_ids``."""
    if not rows or not token_ids:
        return logits
    logits = logits.clone()
    r = torch.tensor(list(rows), device=logits.device).view(-1, 1)  # (R, 1)
    t = torch.tensor(list(token_ids), device=logits.device).view(1, -1)  # (1, S)
    logits[r, t] = NEG_INF
    return logits


def _generators(
    batch: int,
    seed: int | None,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device,
) -> list[torch.Generator | None]:
    if generator is not None:
        gens = [generator] * batch if isinstance(generator, torch.Generator) else list(generator)
        if len(gens) != batch:
            raise ValueError(f"generator: got {len(gens)} generators for a batch of {batch} rows")
        return list(gens)
    if seed is None:
        return [None] * batch
    # Row b uses seed + b, so a single prompt with seed s matches row 0 of any batch with seed s.
    # On the model's device: a GPU draws from its own generator (other numbers than a CPU's).
    return [torch.Generator(device=device).manual_seed(seed + b) for b in range(batch)]


def _batched_prompt(
    model: LanguageModel, prompt_ids: Tensor | Sequence[int]
) -> tuple[Tensor, bool]:
    """The prompt as ``(B, T)`` ids on the model's device, and whether it came as one row."""
    param = next(model.parameters())
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=param.device)
    squeeze = prompt.dim() == 1
    return (prompt.view(1, -1) if squeeze else prompt), squeeze


def _first_window(
    model: LanguageModel, prompt: Tensor, max_new_tokens: int, slide_tokens: int
) -> Tensor:
    """The part of ``prompt`` (B, T) the cache starts from: all of it when it and
    ``max_new_tokens`` fit the context, else its last ``context`` tokens (sliding only)."""
    t_prompt = prompt.size(1)
    if t_prompt == 0:
        raise ValueError("prompt_ids is empty; give at least one token (e.g. the EOS/BOS id)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    block = context_limit(model)
    if block is not None and t_prompt + max_new_tokens > block:
        check_slide(slide_tokens, block, t_prompt, max_new_tokens)
        return prompt[:, -block:]  # the books' crop of a long prompt
    return prompt


def _seen_tokens(history: Tensor, vocab: int, repetition_penalty: float) -> Tensor | None:
    """``(B, V)`` flags of the ids each row holds, for the repetition penalty (None without one)."""
    if repetition_penalty == 1.0:
        return None
    seen = torch.zeros(history.size(0), vocab, dtype=torch.bool, device=history.device)
    return seen.scatter_(1, history, True)


def _joined(history: Tensor, out: list[Tensor]) -> Tensor:
    """The whole prompt followed by the tokens sampled so far, ``(B, T + n)``."""
    return torch.cat([history, torch.stack(out, dim=1)], dim=1)


def _slide(model: LanguageModel, history: Tensor, out: list[Tensor], keep: int) -> Tensor:
    """Recompute the cache over the last ``keep`` tokens; the logits after them ``(B, V)``."""
    window = _joined(history, out)[:, -keep:]  # (B, keep)
    return prefill(model, window, torch.arange(keep, device=window.device))


@torch.inference_mode()
def generate(
    model: LanguageModel,
    prompt_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    min_new_tokens: int = 0,
    eos_id: int | None = None,
    stop_token_ids: Sequence[int] = (),
    seed: int | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    pad_id: int | None = None,
    compile: bool = False,
    slide_tokens: int = 0,
) -> Tensor:
    """Generate up to ``max_new_tokens`` after equal-length prompts, on the model's KV cache.

    Rows that hit ``eos_id`` or a stop id are padded with ``pad_id`` (default: ``eos_id`` or 0)
    while the others continue; the loop ends when every row stopped.

    Args:
        model: any gptforge model (``forward(idx, input_pos=...)``, ``setup_caches``).
        prompt_ids: ``(T,)``, ``(B, T)`` or a list of ints.
        max_new_tokens: how many tokens at most.
        temperature: 0 = greedy.
        top_k, top_p, repetition_penalty, min_new_tokens: see :class:`SamplingParams`.
        eos_id: end-of-sequence id (``tokenizer.eot_token``), or None.
        stop_token_ids: more ids that end a row.
        seed: row b draws from ``torch.Generator(device).manual_seed(seed + b)`` on the
            model's device (so a GPU samples other tokens than a CPU for the same seed).
        generator: explicit generator(s) instead of ``seed``, on any device.
        pad_id: filler after a row stopped.
        compile: decode through :func:`compiled_decode_one_token` (for GPUs). The caches are
            then set up at the model's full context, so every call with the same batch size
            reuses one compiled graph.
        slide_tokens: 0 refuses a prompt plus ``max_new_tokens`` longer than the model's
            context; ``n > 0`` slides a window instead (see :class:`SamplingParams`): a long
            prompt keeps its last ``context`` tokens, and each time the cache is full the oldest
            ``n`` tokens leave and the cache is recomputed over the ``context - n + 1`` left.

    Returns:
        prompt and new tokens, ``(T + n,)`` or ``(B, T + n)`` like the input, ``n <= max_new_tokens``.

    >>> # out = generate(model, tok.encode("Hello"), 20, temperature=0.0)
    """
    history, squeeze = _batched_prompt(model, prompt_ids)  # (B, T), the whole prompt
    prompt = _first_window(model, history, max_new_tokens, slide_tokens)
    batch, t_prompt = prompt.shape
    stops = sorted({*stop_token_ids, *([eos_id] if eos_id is not None else [])})
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    gens = _generators(batch, seed, generator, prompt.device)
    seen = _seen_tokens(history, model_config(model).vocab_size, repetition_penalty)  # (B, V)

    cache_len = cache_length(model, t_prompt + max_new_tokens, compile=compile)
    model.setup_caches(batch, cache_len)
    decode = compiled_decode_one_token if compile else decode_one_token
    logits = prefill(model, prompt, torch.arange(t_prompt, device=prompt.device))  # (B, V)
    penalty = torch.full((batch,), repetition_penalty, device=prompt.device)
    stop_t = torch.tensor(stops, dtype=torch.long, device=prompt.device)
    done = torch.zeros(batch, dtype=torch.bool, device=prompt.device)  # (B,)
    out: list[Tensor] = []
    pos = t_prompt  # the next cache position to fill
    for i in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits.float(), seen, penalty)
        if i < min_new_tokens:
            logits = suppress_tokens(logits, range(batch), stops)
        tok = sample(logits, temperature, top_k, top_p, gens)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        out.append(tok)
        if seen is not None:
            seen.scatter_(1, tok.view(-1, 1), True)
        if len(stops):
            done |= torch.isin(tok, stop_t)
        # done.all() reads back from the device: only worth it when rows can stop.
        if i == max_new_tokens - 1 or (len(stops) and bool(done.all())):
            break
        if pos == cache_len:  # the context is full: slide the window, recompute the cache
            pos = cache_len - slide_tokens + 1
            logits = _slide(model, history, out, pos)
        else:
            logits = decode(model, tok.view(batch, 1), torch.tensor([pos], device=prompt.device))
            pos += 1
    result = _joined(history, out)  # (B, T + n)
    return result[0] if squeeze else result
