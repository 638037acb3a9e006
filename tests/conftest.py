"""Shared fixtures. Tests build tiny models and make their own data; nothing is downloaded."""

from __future__ import annotations

import os

# No hub access, ever: a test that tries fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # keep torch from oversubscribing the 2 CI cores when pytest-xdist runs 2 workers
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
