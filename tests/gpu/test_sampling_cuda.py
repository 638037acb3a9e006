"""Generation on CUDA: the CPU's greedy tokens, seeds, batches, CUDA graphs, weight precisions."""

from __future__ import annotations

import copy

import pytest
import torch
from gptforge.modeling import build_model, get_config
from gptforge.sampling import (
    BatchGenerator,
    SamplingParams,
    generate,
    generate_batch,
    stream_generate,
)
from gptforge.sampling.core import compiled_decode_one_token
from gptforge.sampling.precision import apply_weight_precision, check_logits

from tests.gpu.conftest import DEVICE, requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda]

PRESETS = ["debug", "llama-debug", "mmrec-debug"]
PROMPT = [[5, 17, 42, 7], [9, 9, 1, 250]]


def _twins(preset: str):
    torch.manual_seed(0)
    cpu = build_model(get_config(preset, vocab_size=300)).eval()
    return cpu, copy.deepcopy(cpu).to(DEVICE)


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_tokens_equal_the_cpu_tokens(preset):
    cpu, gpu = _twins(preset)
    prompt = torch.tensor(PROMPT)
    out = generate(gpu, prompt.to(DEVICE), 16, temperature=0.0)
    assert out.device.type == DEVICE.type
    assert out.tolist() == generate(cpu, prompt, 16, temperature=0.0).tolist()


def test_seeds_reproduce_and_a_cpu_generator_draws_the_cpu_tokens():
    cpu, gpu = _twins("debug")
    kw = dict(temperature=1.0, top_k=50)
    first = generate(gpu, PROMPT[0], 16, seed=3, **kw)
    assert first.tolist() == generate(gpu, PROMPT[0], 16, seed=3, **kw).tolist()
    # A generator on the CPU drives a GPU batch: the draws are the CPU's, so are the tokens.
    on_gpu = generate(gpu, PROMPT[0], 16, generator=torch.Generator().manual_seed(5), **kw)
    on_cpu = generate(cpu, PROMPT[0], 16, generator=torch.Generator().manual_seed(5), **kw)
    assert on_gpu.tolist() == on_cpu.tolist()


def test_a_seed_reproduces_inside_a_busy_batch():
    _, gpu = _twins("llama-debug")
    target = SamplingParams(max_new_tokens=12, temperature=1.0, seed=42)
    alone = [e.token_id for e in stream_generate(gpu, [7, 8, 9], target)]
    busy = generate_batch(
        gpu,
        [[1, 2, 3, 4, 5], [7, 8, 9], [6]],
        [SamplingParams(max_new_tokens=20, seed=1), target, SamplingParams(max_new_tokens=5)],
        max_batch_size=2,
    )
    assert busy[1].token_ids == alone


@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_graph_decoding_gives_the_eager_tokens(preset):
    _, gpu = _twins(preset)
    prompt = torch.tensor(PROMPT, device=DEVICE)
    eager = generate(gpu, prompt, 12, temperature=0.0)
    assert generate(gpu, prompt, 12, temperature=0.0, compile=True).tolist() == eager.tolist()
    kw = dict(temperature=0.9, top_k=40, seed=11)
    assert generate(gpu, prompt, 12, compile=True, **kw).tolist() == (
        generate(gpu, prompt, 12, **kw).tolist()
    )


@torch.inference_mode()
def test_compiled_logits_survive_the_next_replay():
    # CUDA graphs reuse their output memory; the returned logits must be a copy. Graph trees
    # warm a shape up on its first call and record it on the second, so the checked pair of
    # calls are replays.
    _, gpu = _twins("debug")
    gpu.setup_caches(1, gpu.config.block_size)
    tok = torch.tensor([[5]], device=DEVICE)
    for p in range(3):
        compiled_decode_one_token(gpu, tok + p, torch.tensor([p], device=DEVICE))
    first = compiled_decode_one_token(gpu, tok, torch.tensor([3], device=DEVICE))
    kept = first.clone()
    compiled_decode_one_token(gpu, tok + 7, torch.tensor([4], device=DEVICE))
    assert torch.equal(first, kept)


def test_compiled_batch_engine_matches_eager():
    _, gpu = _twins("debug")
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    params = [
        SamplingParams(max_new_tokens=n, temperature=t, top_k=k, seed=s, ignore_eos=True)
        for n, t, k, s in [(10, 0.0, 0, 1), (4, 0.8, 20, 2), (7, 1.0, 0, 3), (12, 0.7, 50, 4)]
    ]
    eager = generate_batch(gpu, prompts, params, max_batch_size=2)
    gen = BatchGenerator(gpu, max_batch_size=2, max_seq_len=gpu.config.block_size, compile=True)
    assert gen.precompile() > 0
    compiled = generate_batch(gpu, prompts, params, max_batch_size=2, compile=True)
    assert [c.token_ids for c in compiled] == [e.token_ids for e in eager]


@pytest.mark.parametrize("mode", ["bfloat16", "float16"])
@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_half_precision_weights_keep_the_fp32_logits(preset, mode):
    _, gpu = _twins(preset)
    half = apply_weight_precision(copy.deepcopy(gpu), mode)
    idx = torch.randint(0, 300, (2, 24), device=DEVICE)
    check = check_logits(gpu, half, idx)
    assert check.ok(), check


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the CPU runs int8-dynamic")
def test_int8_dynamic_refuses_a_gpu_model_with_the_fix():
    _, gpu = _twins("debug")
    with pytest.raises(ValueError, match="CPU only.*bfloat16"):
        apply_weight_precision(gpu, "int8-dynamic")


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_compiled_sliding_window_matches_the_cpu(preset):
    """Past the context, the cache is recomputed under the CUDA graphs: the CPU's greedy ids."""
    torch.manual_seed(0)
    cpu = build_model(get_config(preset, vocab_size=300, block_size=32)).eval()
    gpu = copy.deepcopy(cpu).to(DEVICE)
    want = generate(cpu, PROMPT[0], 70, temperature=0.0, slide_tokens=8).tolist()
    got = generate(gpu, PROMPT[0], 70, temperature=0.0, slide_tokens=8, compile=True)
    assert got.tolist() == want
    params = SamplingParams(max_new_tokens=70, temperature=0.0, ignore_eos=True, slide_tokens=8)
    done = generate_batch(gpu, [PROMPT[0], [3] * 40], params, compile=True)
    assert done[0].token_ids == want[len(PROMPT[0]) :]
