"""Logits processing and token selection: small batched functions that compose.

Every function takes logits of shape ``(B, V)`` and per-row parameters as tensors of shape
``(B,)`` so one call serves a batch whose rows use different settings. Randomness comes only
from per-row ``torch.Generator`` objects, which is what makes a seed reproduce its output
whatever else shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """CTRL-style penalty on tokens already seen (as in ``transformers``).

    Args:
        logits: ``(B, V)`` float logits.
        seen: ``(B, V)`` bool, True where the token occurred in the prompt or output.
        penalty: ``(B,)`` penalties (> 0; 1 = off).
    """
    pen = torch.where(seen, penalty.unsqueeze(-1), torch.ones_like(logits))  # (B, V)
    return torch.where(logits > 0, logits / pen, logits * pen)


def apply_top_k(logits: Tensor, top_k: Tensor, k_max: int | None = None) -> Tensor:
    """Mask everything below each row's k-th largest logit; ``top_k[b] == 0`` leaves row b alone.

    ``k_max``: the largest ``top_k`` when the caller knows it (saves reading it back).
    """
    vocab = logits.size(-1)
    k_max = min(int(top_k.max()) if k_max is None else k_max, vocab)
    if k_max <= 0:
        return logits
    top_vals = torch.topk(logits, k_max, dim=-1).values  # (B, k_max), sorted descending
    k = top_k.clamp(min=1, max=k_max) - 1  # (B,)
    kth = top_vals.gather(-1, k.unsqueeze(-1))  # (B, 1)
    kth = torch.where((top_k > 0).unsqueeze(-1), kth, torch.full_like(kth, NEG_INF))
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: Tensor, top_p: Tensor) -> Tensor:
    """Nucleus filter: keep the smallest prefix of sorted tokens whose mass reaches ``top_p``.

    The most likely token is always kept; ``top_p[b] == 1`` leaves row b alone.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of strictly more likely tokens
    drop = (mass_before >= top_p.unsqueeze(-1)) & (top_p < 1.0).unsqueeze(-1)
    sorted_logits = sorted_logits.masked_fill(drop, NEG_INF)
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def logits_to_probs(
    logits: Tensor,
    temperature: Tensor | float = 1.0,
    top_k: Tensor | int = 0,
    top_p: Tensor | float = 1.0,
) -> Tensor:
    """Temperature, then top-k, then top-p; returns probabilities ``(B, V)`` in fp32.

    Scalars apply to every row. Temperature must be > 0 here; greedy rows are handled by
    :func:`sample`.

    >>> p = logits_to_probs(torch.tensor([[2.0, 1.0, 0.0]]), temperature=1.0, top_k=2)
    >>> p[0, 2].item()
    0.0
    """
    logits = logits.float()
    batch = logits.size(0)
    top_k_given, top_p_given = top_k, top_p
    temperature = _per_row(temperature, batch, logits.device, torch.float32)
    top_k = _per_row(top_k, batch, logits.device, torch.long)
    top_p = _per_row(top_p, batch, logits.device, torch.float32)
    logits = logits / temperature.clamp(min=1e-5).unsqueeze(-1)  # (B, V)
    # Python scalars decide on the host; tensors are read back (a sync on a GPU).
    if isinstance(top_k_given, int):
        if top_k_given > 0:
            logits = apply_top_k(logits, top_k, k_max=top_k_given)
    elif bool((top_k > 0).any()):
        logits = apply_top_k(logits, top_k)
    if top_p_given < 1.0 if isinstance(top_p_given, float) else bool((top_p < 1.0).any()):
        logits = apply_top_p(logits, top_p)
    return torch.softmax(logits, dim=-1)


def sample_from_probs(probs: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """Draw one token per row with that row's own generator; returns ``(B,)`` int64.

    Uses the exponential-race trick (argmax of ``p / E`` with ``E ~ Exp(1)``), which equals
    multinomial sampling and needs one random draw per vocabulary entry, so a row's draws depend
    only on its own generator. A generator on another device than ``probs`` (a CPU one for a
    GPU batch) draws where it lives.
    """
    noise = torch.empty_like(probs)  # (B, V)
    for row, gen in enumerate(generators):
        if gen is None or gen.device == probs.device:
            noise[row].exponential_(1.0, generator=gen)
        else:
            draw = torch.empty(probs.size(-1), dtype=probs.dtype, device=gen.device)  # (V,)
            noise[row].copy_(draw.exponential_(1.0, generator=gen))
    return torch.argmax(probs / noise, dim=-1)


def sample(
    logits: Tensor,
    temperature: Tensor | float = 1.0,
    top_k: Tensor | int = 0,
    top_p: Tensor | float = 1.0,
    generators: Sequence[torch.Generator | None] | None = None,
) -> Tensor:
    """Pick one token per row: argmax where temperature is 0, a sample elsewhere.

    Args:
        logits: ``(B, V)`` processed logits (penalties and masks already applied).
        temperature, top_k, top_p: scalars or ``(B,)`` tensors.
        generators: one generator per row (``None`` uses torch's global one).

    Returns:
        ``(B,)`` int64 token ids.
    """
    batch = logits.size(0)
    greedy_tok = torch.argmax(logits, dim=-1)  # (B,)
    if isinstance(temperature, int | float) and temperature == 0:
        return greedy_tok  # decided on the host: no read-back from a GPU per token
    temperature = _per_row(temperature, batch, logits.device, torch.float32)
    sampling_rows = temperature > 0
    if not bool(sampling_rows.any()):
        return greedy_tok
    probs = logits_to_probs(logits, temperature, top_k, top_p)  # (B, V)
    gens = list(generators) if generators is not None else [None] * batch
    # Greedy rows must not consume randomness, so sample only the rows that need it.
    rows = sampling_rows.nonzero().flatten().tolist()
    drawn = sample_from_probs(probs[rows], [gens[r] for r in rows])  # (len(rows),)
    out = greedy_tok.clone()
    out[rows] = drawn
    return out


def token_logprobs(
    logits: Tensor, tokens: Tensor, top_n: int = 0
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Log-probabilities of ``tokens`` under the raw model distribution ``log_softmax(logits)``.

    Returns:
        ``(chosen (B,), top_ids (B, top_n) | None, top_logprobs (B, top_n) | None)``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    chosen = logp.gather(-1, tokens.view(-1, 1)).squeeze(-1)  # (B,)
    if top_n <= 0:
        return chosen, None, None
    top = torch.topk(logp, min(top_n, logp.size(-1)), dim=-1)
    return chosen, top.indices, top.values


def _per_row(
    value: Tensor | float | int, batch: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    if isinstance(value, Tensor):
        return (
            value.to(device=device, dtype=dtype).expand(batch)
            if value.dim() == 0
            else value.to(device=device, dtype=dtype)
        )
    return torch.full((batch,), value, device=device, dtype=dtype)
