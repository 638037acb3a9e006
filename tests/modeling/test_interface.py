"""The one model interface, checked the same way for every registered architecture.

Iterates ``ARCHITECTURES``, so a newly registered family is picked up without editing this file.
Each family must have a preset named ``<arch>-debug`` (or ``debug`` for ``gpt``).
"""

from __future__ import annotations

import json

import pytest
import torch
from gptforge.modeling import (
    ARCHITECTURES,
    build_model,
    config_from_dict,
    config_to_dict,
    get_config,
    preset_names,
)
from gptforge.modeling.introspect import count_params

ARCHS = sorted(ARCHITECTURES)


def _debug_preset(arch: str) -> str:
    names = preset_names()[arch]
    for candidate in (f"{arch}-debug", "debug"):
        if candidate in names:
            return candidate
    raise AssertionError(f"architecture {arch!r} has no debug preset among {names}")


def _model(arch: str, **kw):
    torch.manual_seed(0)
    return build_model(get_config(_debug_preset(arch), **kw))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_contract(arch):
    model = _model(arch, vocab_size=300)
    cfg = model.config
    assert type(cfg) is ARCHITECTURES[arch][0] and cfg.arch == arch
    assert isinstance(model, ARCHITECTURES[arch][1])
    idx = torch.randint(0, 300, (2, 12))
    logits, loss = model(idx)
    assert logits.shape == (2, 12, 300) and loss is None
    targets = idx.clone()
    targets[0, :4] = -100
    logits, loss = model(idx, targets=targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    ref = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100
    )
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal(arch):
    model = _model(arch).eval()
    idx = torch.randint(0, model.config.vocab_size, (1, 10))
    changed = idx.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decode_matches_full_forward(arch):
    model = _model(arch).eval()
    T = min(16, model.config.block_size)
    idx = torch.randint(0, model.config.vocab_size, (2, T))
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_caches(max_batch_size=2, max_seq_len=T)
        out = [model(idx[:, :5], input_pos=torch.arange(5))[0]]
        out += [model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0] for t in range(5, T)]
        model.reset_caches()
        again, _ = model(idx[:, :5], input_pos=torch.arange(5))
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, full[:, :5], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_roundtrip_and_counts(arch):
    model = _model(arch)
    d = config_to_dict(model.config)
    assert d["arch"] == arch
    again = config_from_dict(json.loads(json.dumps(d)))
    assert again == model.config
    assert config_to_dict(again) == d
    assert model.config.block_size >= 1
    n = model.num_params()
    assert 0 < model.num_params(non_embedding=True) < n
    assert n == count_params(model.config)
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({**d, "not_a_field": 1})


@pytest.mark.parametrize("arch", ARCHS)
def test_resize_token_embeddings(arch):
    model = _model(arch, vocab_size=300)
    model.resize_token_embeddings(310)
    assert model.config.vocab_size == 310
    logits, _ = model(torch.tensor([[309, 0]]))
    assert logits.shape == (1, 2, 310)
    assert model.num_params() == count_params(model.config)


@pytest.mark.parametrize("name", [n for names in preset_names().values() for n in names])
def test_every_preset_builds_on_meta(name):
    cfg = get_config(name)
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.num_params() > 0


def test_get_config_errors_list_presets():
    with pytest.raises(ValueError, match="valid names: .*'llama-tiny'"):
        get_config("gpt3")
    with pytest.raises(ValueError, match="allowed fields"):
        get_config("debug", n_layers=3)
    with pytest.raises(ValueError, match="registered architectures"):
        build_model(object())
