"""Transfer of GPT-2 / LLaMA weights into MM-Rec, checked against the real libraries' layouts."""

from __future__ import annotations

import json

import pytest
import torch
from gptforge.conversion.arch import (
    REPORT_FILE,
    convert_to_mmrec_dir,
    convert_weights,
    expand_kv_heads,
    mmrec_config_for_source,
    write_report,
)
from gptforge.conversion.arch_sources import detect_layout, load_source, split_qkv
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.meta_llama import llama_config_to_meta_params, ours_to_meta_llama
from gptforge.modeling import MMRec, build_model, get_config
from gptforge.modeling.io import load_model_dir, save_model_dir
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

D, HEADS, LAYERS, VOCAB = 32, 4, 2, 300


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random biases and norm gains, so a mixed-up bias or norm cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=D, n_layer=LAYERS, n_head=HEADS,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = _perturb(GPT2LMHeadModel(cfg), 1)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=88,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = _perturb(LlamaForCausalLM(cfg), 2)
    path = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(path)
    return model, path


def _convert(path, base="mmrec-debug", **overrides):
    _, analysis = load_source(path)
    torch.manual_seed(0)
    model = MMRec(mmrec_config_for_source(analysis, base=base, **overrides))
    state, report = convert_weights(path, model)
    model.load_state_dict(state)
    return model.eval(), report


def test_against_hf_gpt2_transfer_is_the_source_without_attention(hf_gpt2):
    hf, path = hf_gpt2
    model, report = _convert(path)
    src = report["source"]
    assert (src["layout"], src["family"], src["detected_from"]) == (
        "hf-gpt2", "gpt", "config.json (model_type)")  # fmt: skip
    assert (src["vocab_size"], src["n_embd"], src["n_layer"], src["n_head"]) == (VOCAB, D, 2, 4)
    assert src["ffn_hidden"] == 4 * D and src["n_params"] == hf.num_parameters()
    c_attn = hf.transformer.h[1].attn.c_attn
    att = model.h[1].mixer.mem_attn
    torch.testing.assert_close(att.q_proj.weight, c_attn.weight[:, :D].t(), atol=0, rtol=0)
    torch.testing.assert_close(att.k_proj.weight, c_attn.weight[:, D : 2 * D].t(), atol=0, rtol=0)
    torch.testing.assert_close(att.v_proj.bias, c_attn.bias[2 * D :], atol=0, rtol=0)
    torch.testing.assert_close(att.o_proj.weight, hf.transformer.h[1].attn.c_proj.weight.t())
    keys = report["keys"]
    assert keys["h.0.mixer.mem_attn.q_proj.weight"]["compat"] == "split"
    assert keys["h.0.mlp.c_fc.weight"]["compat"] == "transposed"
    assert keys["ln_f.weight"]["compat"] == "exact"
    assert keys["h.0.mixer.w_out.weight"]["compat"] == "none"
    assert report["unused_source"] == [] and report["shape_mismatches"] == []
    assert report["dropped_by_design"] == ["transformer.wpe.weight"]
    new = {e["key"] for e in report["new"]}
    assert {"h.0.mixer.w_z.weight", "h.1.mixer.memory.slots", "h.0.mixer.decay.fc2.bias"} <= new
    assert 0.5 < report["transferred_fraction"] < 1
    # The new mixer starts silent: logits equal HF GPT-2's with attention output and positions off.
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
        hf.transformer.wpe.weight.zero_()
        idx = torch.randint(0, VOCAB, (2, 20))
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)


