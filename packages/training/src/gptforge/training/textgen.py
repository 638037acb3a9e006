"""Generation during training (sample printing, exact-match scoring) on ``gptforge.sampling``.

The model is put in eval mode for the call and back afterwards, its caches are dropped again
(training never needs them), and sampling draws from a private ``torch.Generator`` so the
training RNG never moves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from gptforge.sampling import generate
from gptforge.sampling.core import context_limit
from torch import nn


@contextmanager
def _generating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        remove = getattr(model, "remove_caches", None)
        if remove is not None:
            remove()
        model.train(was_training)


def _slide(model: nn.Module) -> int:
    # Past the context, slide a quarter of it at a time (the prompt keeps its last tokens).
    return max(1, (context_limit(model) or 4) // 4)


def new_tokens(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy new token ids for each prompt, cut before the first stop id.

    Prompts of equal length are decoded together by :func:`gptforge.sampling.generate`.

    Args:
        model: a gptforge model.
        prompts: token ids per prompt (non-empty).
        max_new_tokens: most tokens generated per prompt.
        stop_ids: ids that end a generation (not returned).
        batch_size: most prompts decoded together.
    """
    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; give at least one token")
        groups[len(prompt)].append(i)
    stops = set(stop_ids)
    with _generating(model):
        for length, members in groups.items():
            for start in range(0, len(members), batch_size):
                rows = members[start : start + batch_size]
                ids = generate(
                    model,
                    torch.tensor([list(prompts[i]) for i in rows]),
                    max_new_tokens,
                    temperature=0.0,
                    stop_token_ids=sorted(stops),
                    slide_tokens=_slide(model),
                )[:, length:].tolist()
                for row, new in zip(rows, ids, strict=True):
                    out[row] = new[: next((j for j, t in enumerate(new) if t in stops), len(new))]
    return out


def sample_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
) -> str:
    """Prompt plus a sampled continuation, as text (stops at end-of-text)."""
    ids = tokenizer.encode(prompt) or [tokenizer.eot_token]
    with _generating(model):
        out = generate(
            model,
            ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=tokenizer.eot_token,
            seed=seed,
            slide_tokens=_slide(model),
        )[len(ids) :].tolist()
    new = out[: out.index(tokenizer.eot_token)] if tokenizer.eot_token in out else out
    return prompt + tokenizer.decode(new)
