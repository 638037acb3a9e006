"""LLaMA: HF LlamaForCausalLM and Meta consolidated.*.pth both ways, logits against references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gptforge.conversion import (
    ConversionError,
    export_hf,
    export_meta,
    import_hf,
    import_meta,
    load_any,
)
from gptforge.conversion.mapping import split_layer
from gptforge.conversion.meta_llama import (
    SHARD_DIM,
    hf_to_meta_rope_permute,
    meta_to_hf_rope_permute,
)
from gptforge.conversion.weights import load_state_dict
from gptforge.modeling.io import load_model_dir, read_config

from .conftest import greedy, make_run_dir, randomize

transformers = pytest.importorskip("transformers")

SCALED = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)
VARIANTS = {
    "gqa": {},
    "tied": {"tie_embeddings": True},
    "attention-bias": {"attention_bias": True},
    "llama3-rope": {"rope_theta": 500000.0, "rope_scaling": SCALED},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_against_hf_llama(tmp_path: Path, tokenizer_dir: Path, tokenizer, variant: str) -> None:
    run = make_run_dir(tmp_path / "run", "llama-debug", tokenizer_dir, **VARIANTS[variant])
    export_hf(run, tmp_path / "hf")
    ours = load_model_dir(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 2)])
    assert ids.size(1) > 16  # past original_max_position_embeddings, so the RoPE scaling matters
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)
        ours_cont = greedy(lambda x: ours(x)[0], ids, 8)
        hf_cont = hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[
            0, ids.size(1) :
        ]
    assert ours_cont == hf_cont.tolist()


@pytest.mark.parametrize("variant", ["gqa", "tied"])
def test_roundtrip_llama_hf_is_bit_identical(
    tmp_path: Path, tokenizer_dir: Path, variant: str
) -> None:
    run = make_run_dir(tmp_path / "run", "llama-debug", tokenizer_dir, **VARIANTS[variant])
    export_hf(run, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    assert read_config(tmp_path / "back") == read_config(run)
    a, b = load_state_dict(run), load_state_dict(tmp_path / "back")
    V = read_config(run).vocab_size
    assert set(a) == set(b)
    for k in a:
        x, y = (
            (a[k][:V], b[k][:V]) if k in ("embed_tokens.weight", "lm_head.weight") else (a[k], b[k])
        )
        assert torch.equal(x, y), k


def test_from_transformers_llama_directory(tmp_path: Path, tokenizer_dir: Path) -> None:
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000.0,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(cfg))
    hf.save_pretrained(tmp_path / "hf", max_shard_size="30KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "hf" / name).write_bytes((tokenizer_dir / name).read_bytes())
    import_hf(tmp_path / "hf", tmp_path / "ours")
    ours = load_model_dir(tmp_path / "ours")
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)


# ---- Meta's layout ---------------------------------------------------------------------------
def meta_reference_forward(
    sd: dict[str, torch.Tensor], params: dict, ids: torch.Tensor
) -> torch.Tensor:
    """Logits of Meta's LLaMA formulation: RoPE on interleaved pairs as complex numbers."""
    dim, nh = params["dim"], params["n_heads"]
    nkv, hd = params.get("n_kv_heads") or nh, params["dim"] // params["n_heads"]
    eps, T = params["norm_eps"], ids.size(1)

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    freqs = 1.0 / (params["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))  # (hd/2,)
    angles = torch.outer(torch.arange(T).float(), freqs)  # (T, hd/2)
    rot = torch.polar(torch.ones_like(angles), angles)  # (T, hd/2) complex

    def rope(x: torch.Tensor) -> torch.Tensor:  # (B, T, h, hd), pairs (x0, x1), (x2, x3), ...
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], hd // 2, 2))
        return torch.view_as_real(xc * rot[None, :, None, :]).flatten(3)

    x = sd["tok_embeddings.weight"][ids]  # (B, T, C)
    B = x.size(0)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        h = rms(x, sd[p + "attention_norm.weight"])
        q = rope((h @ sd[p + "attention.wq.weight"].T).view(B, T, nh, hd))
        k = rope((h @ sd[p + "attention.wk.weight"].T).view(B, T, nkv, hd))
        v = (h @ sd[p + "attention.wv.weight"].T).view(B, T, nkv, hd)
        k, v = (t.repeat_interleave(nh // nkv, dim=2) for t in (k, v))
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + y.transpose(1, 2).reshape(B, T, dim) @ sd[p + "attention.wo.weight"].T
        h = rms(x, sd[p + "ffn_norm.weight"])
        ff = F.silu(h @ sd[p + "feed_forward.w1.weight"].T) * (
            h @ sd[p + "feed_forward.w3.weight"].T
        )
        x = x + ff @ sd[p + "feed_forward.w2.weight"].T
    return rms(x, sd["norm.weight"]) @ sd["output.weight"].T  # (B, T, V)


def test_rope_permutations_are_inverse() -> None:
    w = torch.randn(4 * 16, 24)
    assert torch.equal(hf_to_meta_rope_permute(meta_to_hf_rope_permute(w, 4), 4), w)
    assert not torch.equal(meta_to_hf_rope_permute(w, 4), w)
    # Meta row 2i + j of each head lands on row j * hd/2 + i.
    out = meta_to_hf_rope_permute(w, 4)
    assert torch.equal(out[16 + 8 + 3], w[16 + 2 * 3 + 1])


def test_meta_export_and_import_match_meta_reference(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "llama-debug", tokenizer_dir)
    export_meta(run, tmp_path / "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    sd = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    ours = load_model_dir(run)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = meta_reference_forward(sd, params, ids)
        torch.testing.assert_close(ours(ids)[0], ref, atol=1e-4, rtol=0)
    import_meta(tmp_path / "meta", tmp_path / "back", tokenizer_dir=tokenizer_dir)
    assert read_config(tmp_path / "back").ffn_hidden == read_config(run).ffn_hidden
    back = load_model_dir(tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(back(ids)[0], ref, atol=1e-4, rtol=0)
    # And on to HF: Meta -> ours -> transformers gives Meta's logits.
    export_hf(tmp_path / "back", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ref, atol=1e-4, rtol=0)


def test_meta_model_parallel_shards_are_joined(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "llama-debug", tokenizer_dir)
    export_meta(run, tmp_path / "meta")
    sd = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    for name, t in sd.items():
        dim = SHARD_DIM.get(split_layer(name)[0])
        parts = [t, t] if dim is None else list(t.chunk(2, dim=dim))
        for s, part in zip(shards, parts, strict=True):
            s[name] = part.clone()
    (tmp_path / "meta" / "consolidated.00.pth").unlink()
    for i, s in enumerate(shards):
        torch.save(s, tmp_path / "meta" / f"consolidated.{i:02d}.pth")
    model, tok, _ = load_any(tmp_path / "meta")
    assert tok is None  # Meta's SentencePiece tokenizer is not ours
    ours = load_model_dir(run)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], ours(ids)[0], atol=1e-5, rtol=0)


def test_meta_missing_params_is_named(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4)}, tmp_path / "m" / "consolidated.00.pth")
    with pytest.raises(ConversionError, match="params.json.*not found"):
        import_meta(tmp_path / "m", tmp_path / "out")
