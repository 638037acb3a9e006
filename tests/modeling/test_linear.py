"""Linear on oneDNN for training: same numbers as F.linear, and only where it applies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from gptforge.modeling import build_model, get_config
from gptforge.modeling import linear as linear_mod
from gptforge.modeling.linear import Linear, onednn_linear_available

needs_onednn = pytest.mark.skipif(
    not onednn_linear_available(), reason="oneDNN linear needs an x86 CPU torch with oneDNN"
)


def _layer_and_input(bias: bool = True):
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    x = torch.randn(3, 7, 48, requires_grad=True)  # (B, T, in)
    return layer, x


def _grads(layer, x, out):
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    return torch.autograd.grad(out, params, g)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_training_forward_and_gradients_match_f_linear(bias):
    layer, x = _layer_and_input(bias)
    out = layer(x)
    assert "OneDNN" in type(out.grad_fn).__name__ or "OneDNN" in str(out.grad_fn.next_functions)
    ref = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(_grads(layer, x, out), _grads(layer, x, ref), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_result_can_be_written_in_place():
    # The LM head masks padding columns in place; a view made inside a custom Function would
    # forbid that.
    layer, x = _layer_and_input()
    out = layer(x)
    out[..., :5] = 0.0
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert torch.all(layer.weight.grad[:5] == 0)


def test_inference_and_other_dtypes_keep_f_linear():
    layer, x = _layer_and_input()
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    half = copy.deepcopy(layer).to(torch.bfloat16)
    out = half(x.detach().to(torch.bfloat16).requires_grad_())
    assert "OneDNN" not in type(out.grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "OneDNN" not in type(layer(x).grad_fn).__name__


def test_switch_off_with_the_environment_variable(monkeypatch):
    monkeypatch.setenv("GPTFORGE_ONEDNN_LINEAR", "0")
    linear_mod.onednn_linear_available.cache_clear()
    try:
        assert not onednn_linear_available()
        layer, x = _layer_and_input()
        assert "OneDNN" not in type(layer(x).grad_fn).__name__
    finally:
        monkeypatch.delenv("GPTFORGE_ONEDNN_LINEAR")
        linear_mod.onednn_linear_available.cache_clear()


@needs_onednn
@pytest.mark.parametrize("preset", ["debug", "llama-debug", "mmrec-debug"])
def test_training_step_gradients_match_the_f_linear_model(preset, monkeypatch):
    torch.manual_seed(0)
    model = build_model(get_config(preset)).train()
    twin = copy.deepcopy(model)
    x = torch.randint(0, 100, (2, 16))  # (B, T)
    model(x, x, return_logits=False)[1].backward()
    monkeypatch.setattr(linear_mod, "onednn_linear_available", lambda: False)
    twin(x, x, return_logits=False)[1].backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "mmrec-debug"])
def test_every_layer_but_the_head_trains_through_linear(preset):
    model = build_model(get_config(preset))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert type(layers.pop("lm_head")) is torch.nn.Linear  # the head trains inside the loss
    assert layers and all(type(m) is Linear for m in layers.values()), {
        n: type(m).__name__ for n, m in layers.items()
    }
