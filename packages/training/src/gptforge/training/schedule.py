"""Learning-rate schedule: linear warmup, then cosine/linear decay to ``min_lr`` (or constant).

The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "cosine",
) -> float:
    """Learning rate for optimiser step ``step`` (0-based).

    Args:
        step: The step about to be taken.
        lr: Peak learning rate.
        min_lr: Final learning rate of a decaying schedule.
        warmup_steps: Steps of linear warmup (step 0 uses ``lr / warmup_steps``).
        max_steps: Total steps; decay ends here.
        schedule: ``cosine``, ``linear`` or ``constant``.

    >>> lr_at(0, lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100)
    0.1
    >>> lr_at(100, lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100)
    0.1
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        coeff = 1.0 - progress
    else:
        raise ValueError(
            f"unknown schedule {schedule!r}; allowed: ['cosine', 'linear', 'constant']"
        )
    return min_lr + coeff * (lr - min_lr)
