"""GPU tests (``make test-gpu``): the CUDA paths checked against the CPU ones.

Every module here is marked ``gpu`` and skips without a CUDA device. TF32 is switched off so
fp32 products on the GPU round like the CPU's; bf16 tests carry their own tolerances.
``GPTFORGE_GPU_TEST_DEVICE=cpu make test-gpu`` dry-runs them on the CPU (the comparisons with
the CPU then hold trivially; it checks the tests themselves on a machine without a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

# The training fixtures (a small tokenizer and prepared data), shared with tests/training.
from tests.training.conftest import data_dir, texts, tokenizer_dir  # noqa: F401

#: Where the tests run: CUDA, or the CPU for a dry run.
DEVICE = torch.device(os.environ.get("GPTFORGE_GPU_TEST_DEVICE", "cuda"))
requires_cuda = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 matmuls in full fp32 (no TF32), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
