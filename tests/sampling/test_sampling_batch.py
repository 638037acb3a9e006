"""Continuous batching: different prompt lengths and parameters, slots, seeds, logprobs, stops."""

from __future__ import annotations

import pytest
import torch
from gptforge.sampling import BatchGenerator, SamplingParams, generate_batch, stream_generate

PROMPTS = [[5, 17], [9, 9, 1, 4, 250, 3, 8], [300, 2, 77, 6]]
PARAMS = [
    SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True),
    SamplingParams(max_new_tokens=14, temperature=0.8, top_k=40, seed=1, ignore_eos=True),
    SamplingParams(
        max_new_tokens=7,
        temperature=1.2,
        top_p=0.9,
        repetition_penalty=1.3,
        seed=2,
        ignore_eos=True,
    ),
]


def _solo(model, prompt, params, tokenizer=None):
    return list(stream_generate(model, prompt, params, tokenizer=tokenizer))


@pytest.fixture(scope="module", params=["debug", "llama-debug", "mmrec-debug"])
def any_model(request, tokenizer):
    from gptforge.modeling import ARCHITECTURES, build_model, get_config

    if request.param.startswith("mmrec") and "mmrec" not in ARCHITECTURES:
        pytest.skip("mmrec is not registered yet")

    torch.manual_seed(0)
    return build_model(get_config(request.param, vocab_size=tokenizer.n_vocab)).eval()


def test_batch_of_different_lengths_and_params_equals_solo_runs(any_model, tokenizer):
    batch = generate_batch(any_model, PROMPTS, PARAMS, tokenizer=tokenizer)
    for prompt, params, got in zip(PROMPTS, PARAMS, batch, strict=True):
        solo = _solo(any_model, prompt, params, tokenizer)
        assert got.token_ids == [e.token_id for e in solo]
        assert got.text == "".join(e.text for e in solo)
        assert got.finish_reason == "length" and len(got.token_ids) == params.max_new_tokens


def test_more_prompts_than_slots_reuse_freed_slots(debug_model):
    prompts = [[i + 1, i + 2, i + 3][: 1 + i % 3] for i in range(5)]
    params = [SamplingParams(max_new_tokens=4 + 3 * i, temperature=0.0) for i in range(5)]
    batched = generate_batch(debug_model, prompts, params, max_batch_size=2)
    for p, q, got in zip(prompts, params, batched, strict=True):
        assert got.token_ids == [e.token_id for e in _solo(debug_model, p, q)]


def test_seed_reproduces_when_joining_a_busy_batch(debug_model):
    target = SamplingParams(max_new_tokens=12, temperature=1.0, seed=42)
    alone = [e.token_id for e in _solo(debug_model, [7, 8, 9], target)]
    gen = BatchGenerator(debug_model, max_batch_size=4)
    others = [gen.add([1, 2, 3, 4, 5], SamplingParams(max_new_tokens=30, seed=s)) for s in (1, 2)]
    assert all(e.finish_reason is None for e in others)
    for _ in range(3):
        gen.step()
    got = [gen.add([7, 8, 9], target, seq_id=99)]
    while gen.num_active:
        got += [e for e in gen.step() if e.seq_id == 99]
    assert [e.token_id for e in got] == alone


def test_logprobs_are_the_models_log_softmax(debug_model):
    prompt = [3, 1, 4, 1, 5]
    params = SamplingParams(max_new_tokens=6, temperature=0.7, seed=5, logprobs=3)
    (c,) = generate_batch(debug_model, [prompt], params)
    with torch.no_grad():
        logits, _ = debug_model(torch.tensor([prompt + c.token_ids]))
    ref = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)  # (n, V)
    expected = ref[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)]
    torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)
    assert c.top_logprobs is not None
    for step, top in enumerate(c.top_logprobs):
        assert [i for i, _ in top] == ref[step].topk(3).indices.tolist()


