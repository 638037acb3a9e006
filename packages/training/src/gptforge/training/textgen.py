"""Small generation helpers for sample printing and exact-match scoring during training.

These run the model without a KV cache (training models are small and prompts short), use
their own ``torch.Generator`` so they never move the training RNG, and batch prompts of equal
length. Serving-grade generation lives in ``gptforge.sampling``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[int]]:
    """New token ids for each prompt (greedy when ``temperature == 0``), stopping at a stop id.

    The stop id itself is not returned. Prompts of equal length are decoded together.

    Args:
        model: ``forward(idx) -> (logits, loss)`` with ``config.block_size``.
        prompts: Token ids per prompt (non-empty).
        max_new_tokens: Most tokens generated per prompt.
        stop_ids: Ids that end a generation.
        temperature: 0 for greedy, else softmax temperature.
        top_k: Keep only the ``top_k`` most likely tokens when sampling.
        seed: Seed of the private generator used when sampling.
        batch_size: Most prompts decoded together.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    config: Any = model.config
    block = int(config.block_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; give at least one token")
        groups[len(prompt)].append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            idx = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                logits, _ = model(idx[:, -block:])  # (B, T, V)
                logits = logits[:, -1, :].float()  # (B, V)
                if temperature <= 0:
                    nxt = logits.argmax(dim=-1)  # (B,)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = torch.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # (B,)
                for row, token in enumerate(nxt.tolist()):
                    if not done[row]:
                        if stops.numel() and token in stops:
                            done[row] = True
                        else:
                            out[rows[row]].append(token)
                if bool(done.all()):
                    break
                idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T+1)
    model.train(was_training)
    return out


def sample_text(
    model: nn.Module,
    tokenizer: object,
    prompt: str,
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """Prompt plus a sampled continuation, as text (stops at end-of-text)."""
    ids = tokenizer.encode(prompt) or [tokenizer.eot_token]  # type: ignore[attr-defined]
    new = generate_ids(
        model,
        [ids],
        max_new_tokens=max_new_tokens,
        stop_ids=[tokenizer.eot_token],  # type: ignore[attr-defined]
        temperature=temperature,
        top_k=top_k,
        seed=seed,
    )[0]
    return prompt + tokenizer.decode(new)  # type: ignore[attr-defined]
