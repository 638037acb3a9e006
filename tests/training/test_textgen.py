"""Generation during training runs on ``gptforge.sampling.generate`` and leaves no trace."""

from __future__ import annotations

import torch
from gptforge.modeling import build_model, get_config
from gptforge.sampling import generate
from gptforge.tokenizer import Tokenizer
from gptforge.training.textgen import new_tokens, sample_text


def _model(vocab_size: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_config("debug", vocab_size=vocab_size, block_size=16, dropout=0.1))
    with torch.no_grad():  # larger weights than the init: greedy answers that vary
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_new_tokens_match_one_prompt_at_a_time_and_stop_before_the_stop_id():
    model = _model()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9]]
    # 20 new tokens overflow the 16-token context: training slides a quarter of it (4).
    free = [
        generate(model.eval(), p, 20, temperature=0.0, slide_tokens=4)[len(p) :].tolist()
        for p in prompts
    ]
    # a token that first appears after the start of the first answer ends it there
    k, stop = next((i, t) for i, t in enumerate(free[0]) if i >= 1 and free[0].index(t) == i)
    model.train()
    got = new_tokens(model, prompts, max_new_tokens=20, stop_ids=[stop])
    for answer, full in zip(got, free, strict=True):
        assert answer == full[: full.index(stop)] if stop in full else answer == full
    assert got[0] == free[0][:k]


def test_sampling_keeps_train_mode_rng_and_frees_the_caches():
    tok = Tokenizer.train(texts=["hello world"] * 20, vocab_size=270, show_progress=False)
    model = _model(tok.n_vocab).train()
    rng = torch.get_rng_state()
    text = sample_text(model, tok, "hello", max_new_tokens=30)  # past the 16-token context
    assert text.startswith("hello")
    assert model.training and not model.has_caches
    assert torch.equal(rng, torch.get_rng_state())
