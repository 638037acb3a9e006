"""Models on CUDA: the same numbers as on the CPU, caches, bf16 autocast, compile, the loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from gptforge.modeling import build_model, get_config
from gptforge.modeling.loss import linear_cross_entropy

from tests.gpu.conftest import DEVICE, requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda]

PRESETS = ["debug", "llama-debug", "mmrec-debug"]


def _twins(preset: str):
    torch.manual_seed(0)
    cpu = build_model(get_config(preset, dropout=0.0))
    return cpu, copy.deepcopy(cpu).to(DEVICE)


@pytest.mark.parametrize("preset", PRESETS)
def test_training_forward_and_gradients_match_the_cpu(preset):
    cpu, gpu = _twins(preset)
    idx = torch.randint(0, 100, (2, 24))  # (B, T)
    logits_c, _ = cpu(idx)
    logits_g, _ = gpu(idx.to(DEVICE))
    torch.testing.assert_close(logits_g.cpu(), logits_c, atol=1e-4, rtol=1e-4)
    # The training path: the head fused into the loss.
    cpu(idx, idx, return_logits=False)[1].backward()
    gpu(idx.to(DEVICE), idx.to(DEVICE), return_logits=False)[1].backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(q.grad.cpu(), p.grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("batch", [1, 3])
def test_cached_decoding_matches_the_full_forward(preset, batch):
    _, model = _twins(preset)
    model.eval()
    idx = torch.randint(0, 100, (batch, 20), device=DEVICE)  # (B, T)
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V)
        model.setup_caches(batch, 20)
        steps = [model(idx[:, :8], input_pos=torch.arange(8, device=DEVICE))[0]]
        for t in range(8, 20):
            steps.append(model(idx[:, t : t + 1], input_pos=torch.tensor([t], device=DEVICE))[0])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_step_stays_close_to_fp32(preset):
    _, model = _twins(preset)
    idx = torch.randint(0, 100, (4, 32), device=DEVICE)
    ref = model(idx, idx, return_logits=False)[1]
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        loss = model(idx, idx, return_logits=False)[1]
    loss.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 2e-2 * ref.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_compiled_training_step_matches_eager(preset):
    _, eager = _twins(preset)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    idx = torch.randint(0, 100, (2, 32), device=DEVICE)
    loss_e = eager(idx, idx, return_logits=False)[1]
    loss_c = compiled(idx, idx, return_logits=False)[1]
    loss_e.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e, atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_sdpa_kernels_match_the_explicit_softmax_in_bf16(preset):
    torch.manual_seed(0)
    sdpa = build_model(get_config(preset, attention_impl="sdpa")).to(DEVICE, torch.bfloat16)
    math = build_model(get_config(preset, attention_impl="math")).to(DEVICE, torch.bfloat16)
    math.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 100, (2, 64), device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(idx)[0], math(idx)[0], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_cross_entropy_matches_f_cross_entropy(autocast):
    torch.manual_seed(0)
    x = torch.randn(300, 64, device=DEVICE, requires_grad=True)
    w = (torch.randn(1000, 64, device=DEVICE) * 0.1).requires_grad_()
    targets = torch.randint(0, 1000, (300,), device=DEVICE)
    targets[::7] = -100
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        ours = linear_cross_entropy(x, w, targets)
        ref = F.cross_entropy((x @ w.t()).float(), targets)
    g_ours = torch.autograd.grad(ours, (x, w))
    g_ref = torch.autograd.grad(ref, (x, w))
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("preset", PRESETS)
def test_positions_given_on_the_cpu_serve_a_gpu_model(preset):
    _, model = _twins(preset)
    model.eval()
    idx = torch.randint(0, 100, (1, 12), device=DEVICE)
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_caches(1, 12)
        pre, _ = model(idx[:, :8], input_pos=torch.arange(8))  # CPU positions
        nxt, _ = model(idx[:, 8:9], input_pos=torch.tensor([8]))
    torch.testing.assert_close(torch.cat([pre, nxt], 1), full[:, :9], atol=1e-4, rtol=1e-4)
