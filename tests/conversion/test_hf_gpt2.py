"""HF GPT-2 both ways: transformers loads what we write with equal logits, and back bit-identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gptforge.conversion import ConversionError, export_hf, import_hf
from gptforge.conversion.weights import load_state_dict
from gptforge.modeling.io import load_model_dir, read_config
from gptforge.tokenizer import Tokenizer
from safetensors.torch import save_file

from .conftest import greedy, make_run_dir, randomize, write_gpt2_files

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "tied-bias": {},
    "untied": {"tie_embeddings": False},
    "no-bias": {"bias": False, "qkv_bias": False},
    "qkv-bias-only": {"bias": False},
    "exact-gelu-eps": {"gelu_approximate": "none", "norm_eps": 1e-6},
    "no-padding": {"pad_vocab_multiple": 1},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_against_hf_gpt2(tmp_path: Path, tokenizer_dir: Path, tokenizer, variant: str) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, **VARIANTS[variant])
    export_hf(run, tmp_path / "hf")
    ours = load_model_dir(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert ours.config.padded_vocab_size != ours.config.vocab_size or variant == "no-padding"

    ids = torch.tensor([tokenizer.encode("The quick brown fox converts checkpoints.")])
    with torch.no_grad():
        a = ours(ids)[0]
        b = hf(ids).logits
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

    with torch.no_grad():
        ours_cont = greedy(lambda x: ours(x)[0], ids, 12)
        hf_cont = hf.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)[
            0, ids.size(1) :
        ]
    assert ours_cont == hf_cont.tolist()


def test_autotokenizer_loads_exported_tokenizer(
    tmp_path: Path, tokenizer_dir: Path, tokenizer
) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    export_hf(run, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Numbers 0123456789 and ünïcödé 🙂<|endoftext|>"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text, allowed_special="all")
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eot_token


@pytest.mark.parametrize("variant", ["tied-bias", "untied", "no-bias", "qkv-bias-only"])
def test_roundtrip_ours_hf_ours_is_bit_identical(
    tmp_path: Path, tokenizer_dir: Path, variant: str
) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, **VARIANTS[variant])
    export_hf(run, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    assert read_config(tmp_path / "back") == read_config(run)
    a, b = (
        load_state_dict(run / "model.safetensors"),
        load_state_dict(tmp_path / "back" / "model.safetensors"),
    )
    assert set(a) == set(b)
    V = read_config(run).vocab_size
    for k in a:
        # Padding rows are never used; they come back as zeros. Every used value is identical.
        x, y = (a[k][:V], b[k][:V]) if k in ("wte.weight", "lm_head.weight") else (a[k], b[k])
        assert x.dtype == y.dtype and torch.equal(x, y), k
        if k in ("wte.weight", "lm_head.weight"):  # the decision docs/conversion.md states
            assert torch.count_nonzero(b[k][V:]) == 0, k
    tok_a = json.loads((run / "tokenizer" / "gptforge.json").read_text())["fingerprint"]
    tok_b = json.loads((tmp_path / "back" / "tokenizer" / "gptforge.json").read_text())[
        "fingerprint"
    ]
    assert tok_a == tok_b


def _hf_model(tied: bool = True) -> transformers.GPT2LMHeadModel:
    cfg = transformers.GPT2Config(
        vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=tied
    )
    torch.manual_seed(1)
    return randomize(transformers.GPT2LMHeadModel(cfg))


def _copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_bytes((tokenizer_dir / name).read_bytes())


@pytest.mark.parametrize(
    "layout",
    ["safetensors", "pytorch_bin", "sharded_safetensors", "sharded_bin", "no_prefix", "untied"],
)
def test_from_hf_gpt2_directory(tmp_path: Path, tokenizer_dir: Path, layout: str) -> None:
    hf = _hf_model(tied=layout != "untied")
    out = tmp_path / "hf"
    if layout == "no_prefix":  # how OpenAI's weights sit on the hub: GPT2Model names + mask buffers
        hf.save_pretrained(out)
        sd = {
            k.removeprefix("transformer."): v.contiguous()
            for k, v in hf.state_dict().items()
            if k != "lm_head.weight"
        }
        sd.update({f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 32, 32)) for i in range(2)})
        (out / "model.safetensors").unlink()
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        hf.save_pretrained(
            out,
            safe_serialization="bin" not in layout,
            max_shard_size="20KB" if "sharded" in layout else "5GB",
        )
    if "sharded" in layout:
        assert list(out.glob("*.index.json")), sorted(p.name for p in out.iterdir())
    if layout == "no_prefix":  # the hub's gpt2 also ships vocab.json + merges.txt
        write_gpt2_files(tokenizer_dir, out)
    else:
        _copy_tokenizer(tokenizer_dir, out)
    import_hf(out, tmp_path / "ours")
    ours = load_model_dir(tmp_path / "ours")
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)
    text = "The quick brown fox 🙂<|endoftext|>"
    want = Tokenizer.from_dir(tokenizer_dir).encode(text, allowed_special="all")
    assert (
        Tokenizer.from_dir(tmp_path / "ours" / "tokenizer").encode(text, allowed_special="all")
        == want
    )


def test_export_refuses_to_overwrite_without_force(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists.*--force"):
        export_hf(run, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    export_hf(run, tmp_path / "hf", force=True)
    assert not (tmp_path / "hf" / "keep.txt").exists()
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_failed_conversion_leaves_no_output(tmp_path: Path, tokenizer_dir: Path) -> None:
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    _copy_tokenizer(tokenizer_dir, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["n_layer"] = 1  # the weights have two layers
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"transformer\.h\.1\.") as e:
        import_hf(tmp_path / "hf", tmp_path / "ours")
    assert "configuration does not match" in str(e.value)
    assert not (tmp_path / "ours").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ours")]


def test_errors_name_the_key(tmp_path: Path, tokenizer_dir: Path) -> None:
    hf = _hf_model()
    out = tmp_path / "hf"
    hf.save_pretrained(out)
    _copy_tokenizer(tokenizer_dir, out)
    sd = load_state_dict(out)
    sd["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    save_file(sd, str(out / "model.safetensors"))
    with pytest.raises(
        ConversionError, match=r"unmapped tensor 'transformer\.h\.0\.attn\.rotary\.weight'"
    ):
        import_hf(out, tmp_path / "a")
    del sd["transformer.h.0.attn.rotary.weight"]
    sd["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    save_file(sd, str(out / "model.safetensors"))
    with pytest.raises(
        ConversionError, match=r"shape mismatch for 'transformer\.h\.1\.mlp\.c_fc\.weight'"
    ):
        import_hf(out, tmp_path / "b")


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
    )
    with pytest.raises(
        ConversionError, match=r"'bert'.*supported model types: \['gpt2', 'llama'\]"
    ):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_missing_tokenizer_files_are_named(tmp_path: Path) -> None:
    _hf_model().save_pretrained(tmp_path / "hf")
    with pytest.raises(
        ConversionError, match=r"no tokenizer files.*tokenizer\.json.*vocab\.json \+ merges\.txt"
    ):
        import_hf(tmp_path / "hf", tmp_path / "out")
    import_hf(tmp_path / "hf", tmp_path / "out", tokenizer=False)
    assert not (tmp_path / "out" / "tokenizer").exists()


def test_nonzero_bias_is_not_dropped_silently(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = make_run_dir(tmp_path / "run", "debug", tokenizer_dir, bias=False, qkv_bias=False)
    export_hf(run, tmp_path / "hf")
    sd = load_state_dict(tmp_path / "hf")
    sd["transformer.h.1.mlp.c_fc.bias"] = torch.full_like(sd["transformer.h.1.mlp.c_fc.bias"], 0.1)
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ConversionError, match=r"'transformer\.h\.1\.mlp\.c_fc\.bias' is a non-zero bias"
    ):
        import_hf(tmp_path / "hf", tmp_path / "back")
