"""OpenAI's GPT-2 release layout: a TF checkpoint written here, read without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gptforge.conversion import ConversionError, import_openai, load_any
from gptforge.conversion.tf_checkpoint import TFCheckpoint
from gptforge.modeling.io import load_model_dir
from gptforge.tokenizer import Tokenizer

from .conftest import randomize, write_gpt2_files
from .tf_bundle import write_tf_checkpoint

transformers = pytest.importorskip("transformers")

N_LAYER = 2
DATA = Path(__file__).parent / "data"


def _write_openai_dir(path: Path, hf: transformers.GPT2LMHeadModel, tokenizer_dir: Path) -> None:
    """What OpenAI's download script leaves in models/124M, for a tiny model."""
    path.mkdir()
    c = hf.config
    hparams = {
        "n_vocab": c.vocab_size,
        "n_ctx": c.n_positions,
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "n_layer": c.n_layer,
    }
    (path / "hparams.json").write_text(json.dumps(hparams))
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    tensors = {"model/wte": sd["transformer.wte.weight"], "model/wpe": sd["transformer.wpe.weight"]}
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            tensors[f"model/h{i}/{ln}/g"] = sd[p + ln + ".weight"]
            tensors[f"model/h{i}/{ln}/b"] = sd[p + ln + ".bias"]
        for proj in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            hf_name = p + proj.replace("/", ".")
            tensors[f"model/h{i}/{proj}/w"] = sd[hf_name + ".weight"][
                None
            ]  # (1, in, out) conv kernel
            tensors[f"model/h{i}/{proj}/b"] = sd[hf_name + ".bias"]
    tensors["model/ln_f/g"] = sd["transformer.ln_f.weight"]
    tensors["model/ln_f/b"] = sd["transformer.ln_f.bias"]
    write_tf_checkpoint(path / "model.ckpt", tensors)
    write_gpt2_files(tokenizer_dir, path, ("encoder.json", "vocab.bpe"))


@pytest.fixture()
def openai_dir(tmp_path: Path, tokenizer_dir: Path) -> tuple[Path, transformers.GPT2LMHeadModel]:
    cfg = transformers.GPT2Config(
        vocab_size=300, n_positions=32, n_embd=32, n_layer=N_LAYER, n_head=4
    )
    torch.manual_seed(3)
    hf = randomize(transformers.GPT2LMHeadModel(cfg))
    _write_openai_dir(tmp_path / "124M", hf, tokenizer_dir)
    return tmp_path / "124M", hf


def test_tf_checkpoint_reader_reads_every_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        f"layer_{i:03d}/kernel": rng.standard_normal((3, i + 1)).astype(np.float32)
        for i in range(60)
    }
    tensors["global_step"] = np.array(7, dtype=np.int64)
    tensors["half"] = rng.standard_normal((5,)).astype(np.float16)
    write_tf_checkpoint(tmp_path / "model.ckpt", tensors)
    ckpt = TFCheckpoint(tmp_path)  # a directory with one *.index resolves to its prefix
    assert set(ckpt.keys()) == set(tensors)  # spans several 4 KiB index blocks
    for name, value in tensors.items():
        got = ckpt.read(name, verify=True)
        assert got.shape == value.shape and np.array_equal(got.numpy(), value), name


def test_tf_checkpoint_reader_reads_a_real_tensorflow_checkpoint() -> None:
    """data/tf2_saver was written by TensorFlow 2.21's tf.compat.v1.train.Saver (5 KB)."""
    ckpt = TFCheckpoint(DATA / "tf2_saver" / "model.ckpt")
    want = {
        f"model/h{i}/attn/c_attn/w": np.arange(48, dtype=np.float32).reshape(1, 4, 12) * 0.01 + i
        for i in range(20)
    }
    want["model/wte"] = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)
    want["model/ln_f/g"] = np.arange(4, dtype=np.float16)
    want["global_step"] = np.array(1234, dtype=np.int64)
    assert set(ckpt.keys()) == set(want)
    for name, value in want.items():
        got = ckpt.read(name, verify=True).numpy()
        assert got.dtype == value.dtype and np.array_equal(got, value), name


def test_tf_checkpoint_reader_detects_corruption(tmp_path: Path) -> None:
    write_tf_checkpoint(tmp_path / "model.ckpt", {"w": np.ones((4, 4), np.float32)})
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ConversionError, match="'w': CRC32C mismatch"):
        TFCheckpoint(tmp_path / "model.ckpt").read("w", verify=True)
    index = tmp_path / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[3] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(ConversionError, match="checksum mismatch"):
        TFCheckpoint(tmp_path / "model.ckpt")


def test_from_openai_matches_transformers(tmp_path: Path, openai_dir, tokenizer: Tokenizer) -> None:
    src, hf = openai_dir
    import_openai(src, tmp_path / "ours")
    ours = load_model_dir(tmp_path / "ours")
    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)
    tok = Tokenizer.from_dir(tmp_path / "ours" / "tokenizer")
    text = "Converting checkpoints 🙂 ünïcödé<|endoftext|>"
    assert tok.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")
    model, tok2, _ = load_any(src)  # the same directory straight into memory
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)
    assert tok2 is not None and tok2.n_vocab == tokenizer.n_vocab


def test_from_openai_names_missing_tensor(tmp_path: Path, openai_dir) -> None:
    src, _ = openai_dir
    hp = json.loads((src / "hparams.json").read_text())
    hp["n_layer"] = N_LAYER + 1
    (src / "hparams.json").write_text(json.dumps(hp))
    with pytest.raises(ConversionError, match=r"no tensor for 'h\.2\.ln_1\.weight'"):
        import_openai(src, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()
