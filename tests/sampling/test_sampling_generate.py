"""gpt-fast style ``generate`` on the real debug model: cache consistency, transformers parity,
seeds, stopping."""

from __future__ import annotations

import pytest
import torch
from gptforge.sampling import generate


def _reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """No cache: the whole sequence through the model at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids


def test_greedy_on_kv_cache_equals_full_recompute(debug_model):
    prompt = [5, 17, 42, 7]
    out = generate(debug_model, prompt, 20, temperature=0.0)
    assert out.tolist() == _reference_greedy(debug_model, prompt, 20)


def test_batched_rows_equal_their_single_runs(debug_model):
    prompts = torch.tensor([[5, 17, 42], [9, 9, 1], [300, 2, 77]])
    batch = generate(debug_model, prompts, 12, temperature=0.9, top_k=50, seed=3)
    for b in range(3):
        solo = generate(debug_model, prompts[b], 12, temperature=0.9, top_k=50, seed=3 + b)
        assert batch[b].tolist() == solo.tolist()


def test_greedy_matches_transformers_generate(debug_model):
    transformers = pytest.importorskip("transformers")
    from gptforge.conversion.hf_gpt2 import gpt_config_to_hf, ours_to_hf_gpt2

    cfg = debug_model.config
    hf_cfg = {k: v for k, v in gpt_config_to_hf(cfg).items() if k != "gptforge"}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg)).eval()
    hf.load_state_dict(ours_to_hf_gpt2(debug_model.state_dict(), cfg), strict=False)
    prompt = torch.tensor([[5, 17, 42, 7, 8]])
    theirs = hf.generate(
        prompt, max_new_tokens=25, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    ours = generate(debug_model, prompt, 25, temperature=0.0)
    assert ours.tolist() == theirs.tolist()


def test_same_seed_same_output_and_other_seed_differs(debug_model):
    a = generate(debug_model, [1, 2, 3], 30, temperature=1.0, seed=11)
    b = generate(debug_model, [1, 2, 3], 30, temperature=1.0, seed=11)
    c = generate(debug_model, [1, 2, 3], 30, temperature=1.0, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eos_stops_and_pads_finished_rows(debug_model, eos_bias, tokenizer):
    eos = tokenizer.eot_token
    eos_bias()
    out = generate(debug_model, [1, 2, 3], 10, temperature=0.0, eos_id=eos)
    assert out.tolist() == [1, 2, 3, eos]


def test_min_new_tokens_masks_eos(debug_model, eos_bias, tokenizer):
    eos = tokenizer.eot_token
    eos_bias()
    out = generate(debug_model, [1, 2, 3], 10, temperature=0.0, eos_id=eos, min_new_tokens=4)
    new = out[3:].tolist()
    assert eos not in new[:4] and new[4] == eos and len(new) == 5


def test_stop_token_ids_end_generation(debug_model):
    free = generate(debug_model, [4, 5], 15, temperature=0.0).tolist()[2:]
    stop_at = free[3]
    out = generate(debug_model, [4, 5], 15, temperature=0.0, stop_token_ids=[stop_at]).tolist()
    assert out[2:] == free[: free.index(stop_at) + 1]


def test_repetition_penalty_changes_greedy_choice(debug_model):
    plain = generate(debug_model, [1, 2, 3], 20, temperature=0.0).tolist()[3:]
    penalised = generate(debug_model, [1, 2, 3], 20, temperature=0.0, repetition_penalty=5.0)
    new = penalised.tolist()[3:]
    assert len(set(new)) > len(set(plain))


def test_context_overflow_is_a_clear_error(debug_model):
    block = debug_model.config.block_size
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(debug_model, [1] * (block - 2), 5)
    with pytest.raises(ValueError, match="empty"):
        generate(debug_model, [], 5)


def test_mmrec_generates_past_its_training_length():
    """MM-Rec's recurrence has no length limit: generation may run past ``block_size``, and the
    cached continuation equals a plain full-sequence greedy loop."""
    from gptforge.modeling import build_model, get_config
    from gptforge.sampling import SamplingParams, generate_batch, stream_generate
    from gptforge.sampling.core import context_limit

    torch.manual_seed(0)
    model = build_model(get_config("mmrec-debug")).eval()
    block = model.config.block_size
    assert context_limit(model) is None
    prompt = torch.randint(0, model.config.vocab_size, (block - 4,)).tolist()
    n = 12  # prompt + n runs 8 positions past block_size
    out = generate(model, prompt, n, temperature=0.0)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids)[0][:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert out.tolist() == ids[0].tolist()
    params = SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
    (batched,) = generate_batch(model, [prompt], params)
    streamed = [ev.token_id for ev in stream_generate(model, prompt, params)]
    assert batched.token_ids == streamed == out.tolist()[len(prompt) :]


def test_service_limits_allow_long_contexts_only_without_a_limit():
    from gptforge.services.generation import GenerationLimits

    limits = GenerationLimits(context_length=1000)
    assert limits.resolved(256).context_length == 256  # a transformer: capped by block_size
    assert limits.resolved(256, unbounded=True).context_length == 1000  # MM-Rec: no cap
