"""Logits processing against transformers' own processors, and the sampler's statistics."""

from __future__ import annotations

import pytest
import torch
from gptforge.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    logits_to_probs,
    sample,
    sample_from_probs,
    token_logprobs,
)

transformers = pytest.importorskip("transformers")


def _logits(batch: int = 3, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 5, 49])
def test_top_k_against_transformers(k):
    logits = _logits()
    ours = apply_top_k(logits, torch.full((3,), k))
    theirs = transformers.TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert int((~torch.isinf(ours)).sum(-1).min()) == k


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_against_transformers(p):
    logits = _logits(vocab=200)
    ours = apply_top_p(logits, torch.full((3,), p))
    theirs = transformers.TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))


def test_repetition_penalty_against_transformers():
    logits = _logits()
    ids = torch.tensor([[1, 2, 3], [4, 4, 5], [0, 49, 7]])
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((3,), 1.3))
    theirs = transformers.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_per_row_parameters_apply_to_their_row_only():
    logits = _logits()
    out = apply_top_k(logits, torch.tensor([0, 2, 0]))
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert int((~torch.isinf(out[1])).sum()) == 2
    out = apply_top_p(logits, torch.tensor([1.0, 0.01, 1.0]))
    assert torch.equal(out[0], logits[0]) and int((~torch.isinf(out[1])).sum()) == 1


def test_logits_to_probs_temperature_matches_softmax():
    logits = _logits()
    probs = logits_to_probs(logits, temperature=0.5)
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_sampler_frequencies_match_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(4000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    draws = sample_from_probs(probs, gens)
    freq = torch.bincount(draws, minlength=4).float() / 4000
    # 4 sigma of a binomial proportion at n=4000 is < 0.032
    assert torch.allclose(freq, probs[0], atol=0.032), freq


def test_zero_probability_tokens_are_never_sampled():
    logits = _logits(batch=64, vocab=30)
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    toks = sample(logits, 1.0, top_k=3, generators=gens)
    top3 = logits.topk(3, dim=-1).indices
    assert bool((top3 == toks[:, None]).any(-1).all())


def test_greedy_rows_take_argmax_and_leave_randomness_alone():
    logits = _logits()
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    toks = sample(logits, torch.tensor([0.0, 0.0, 0.0]), generators=[g, g, g])
    assert torch.equal(toks, logits.argmax(-1))
    assert torch.equal(g.get_state(), state)


def test_a_rows_draw_depends_only_on_its_generator():
    logits = _logits(batch=4)
    alone = sample(logits[2:3], 1.0, generators=[torch.Generator().manual_seed(9)])
    batch = sample(logits, 1.0, generators=[torch.Generator().manual_seed(s) for s in (1, 2, 9, 3)])
    assert int(alone[0]) == int(batch[2])


def test_token_logprobs_are_log_softmax_of_raw_logits():
    logits = _logits()
    toks = torch.tensor([1, 2, 3])
    chosen, ids, vals = token_logprobs(logits, toks, top_n=4)
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(chosen, ref[torch.arange(3), toks])
    assert torch.equal(ids, ref.topk(4, -1).indices)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("max_new_tokens", {"max_new_tokens": 0}),
        ("temperature", {"temperature": -0.1}),
        ("temperature", {"temperature": float("nan")}),
        ("top_k", {"top_k": -1}),
        ("top_p", {"top_p": 0.0}),
        ("top_p", {"top_p": 1.5}),
        ("repetition_penalty", {"repetition_penalty": 0.0}),
        ("min_new_tokens", {"min_new_tokens": 5, "max_new_tokens": 4}),
        ("stop", {"stop": ("x",) * 17}),
        ("stop", {"stop": ("",)}),
        ("logprobs", {"logprobs": 21}),
    ],
)
def test_bad_parameters_name_the_field(field, kwargs):
    with pytest.raises(ValueError, match=rf"^{field}"):
        SamplingParams(**kwargs)
