"""nanoGPT checkpoints and the LLMs-from-scratch book's GPTModel, against reference models.

Both reference models are written here from their published architecture (nanoGPT's model.py;
the book's chapter 4 GPTModel), given random weights, saved the way their users save them, and
imported; the imported model must give the reference's logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gptforge.conversion import ConversionError, export_hf, import_pytorch, load_any
from gptforge.conversion.arch_sources import load_source
from torch import nn

from tests.conversion.conftest import randomize

ATOL = 1e-5


# --- nanoGPT's model.py, reduced to what the weights and the forward need -------------------
class NanoLayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool) -> None:
        super().__init__()
        self.ln_1 = NanoLayerNorm(n_embd, bias)
        self.attn = NanoAttention(n_embd, n_head, bias)
        self.ln_2 = NanoLayerNorm(n_embd, bias)
        self.mlp = nn.Sequential()
        self.mlp.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp.gelu = nn.GELU()
        self.mlp.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                 n_embd: int, bias: bool) -> None:  # fmt: skip
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList(NanoBlock(n_embd, n_head, bias) for _ in range(n_layer)),
                ln_f=NanoLayerNorm(n_embd, bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.size(1)))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


# --- the book's GPTModel (chapter 4) -----------------------------------------------------------
class BookLayerNorm(nn.Module):
    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class BookMHA(nn.Module):
    def __init__(self, d: int, context_length: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d // num_heads
        self.W_query = nn.Linear(d, d, bias=qkv_bias)
        self.W_key = nn.Linear(d, d, bias=qkv_bias)
        self.W_value = nn.Linear(d, d, bias=qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            w(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for w in (self.W_query, self.W_key, self.W_value)
        )
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(self.mask.bool()[:n, :n], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).contiguous().view(b, n, d))


class BookBlock(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d = cfg["emb_dim"]
        self.att = BookMHA(d, cfg["context_length"], cfg["n_heads"], cfg["qkv_bias"])
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(d, 4 * d), BookGELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = BookLayerNorm(d), BookLayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class BookGPTModel(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.trf_blocks = nn.Sequential(*[BookBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = BookLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.size(1)))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def _logits(model: nn.Module, idx: torch.Tensor, vocab: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return (out if isinstance(out, torch.Tensor) else out[0])[..., :vocab]


IDX = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
NANO_ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=True, vocab_size=300)


def _nano(bias: bool = True) -> NanoGPT:
    torch.manual_seed(0)
    args = {**NANO_ARGS, "bias": bias}
    return randomize(NanoGPT(**{k: v for k, v in args.items() if k != "dropout"}))


def _nano_ckpt(path: Path, model: NanoGPT, compiled: bool = True) -> Path:
    """What nanoGPT's train.py saves (``_orig_mod.`` keys when the model was compiled)."""
    prefix = "_orig_mod." if compiled else ""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(IDX).sum().backward()
    opt.step()
    opt.zero_grad()
    torch.save(
        {
            "model": {prefix + k: v for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "model_args": {**NANO_ARGS, "dropout": 0.0},
            "iter_num": 5000,
            "best_val_loss": torch.tensor(1.47),
            "config": {"dataset": "shakespeare_char", "batch_size": 12, "compile": compiled},
        },
        path,
    )
    return path


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_ckpt_imports_with_the_reference_logits(tmp_path: Path, bias: bool) -> None:
    ref = _nano(bias)
    ckpt = _nano_ckpt(tmp_path / "ckpt.pt", ref)
    want = _logits(ref, IDX, 300)
    out = import_pytorch(ckpt, tmp_path / "run")
    model, tok, info = load_any(out)
    assert info.layout == "ours" and tok is None
    assert model.config.tie_embeddings and model.config.gelu_approximate == "none"
    torch.testing.assert_close(_logits(model, IDX, 300), want, atol=ATOL, rtol=0)
    direct, _, info = load_any(ckpt)  # the .pt file itself, straight into memory
    assert info.layout == "weights"
    torch.testing.assert_close(_logits(direct, IDX, 300), want, atol=ATOL, rtol=0)


def test_nanogpt_import_exports_to_hugging_face(tmp_path: Path, tokenizer_dir: Path) -> None:
    ref = _nano()
    ckpt = _nano_ckpt(tmp_path / "best_model.pt", ref)
    out = import_pytorch(ckpt, tmp_path / "run", tokenizer_dir=tokenizer_dir)
    hf = export_hf(out, tmp_path / "hf")
    model, tok, info = load_any(hf)
    assert info.layout == "hf" and tok is not None
    torch.testing.assert_close(_logits(model, IDX, 300), _logits(ref, IDX, 300), atol=ATOL, rtol=0)


def test_bare_transformer_prefixed_state_dict_needs_and_takes_n_head(tmp_path: Path) -> None:
    ref = _nano()
    path = tmp_path / "sd.pt"
    torch.save(ref.state_dict(), path)  # transformer.* keys, no model_args
    with pytest.raises(ConversionError, match=r"--n-head"):
        import_pytorch(path, tmp_path / "run")
    model, _, _ = load_any(path, n_head=4)
    torch.testing.assert_close(_logits(model, IDX, 300), _logits(ref, IDX, 300), atol=ATOL, rtol=0)


def test_nanogpt_keys_are_not_taken_for_hf_layout_by_convert_arch(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(_nano().state_dict(), path)
    sd, analysis = load_source(path)
    assert analysis.layout == "gpt" and analysis.n_layer == 2 and analysis.n_embd == 32
    assert "h.0.attn.c_attn.weight" in sd


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_book_gptmodel_imports_with_the_reference_logits(tmp_path: Path, qkv_bias: bool) -> None:
    cfg = dict(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
               drop_rate=0.1, qkv_bias=qkv_bias)  # fmt: skip
    torch.manual_seed(0)
    ref = randomize(BookGPTModel(cfg))
    path = tmp_path / "model.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(ConversionError, match=r"GPT_CONFIG_124M uses 12"):
        import_pytorch(path, tmp_path / "nohead")
    out = import_pytorch(path, tmp_path / "run", n_head=4)
    model, _, _ = load_any(out)
    assert model.config.qkv_bias is qkv_bias and not model.config.tie_embeddings
    torch.testing.assert_close(_logits(model, IDX, 300), _logits(ref, IDX, 300), atol=ATOL, rtol=0)


def test_unreadable_file_names_the_formats_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_bytes(b"this is not a checkpoint at all\n" * 4)
    with pytest.raises(ConversionError, match=r"notes\.pt.*safetensors.*nanoGPT.*GGUF"):
        import_pytorch(path, tmp_path / "run")


def test_foreign_state_dict_names_what_it_expected(tmp_path: Path) -> None:
    path = tmp_path / "bert.pt"
    torch.save({"encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConversionError, match=r"neither a nanoGPT checkpoint.*book's GPTModel"):
        import_pytorch(path, tmp_path / "run")
