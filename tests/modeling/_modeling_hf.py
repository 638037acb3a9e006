"""Tiny transformers models with the same configuration as ours, and weight copying into ours.

This is a test oracle, not the conversion package: it proves the architectures compute the
same function as transformers' reference implementations.
"""

from __future__ import annotations

import torch
from gptforge.modeling import GPT, GPTConfig, Llama, LlamaConfig
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM
from transformers import LlamaConfig as HFLlamaConfig

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_gpt2(cfg: GPTConfig) -> GPT2LMHeadModel:
    """transformers' GPT-2 with ``cfg``'s shape (HF GPT-2 always has every bias)."""
    assert cfg.bias and cfg.qkv_bias, "HF GPT-2 has no bias switch"
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, layer_norm_epsilon=cfg.norm_eps,
        activation_function="gelu_new" if cfg.gelu_approximate == "tanh" else "gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=cfg.tie_embeddings,
    )  # fmt: skip
    hf_cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(hf_cfg)


def hf_llama(cfg: LlamaConfig) -> LlamaForCausalLM:
    """transformers' Llama with ``cfg``'s shape."""
    hf_cfg = HFLlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd,
        intermediate_size=cfg.ffn_hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.attention_bias,
    )  # fmt: skip
    hf_cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_cfg)


@torch.no_grad()
def _copy(ours: torch.nn.Module, theirs: dict[str, torch.Tensor]) -> None:
    own = ours.state_dict()
    for name, t in theirs.items():
        if name not in own:
            continue
        dst = own[name]
        dst[: t.size(0)].copy_(t)  # the embedding / head rows beyond vocab_size are padding


def gpt_from_hf(hf: GPT2LMHeadModel, cfg: GPTConfig) -> GPT:
    """Our GPT with ``hf``'s weights (name map + Conv1D transpose)."""
    sd = {}
    for k, v in hf.state_dict().items():
        k = k.removeprefix("transformer.")
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue
        sd[k] = v.t() if k.endswith(GPT2_CONV1D) else v
    model = GPT(cfg)
    _copy(model, sd)
    return model.eval()


def llama_from_hf(hf: LlamaForCausalLM, cfg: LlamaConfig) -> Llama:
    """Our Llama with ``hf``'s weights (pure name map)."""
    sd = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    model = Llama(cfg)
    _copy(model, sd)
    return model.eval()


def hf_num_params(model: torch.nn.Module) -> int:
    """What transformers counts: unique parameters."""
    return sum(p.numel() for p in model.parameters())