def test_against_hf_llama_with_grouped_kv_heads(hf_llama):
    hf, path = hf_llama
    model, report = _convert(path)
    src = report["source"]
    assert (src["layout"], src["n_head"], src["n_kv_head"], src["ffn"]) == (
        "hf-llama", 4, 2, "swiglu")  # fmt: skip
    cfg = model.config
    assert (cfg.ffn, cfg.norm, cfg.bias, cfg.tie_embeddings) == ("swiglu", "rmsnorm", False, False)
    attn = hf.model.layers[0].self_attn
    mem = model.h[0].mixer.mem_attn
    torch.testing.assert_close(mem.q_proj.weight, attn.q_proj.weight, atol=0, rtol=0)
    hs = D // HEADS
    k_heads = mem.k_proj.weight.view(HEADS, hs, D)
    src_heads = attn.k_proj.weight.view(2, hs, D)
    for h in range(HEADS):  # query head h reads KV head h // 2, as GQA does
        torch.testing.assert_close(k_heads[h], src_heads[h // 2], atol=0, rtol=0)
    assert report["keys"]["h.0.mixer.mem_attn.k_proj.weight"]["compat"] == "partial"
    assert report["keys"]["h.0.mlp.gate_proj.weight"]["compat"] == "exact"
    assert "repeated to 4 heads" in report["keys"]["h.0.mixer.mem_attn.v_proj.weight"]["note"]
    # Repeating grouped heads loses nothing, so a matched target passes --strict.
    assert report["unused_source"] == [] and report["strict_problems"] == []
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
        idx = torch.randint(0, VOCAB, (2, 20))
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)


def test_expand_kv_heads_computes_grouped_attention():
    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 8)  # (B, nh, T, hs)
    k_w, v_w = torch.randn(2 * 8, 16), torch.randn(2 * 8, 16)  # 2 KV heads
    x = torch.randn(1, 5, 16)
    k = (x @ k_w.t()).view(1, 5, 2, 8).transpose(1, 2)
    v = (x @ v_w.t()).view(1, 5, 2, 8).transpose(1, 2)
    gqa = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    k4 = (x @ expand_kv_heads(k_w, 2, 4).t()).view(1, 5, 4, 8).transpose(1, 2)
    v4 = (x @ expand_kv_heads(v_w, 2, 4).t()).view(1, 5, 4, 8).transpose(1, 2)
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k4, v4), gqa)


def test_meta_llama_layout_reads_like_hf(tmp_path):
    torch.manual_seed(0)
    ours = build_model(get_config("llama-debug"))
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    torch.save(ours_to_meta_llama(ours.state_dict(), ours.config), meta_dir / "consolidated.00.pth")
    (meta_dir / "params.json").write_text(json.dumps(llama_config_to_meta_params(ours.config)))
    save_model_dir(ours, tmp_path / "ours")
    a, rep_meta = _convert(meta_dir)
    b, rep_ours = _convert(tmp_path / "ours")
    assert rep_meta["source"]["layout"] == "meta-llama"
    assert rep_meta["source"]["detected_from"] == "params.json"
    assert rep_ours["source"]["detected_from"] == "config.json (arch)"
    assert rep_meta["source"]["n_head"] == ours.config.n_head
    assert rep_meta["unused_source"] == [] and rep_ours["unused_source"] == []
    # Meta's q/k rows are RoPE-permuted within each head; the permutation cancels in q.k, so
    # the memory read (no RoPE) is the same from either layout.
    hn = torch.randn(2, 7, a.config.n_embd)
    ma, mb = a.h[1].mixer, b.h[1].mixer
    with torch.no_grad():
        read_a = ma.mem_attn(hn, ma.mem_attn.memory_kv(ma.memory()))
        read_b = mb.mem_attn(hn, mb.mem_attn.memory_kv(mb.memory()))
    torch.testing.assert_close(read_a, read_b, atol=1e-5, rtol=0)
    idx = torch.randint(0, a.config.vocab_size, (1, 9))
    torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_single_file_sources_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    gpt = _perturb(build_model(get_config("debug")), 3)
    sd = {k: v.contiguous() for k, v in gpt.state_dict().items() if k != "lm_head.weight"}
    f = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(sd, f)
    else:
        save_file(sd, f)
    _, analysis = load_source(f)  # no config beside it: detected from the keys
    assert analysis.layout == "gpt" and analysis.detected_from.startswith("keys")
    assert analysis.n_head is None and "head counts unknown" in analysis.notes[0]
    (tmp_path / "config.json").write_text(json.dumps({"arch": "gpt", **vars(gpt.config)}))
    out, report = convert_to_mmrec_dir(f, tmp_path / "mmrec", preset="mmrec-debug")
    assert report["source"]["n_head"] == gpt.config.n_head
    assert (out / REPORT_FILE).is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / REPORT_FILE).read_text())["converted"] == report["converted"]
    loaded = load_model_dir(out).eval()
    assert isinstance(loaded, MMRec)
    torch.testing.assert_close(loaded.wte.weight, gpt.wte.weight, atol=0, rtol=0)
    torch.testing.assert_close(
        loaded.h[1].mlp.c_proj.weight, gpt.h[1].mlp.c_proj.weight, atol=0, rtol=0
    )
    assert loaded.h[0].mixer.w_out.weight.abs().max() == 0
    with pytest.raises(ConversionError, match="already exists"):
        convert_to_mmrec_dir(f, out)


