"""torch.compile on both families (slow: compilation takes tens of seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
from gptforge.modeling import build_model, get_config


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_compiled_forward_backward_and_decode_match_eager(preset):
    torch.manual_seed(0)
    model = build_model(get_config(preset, vocab_size=500))
    compiled = torch.compile(model)
    idx = torch.randint(0, 500, (2, 16))
    logits, loss = compiled(idx, idx)
    ref_logits, ref_loss = model(idx, idx)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())

    model.eval().setup_caches(max_batch_size=2, max_seq_len=16)
    step = torch.compile(model, dynamic=False)
    with torch.no_grad():
        full, _ = model(idx)
        model(idx[:, :8], input_pos=torch.arange(8))
        out = [step(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0] for t in range(8, 16)]
    torch.testing.assert_close(torch.cat(out, 1), full[:, 8:], atol=1e-4, rtol=1e-4)