def test_stop_string_spanning_tokens_cuts_the_text(debug_model, tokenizer):
    prompt = tokenizer.encode("hello")
    free = generate_batch(
        debug_model,
        [prompt],
        SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True),
        tokenizer=tokenizer,
    )[0]
    pieces = [tokenizer.decode([t]) for t in free.token_ids]
    start = len(pieces[0]) + len(pieces[1])
    stop = free.text[start - 1 : start + 2]  # spans the boundary of tokens 1 and 2
    assert len(stop) == 3
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop=(stop,), ignore_eos=True)
    (c,) = generate_batch(debug_model, [prompt], params, tokenizer=tokenizer)
    assert c.finish_reason == "stop_sequence" and c.matched_stop == stop
    assert c.text == free.text[: free.text.find(stop)]
    assert stop not in c.text


def test_finish_reasons_eos_stop_token_and_length(debug_model, tokenizer, eos_bias):
    free = generate_batch(debug_model, [[1, 2]], SamplingParams(max_new_tokens=6, temperature=0.0))[
        0
    ]
    assert free.finish_reason == "length"
    stop_tok = free.token_ids[2]
    c = generate_batch(
        debug_model,
        [[1, 2]],
        SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=(stop_tok,)),
    )[0]
    assert c.finish_reason == "stop_token" and c.matched_stop_token == stop_tok
    assert c.token_ids[-1] == stop_tok
    eos_bias()
    c = generate_batch(
        debug_model,
        [[1, 2]],
        SamplingParams(max_new_tokens=6, temperature=0.0),
        tokenizer=tokenizer,
    )[0]
    assert c.finish_reason == "eos" and c.token_ids == [tokenizer.eot_token] and c.text == ""


def test_cancel_frees_the_slot_at_once(debug_model):
    gen = BatchGenerator(debug_model, max_batch_size=1)
    first = gen.add([1, 2, 3], SamplingParams(max_new_tokens=40))
    assert gen.free_slots == 0
    with pytest.raises(RuntimeError, match="slots are busy"):
        gen.add([1], SamplingParams(max_new_tokens=4))
    ev = gen.cancel(first.seq_id)
    assert ev is not None and ev.finish_reason == "cancelled"
    assert gen.free_slots == 1 and gen.step() == []


def test_invalid_requests_name_the_field(debug_model):
    gen = BatchGenerator(debug_model, max_batch_size=1)
    V, ctx = debug_model.config.vocab_size, debug_model.config.block_size
    with pytest.raises(ValueError, match="^prompt is empty"):
        gen.add([], SamplingParams())
    with pytest.raises(ValueError, match="^prompt_ids"):
        gen.add([V], SamplingParams())
    with pytest.raises(ValueError, match="^max_new_tokens"):
        gen.add([1] * (ctx - 3), SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="^stop_token_ids"):
        gen.add([1], SamplingParams(max_new_tokens=4, stop_token_ids=(V,)))
    assert gen.free_slots == 1


def test_recurrent_mmrec_streams_through_the_same_interface(tokenizer):
    from gptforge.modeling import ARCHITECTURES, build_model, get_config

    if "mmrec" not in ARCHITECTURES:
        pytest.skip("mmrec is not registered yet")
    torch.manual_seed(0)
    model = build_model(get_config("mmrec-debug", vocab_size=tokenizer.n_vocab)).eval()
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    events = _solo(model, [1, 2, 3], params)
    ids = [1, 2, 3]
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert [e.token_id for e in events] == ids[3:]


def test_compiled_batch_buckets_are_powers_of_two_and_few():
    from gptforge.sampling.batch import batch_bucket, batch_buckets

    assert [batch_bucket(r, 16) for r in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    assert batch_buckets(6) == [1, 2, 4, 6]  # capped at the slot count
    assert batch_buckets(256) == [8, 16, 32, 64, 128, 256]  # floor max/32: few graphs
    for max_rows in range(1, 1025):
        buckets = batch_buckets(max_rows)
        assert len(buckets) <= 7 and buckets[-1] == max_rows
        assert all(batch_bucket(r, max_rows) >= r for r in range(1, max_rows + 1))
