"""The model and masked batch both loss test modules check against."""

from __future__ import annotations

import torch
from gptforge.modeling import build_model, get_config


def model_with_masked_batch(preset: str):
    """A seeded ``preset`` model (vocab 500, padded to 512 inside) and a (2, 16) batch whose
    first 3 target positions are ignored (-100)."""
    torch.manual_seed(0)
    model = build_model(get_config(preset, vocab_size=500))
    idx = torch.randint(0, 500, (2, 16))
    targets = torch.randint(0, 500, (2, 16))
    targets[:, :3] = -100
    return model, idx, targets
