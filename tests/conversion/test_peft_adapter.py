"""LoRA adapters: PEFT opens what we write and computes our logits; merging keeps them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gptforge.conversion import export_hf
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.peft_adapter import load_adapter, merge_adapter, save_adapter
from gptforge.modeling.io import load_model_dir
from gptforge.modeling.lora import LoraConfig, add_trainable_tokens, apply_lora, lora_modules

from tests.conversion.conftest import make_run_dir

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CASES = [("debug", {}), ("llama-debug", {}), ("llama-debug", {"tie_embeddings": True})]


def _adapted(base_dir: Path, targets: tuple[str, ...], tokens: bool = False) -> torch.nn.Module:
    model = load_model_dir(base_dir)
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=targets))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero; give it values so the update shows
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)
        if tokens:  # rows of a template's special tokens, trained to values of their own
            vocab = model.config.vocab_size
            rows = add_trainable_tokens(model, [vocab - 1, 3, vocab - 2]).token_rows
            rows.copy_(torch.randn(rows.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize(("preset", "overrides"), CASES)
@pytest.mark.parametrize(
    ("targets", "tokens"),
    [(("attn", "mlp", "head"), False), (("attn",), False), (("attn", "mlp", "head"), True),
     (("attn",), True)],
)  # fmt: skip
def test_peft_loads_our_adapter_with_equal_logits(
    tmp_path: Path,
    tokenizer_dir: Path,
    preset: str,
    overrides: dict,
    targets: tuple[str, ...],
    tokens: bool,
) -> None:
    base = make_run_dir(tmp_path / "base", preset, tokenizer_dir, **overrides)
    model = _adapted(base, targets, tokens)
    adapter = save_adapter(model, tmp_path / "adapter", base=str(tmp_path / "hf"))
    hf_dir = export_hf(base, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, adapter).eval()
    idx = torch.randint(
        0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = peft_model(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), peft_model.disable_adapter():
        base_logits = peft_model(idx).logits
    assert (base_logits - ours).abs().max() > 1e-3  # the adapter changes the output


@pytest.mark.parametrize(("preset", "overrides"), CASES)
@pytest.mark.parametrize(
    ("targets", "tokens"),
    [(("attn", "mlp", "head"), False), (("attn", "mlp", "head"), True), (("mlp",), True)],
)
def test_merge_adapter_keeps_logits_and_exports(
    tmp_path: Path,
    tokenizer_dir: Path,
    preset: str,
    overrides: dict,
    targets: tuple[str, ...],
    tokens: bool,
) -> None:
    base = make_run_dir(tmp_path / "base", preset, tokenizer_dir, **overrides)
    model = _adapted(base, targets, tokens)
    save_adapter(model, tmp_path / "adapter")
    merged = merge_adapter(base, tmp_path / "adapter", tmp_path / "merged")
    idx = torch.randint(
        0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        ours, _ = model(idx)
        got, _ = load_model_dir(merged).eval()(idx)
    torch.testing.assert_close(got, ours, atol=1e-5, rtol=1e-5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        export_hf(merged, tmp_path / "hf"), dtype=torch.float32
    )
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours, atol=1e-5, rtol=1e-5)


def test_adapter_from_another_base_is_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    base = make_run_dir(tmp_path / "base", "debug", tokenizer_dir)
    save_adapter(_adapted(base, ("attn",)), tmp_path / "adapter")
    other = make_run_dir(tmp_path / "other", "debug", tokenizer_dir, n_embd=32, n_head=2)
    with pytest.raises(ValueError, match="do not fit"):
        load_adapter(load_model_dir(other), tmp_path / "adapter")


def test_converting_an_unmerged_lora_run_points_to_merge_lora(tmp_path):
    import pytest
    from gptforge.conversion import ConversionError, detect_layout

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConversionError, match="convert merge-lora --run"):
        detect_layout(tmp_path)


def test_token_rows_for_another_vocabulary_are_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    base = make_run_dir(tmp_path / "base", "debug", tokenizer_dir)
    save_adapter(_adapted(base, ("attn",), tokens=True), tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["trainable_token_indices"] = {"wte": [3, 4, 10**6]}  # past the vocabulary
    config_file.write_text(json.dumps(config))
    model = load_model_dir(base)
    with pytest.raises(ConversionError, match="another base"):
        load_adapter(model, tmp_path / "adapter")