def test_telltale_keys_decide_without_config(hf_gpt2):
    hf, _ = hf_gpt2
    sd = hf.state_dict()
    assert detect_layout(sd)[0] == "hf-gpt2"
    bare = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    assert detect_layout(bare)[0] == "hf-gpt2"  # GPT2Model keys: Conv1D shape tells
    assert detect_layout({"layers.0.attention.wq.weight": torch.zeros(1)})[0] == "meta-llama"
    with pytest.raises(ConversionError, match="cannot tell the source family"):
        detect_layout({"encoder.layer.0.attention.self.query.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="model_type 'bert' is not supported"):
        detect_layout({}, {"model_type": "bert"})
    with pytest.raises(ConversionError, match="arch 'mmrec' cannot be transferred"):
        detect_layout({}, {"arch": "mmrec"})


def test_swiglu_never_goes_into_a_gelu_ffn(hf_llama):
    _, path = hf_llama
    model, report = _convert(path, ffn="gelu", ffn_hidden=None)
    unused = {e["key"]: e["reason"] for e in report["unused_source"]}
    assert "model.layers.0.mlp.gate_proj.weight" in unused
    assert "FFNs transfer only within a kind" in unused["model.layers.0.mlp.gate_proj.weight"]
    assert report["keys"]["h.0.mlp.c_fc.weight"]["source"] == []
    assert model.h[0].mlp.c_proj.weight.abs().max() == 0  # the new FFN starts silent
    with pytest.raises(ConversionError, match="--strict"):
        convert_weights(path, MMRec(model.config), strict=True)


def test_mismatched_dimensions_are_partial_or_refused(hf_gpt2):
    hf, path = hf_gpt2
    torch.manual_seed(0)
    cfg = get_config("mmrec-debug", vocab_size=320, n_embd=D, n_head=HEADS, ffn_hidden=96,
                     n_layer=3)  # fmt: skip
    state, report = convert_weights(path, MMRec(cfg))
    wte = state["wte.weight"]
    torch.testing.assert_close(wte[:VOCAB], hf.transformer.wte.weight, atol=0, rtol=0)
    torch.testing.assert_close(wte[VOCAB + 5], hf.transformer.wte.weight.mean(0))
    fc = state["h.0.mlp.c_fc.weight"]
    torch.testing.assert_close(fc, hf.transformer.h[0].mlp.c_fc.weight.t()[:96], atol=0, rtol=0)
    assert report["keys"]["h.0.mlp.c_fc.weight"]["compat"] == "partial"
    assert report["keys"]["wte.weight"]["compat"] == "partial"
    assert state["h.2.mlp.c_proj.weight"].abs().max() == 0  # a block the source lacks: silent
    actions = {m["target_key"]: m["action"] for m in report["shape_mismatches"]}
    assert actions["h.0.mlp.c_proj.weight"] == "partial: first 96 FFN hidden units"
    # A different model width cannot be transferred meaningfully: refused, and said so.
    state, report = convert_weights(path, MMRec(get_config("mmrec-debug", n_embd=48)))
    assert report["keys"]["h.0.mixer.mem_attn.q_proj.weight"]["compat"] == "none"
    assert any(m["target_key"] == "wte.weight" for m in report["shape_mismatches"])
    with pytest.raises(ConversionError, match=r"--strict: \d+ source tensor"):
        convert_weights(path, MMRec(get_config("mmrec-debug", n_embd=48)), strict=True)


def test_strict_passes_for_a_matched_target(hf_gpt2):
    _, path = hf_gpt2
    _, analysis = load_source(path)
    model = MMRec(mmrec_config_for_source(analysis, base="mmrec-debug"))
    _, report = convert_weights(path, model, strict=True)
    assert report["strict_problems"] == []


def test_report_goes_beside_never_over_weights(tmp_path):
    with pytest.raises(ConversionError, match="refusing to write the conversion report"):
        write_report({"a": 1}, tmp_path / "model.safetensors")
    p = write_report({"a": 1}, tmp_path / REPORT_FILE)
    assert json.loads(p.read_text()) == {"a": 1}


def test_split_qkv_checks_the_shape():
    q, k, v = split_qkv(torch.arange(12.0).view(6, 2), 2)
    assert q.tolist() == [[0, 1], [2, 3]] and v.tolist() == [[8, 9], [10, 11]]
    with pytest.raises(ConversionError, match="expected 3 \\* n_embd = 9"):
        split_qkv(torch.zeros(6, 2), 3)


def test_target_must_be_mmrec(hf_gpt2):
    with pytest.raises(ConversionError, match="target_model must be an MM-Rec model"):
        convert_weights(hf_gpt2[1], build_model(get_config("debug")))
