"""Generation past the context: a sliding window that recomputes the cache when it slides."""

from __future__ import annotations

import pytest
import torch
from gptforge.modeling import build_model, get_config
from gptforge.sampling import SamplingParams, generate, generate_batch, stream_generate

CONTEXT = 16


def _model(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(get_config(preset, vocab_size=96, block_size=CONTEXT)).eval()


@torch.no_grad()
def _crop_every_step(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    """The books' cache-less loop: each step sees the last ``context`` tokens."""
    idx = torch.tensor([ids])
    for _ in range(n):
        logits, _ = model(idx[:, -CONTEXT:])  # (1, T, V)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0].tolist()


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_slide_one_matches_the_crop_every_step_loop(preset):
    model = _model(preset)
    prompt = list(range(1, 21))  # longer than the context
    out = generate(model, prompt, 40, temperature=0.0, slide_tokens=1)
    assert out.tolist() == _crop_every_step(model, prompt, 40)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_wider_slide_matches_a_loop_that_recomputes_the_same_windows(preset):
    model = _model(preset)
    prompt, slide = [5, 6, 7], 4
    out = generate(model, prompt, 30, temperature=0.0, slide_tokens=slide)[3:].tolist()
    # Reference: the window starts over (from position 0) whenever it holds CONTEXT tokens.
    seq, start = list(prompt), 0
    with torch.no_grad():
        for _ in range(30):
            if len(seq) - start > CONTEXT:
                start = len(seq) - (CONTEXT - slide + 1)
            logits, _ = model(torch.tensor([seq[start:]]))
            seq.append(int(logits[0, -1].argmax()))
    assert out == seq[3:]


def test_batch_engine_slides_like_generate(debug_model, tokenizer):
    model = _model("debug")
    params = SamplingParams(max_new_tokens=37, temperature=0.0, ignore_eos=True, slide_tokens=5)
    want = generate(model, [3, 4, 5, 6], 37, temperature=0.0, slide_tokens=5)[4:].tolist()
    streamed = [ev.token_id for ev in stream_generate(model, [3, 4, 5, 6], params)]
    assert streamed == want
    # Rows in one batch slide at different steps and stay independent of each other.
    prompts = [[3, 4, 5, 6], [9] * 11, [7]]
    done = generate_batch(model, prompts, params)
    for p, c in zip(prompts, done, strict=True):
        solo = generate(model, p, 37, temperature=0.0, slide_tokens=5)[len(p) :].tolist()
        assert c.token_ids == solo
        assert c.finish_reason == "length"


def test_without_slide_past_the_context_is_refused_naming_the_fix():
    model = _model("debug")
    with pytest.raises(ValueError, match="slide_tokens"):
        generate(model, [1, 2, 3], CONTEXT)
    with pytest.raises(ValueError, match=r"slide_tokens must be in \[1, 16\]"):
        generate(model, [1, 2, 3], CONTEXT, slide_tokens=CONTEXT + 1)
    with pytest.raises(ValueError, match="slide_tokens"):
        list(stream_generate(model, [1, 2, 3], SamplingParams(max_new_tokens=CONTEXT)))
    with pytest.raises(ValueError, match="slide_tokens must be >= 0"):
        SamplingParams(slide_tokens=-1)
