"""What a seed guarantees inside a busy batch (docs/generation.md states it):

- each sequence draws only from its own generator, so other requests never change which random
  numbers it gets: with float64 logits (rounding differences far below any sampling boundary)
  a seeded request gives the same tokens alone and in a busy batch;
- in float32 the logits themselves differ in the last bits with the batch's shape, so texts
  agree only until a draw lands within that rounding of a boundary; the logprobs of the tokens
  they share agree to within 1e-4.
"""

from __future__ import annotations

import copy

import pytest
import torch
from gptforge.sampling import BatchGenerator, SamplingParams, stream_generate

TARGET = SamplingParams(
    max_new_tokens=40, temperature=0.9, top_p=0.95, seed=77, logprobs=0, ignore_eos=True
)


def _alone(model):
    return list(stream_generate(model, [7, 8, 9], TARGET))


def _busy(model):
    gen = BatchGenerator(model, max_batch_size=4)
    for s, prompt in enumerate(([1, 2, 3, 4, 5], [11] * 9, [3, 1])):
        gen.add(prompt, SamplingParams(max_new_tokens=50, seed=s, temperature=1.0))
    for _ in range(3):
        gen.step()
    got = [gen.add([7, 8, 9], TARGET, seq_id=99)]
    while gen.num_active:
        got += [e for e in gen.step() if e.seq_id == 99]
    return got


@pytest.fixture(scope="module")
def model64(debug_model):
    return copy.deepcopy(debug_model).double()


def test_seeded_sequences_draw_only_their_own_numbers(model64):
    alone, busy = _alone(model64), _busy(model64)
    assert [e.token_id for e in busy] == [e.token_id for e in alone]
    assert len(busy) == TARGET.max_new_tokens


def test_float32_batches_change_logits_only_by_rounding(debug_model):
    alone, busy = _alone(debug_model), _busy(debug_model)
    shared = 0
    for a, b in zip(alone, busy, strict=True):
        if a.token_id != b.token_id:
            break
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        shared += 1
    assert shared > 0
    assert torch.get_default_dtype() == torch.float32
