"""The five working stages of ``gptforge demo``, each a thin call of a package's Python API.

1. ``tokenizer``: train a byte-level BPE on the corpus (:mod:`gptforge.tokenizer`);
2. ``pretrain``: tokenize the corpus into shards and pre-train the preset with the default recipe
   (:mod:`gptforge.training`), then sample from it (:mod:`gptforge.sampling`);
3. ``finetune``: instruction fine-tuning on the generated task set, held-out exact match before
   and after;
4. ``export``: Hugging Face directory (loaded back by ``transformers``, logits compared) and GGUF
   (read back by ``gguf``) (:mod:`gptforge.conversion`);
5. ``serve``: both gRPC services as ``gptforge serve ...`` subprocesses, called through their
   clients (:mod:`gptforge.services`), stopped with SIGTERM (see :mod:`gptforge.demo.serve`).

Heavy imports (torch, transformers, grpc) happen inside the stage functions.
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptforge.demo.pipeline import Stage, StageContext
from gptforge.demo.serve import serve_stage

SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog. Ünïcödé 🙂 works too."
SAMPLE_PROMPT = "The"
#: The held-out-style instruction shown after fine-tuning and streamed through the service.
DEMO_INSTRUCTION = {"instruction": "Count the words.", "input": "file key word", "output": "3"}
#: Largest difference allowed between our logits and transformers' on the exported model (fp32).
HF_LOGITS_ATOL = 1e-3
#: Largest difference allowed between the GGUF embedding read back and ours (f16 storage).
GGUF_ATOL = 2e-3
#: Vocabulary sizes for the demo's tokenizer per preset (smaller than the preset's own: a
#: 400 KB corpus does not support 50k merges, and a small head keeps CPU training fast).
DEMO_VOCAB = {"debug": 512, "tiny": 4096, "llama-debug": 512, "llama-tiny": 4096}
#: Pre-training steps per preset chosen so that the whole demo fits 10 minutes on 2 CPU cores
#: (``--steps`` overrides); presets not listed use the training recipe's default.
DEMO_STEPS = {"debug": 300, "tiny": 200}
#: Fine-tuning steps per preset (hidden option ``--finetune-steps`` overrides).
DEMO_FINETUNE_STEPS = {"debug": 200, "tiny": 500}


@dataclass
class DemoSettings:
    """Everything the demo's stages depend on.

    Args:
        run_dir: The run folder that receives every output.
        preset: Model preset (``tiny``, ``debug``, ``llama-tiny``, ...).
        data: Corpus source for the tokenizer and pre-training (``default``: the embedded corpus).
        steps: Pre-training steps (``None``: the demo's choice for the preset).
        finetune_steps: Fine-tuning steps (``None``: the demo's choice for the preset).
        vocab_size: Tokenizer vocabulary (``None``: the demo's choice for the preset).
        eval_examples: Held-out instructions scored before and after fine-tuning.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: Seed of training and sampling.
        shape: Model config file and field overrides on top of the preset
            (:class:`gptforge.training.ModelShape` fields: ``config``, ``n_layer``, ...).
    """

    run_dir: Path
    preset: str = "tiny"
    data: str = "default"
    steps: int | None = None
    finetune_steps: int | None = None
    vocab_size: int | None = None
    eval_examples: int = 100
    device: str = "auto"
    seed: int = 1337
    shape: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "finetune_steps", "vocab_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"{name} must be >= 1, got {value!r}; drop it or pass a positive number"
                )
        if self.eval_examples < 1:
            raise ValueError(f"eval_examples must be >= 1, got {self.eval_examples!r}")

    def resolved(self) -> dict[str, Any]:
        """Concrete values (preset defaults filled in) of every setting a stage records."""
        from gptforge.training import FinetuneConfig, TrainConfig
        from gptforge.training.config import ModelShape
        from gptforge.training.shape import model_config

        # Raises with the list of valid presets, or naming a bad override.
        mcfg = model_config(ModelShape(preset=self.preset, **self.shape))
        return {
            "arch": mcfg.arch,
            "preset": self.preset,
            "shape": dict(self.shape),
            "data": self.data,
            "vocab_size": self.vocab_size
            or DEMO_VOCAB.get(self.preset, min(mcfg.vocab_size, 8192)),
            "steps": self.steps or DEMO_STEPS.get(self.preset, TrainConfig.max_steps),
            "finetune_steps": self.finetune_steps
            or DEMO_FINETUNE_STEPS.get(self.preset, FinetuneConfig.max_steps),
            "eval_examples": self.eval_examples,
            "device": self.device,
            "seed": self.seed,
        }

    def stage_settings(self) -> dict[str, dict[str, Any]]:
        """Per stage, the settings recorded in its marker (a change means the stage is stale)."""
        r = self.resolved()
        return {
            "tokenizer": {k: r[k] for k in ("data", "vocab_size")},
            # The shape joins the record only when given, so earlier run folders stay current.
            "pretrain": {
                k: r[k]
                for k in ("arch", "preset", "shape", "data", "steps", "seed", "device")
                if k != "shape" or r[k]
            },
            "finetune": {k: r[k] for k in ("finetune_steps", "eval_examples", "seed", "device")},
            "export": {},
            "serve": {},
        }


def _progress() -> bool:
    return sys.stderr.isatty()


def tokenizer_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the BPE tokenizer on the corpus and save it to ``tokenizer/``."""
    from gptforge.tokenizer import Tokenizer

    s = ctx.settings
    out = ctx.run_dir / "tokenizer"
    ctx.log(f"training a {s['vocab_size']}-token byte-level BPE on {s['data']!r}")
    tok = Tokenizer.train(s["data"], vocab_size=s["vocab_size"], show_progress=_progress())
    tok.save(out)
    ids = tok.encode(SAMPLE_TEXT)
    if tok.decode(ids) != SAMPLE_TEXT:
        raise RuntimeError(
            f"the tokenizer does not round-trip {SAMPLE_TEXT!r}: {tok.decode(ids)!r}"
        )
    return {
        "dir": str(out),
        "n_vocab": tok.n_vocab,
        "merges": len(tok.merges),
        "fingerprint": tok.fingerprint[:16],
        "sample_text": SAMPLE_TEXT,
        "sample_tokens": len(ids),
        "bytes_per_token": round(len(SAMPLE_TEXT.encode("utf-8")) / len(ids), 2),
    }


def _prepare(ctx: StageContext, tok_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Prepared shards in ``data_dir``: reused when they match the tokenizer, else rebuilt."""
    import json

    from gptforge.tokenizer import Tokenizer
    from gptforge.training.prepare import prepare_data

    meta_path = data_dir / "meta.json"
    fingerprint = Tokenizer.from_dir(tok_dir).fingerprint
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("tokenizer_fingerprint") == fingerprint:
            ctx.log(f"reusing the prepared data in {data_dir}")
            return meta
    shutil.rmtree(data_dir, ignore_errors=True)
    ctx.log(f"tokenizing {ctx.settings['data']!r} into {data_dir}")
    return prepare_data(ctx.settings["data"], str(tok_dir), str(data_dir), progress=_progress())


def _has_checkpoints(run: Path) -> bool:
    return (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*"))


def _sample(model_dir: Path, prompt: str, seed: int, max_new_tokens: int = 40) -> str:
    """A sampled continuation of ``prompt`` (temperature 0.8, top-k 50) via gptforge.sampling."""
    from gptforge.conversion import load_any
    from gptforge.sampling import SamplingParams, stream_generate

    model: Any
    model, tok, _ = load_any(model_dir, require_tokenizer=True)
    ids = tok.encode(prompt) or [tok.eot_token]
    room = max(1, min(max_new_tokens, int(model.config.block_size) - len(ids)))
    params = SamplingParams(max_new_tokens=room, temperature=0.8, top_k=50, seed=seed)
    text = "".join(ev.text for ev in stream_generate(model, ids, params, tokenizer=tok))
    return prompt + text


def _first_train_loss(metrics: Path) -> float | None:
    from gptforge.training.metrics import read_metrics

    rows = [r for r in read_metrics(metrics) if r.get("kind") == "train"]
    return rows[0]["loss"] if rows else None


def pretrain_stage(ctx: StageContext) -> dict[str, Any]:
    """Prepare the data and pre-train the preset; resumes from a checkpoint left by a failure."""
    from gptforge.training import TrainConfig
    from gptforge.training.pretrain import pretrain

    s = ctx.settings
    tok_dir, data_dir, run = (
        ctx.run_dir / "tokenizer",
        ctx.run_dir / "data",
        ctx.run_dir / "pretrain",
    )
    meta = _prepare(ctx, tok_dir, data_dir)
    splits = meta["splits"]
    ctx.log(
        f"{meta['documents']} documents -> {splits['train']['tokens']:,} train + "
        f"{splits['val']['tokens']:,} validation tokens"
    )
    resume = _has_checkpoints(run)
    if not resume:
        shutil.rmtree(run, ignore_errors=True)  # a partial run without a checkpoint
    cfg = TrainConfig(
        arch=s["arch"],
        preset=s["preset"],
        **s.get("shape", {}),
        data=str(data_dir),
        out=str(run),
        max_steps=s["steps"],
        eval_interval=max(1, s["steps"] // 4),
        checkpoint_interval=max(1, s["steps"] // 4),
        device=s["device"],
        seed=s["seed"],
        progress=_progress(),
    )
    ctx.log(
        f"{'resuming' if resume else 'pre-training'} {s['preset']} for {s['steps']} steps into {run}"
    )
    loop = pretrain(cfg, resume=resume)
    from gptforge.modeling.io import read_config

    mcfg = read_config(run)
    return {
        "data_dir": str(data_dir),
        "documents": meta["documents"],
        "train_tokens": splits["train"]["tokens"],
        "val_tokens": splits["val"]["tokens"],
        "run_dir": str(run),
        "context": int(mcfg.block_size),
        "vocab_size": int(mcfg.vocab_size),
        "steps": loop.step,
        "tokens_seen": loop.tokens,
        "first_train_loss": _first_train_loss(run / "metrics.jsonl"),
        "train_loss": loop.train_loss,
        "val_loss": loop.val_loss,
        "uniform_loss": round(math.log(int(mcfg.vocab_size)), 4),
        "train_seconds": round(loop.seconds, 1),
        "tokens_per_second": round(loop.tokens / max(loop.seconds, 1e-9)),
        "loss_png": str(run / "plots" / "loss.png"),
        "sample": _sample(run, SAMPLE_PROMPT, s["seed"]),
    }


def finetune_stage(ctx: StageContext) -> dict[str, Any]:
    """Instruction-fine-tune the pre-trained model; held-out exact match before and after."""
    import json

    from gptforge.sampling.chat import ChatModel
    from gptforge.training import FinetuneConfig
    from gptforge.training.finetune import finetune

    s = ctx.settings
    src, run = ctx.run_dir / "pretrain", ctx.run_dir / "finetune"
    resume = _has_checkpoints(run)
    if not resume:
        shutil.rmtree(run, ignore_errors=True)
    cfg = FinetuneConfig(
        from_run=str(src),
        out=str(run),
        max_steps=s["finetune_steps"],
        eval_examples=s["eval_examples"],
        eval_interval=max(1, s["finetune_steps"] // 2),
        checkpoint_interval=max(1, s["finetune_steps"] // 2),
        device=s["device"],
        seed=s["seed"],
        progress=_progress(),
    )
    ctx.log(
        f"{'resuming' if resume else 'fine-tuning'} on the generated instruction set for "
        f"{s['finetune_steps']} steps into {run}"
    )
    result = finetune(cfg, resume=resume)
    before = result.before
    chat_file = run / "chat.json"
    if before is None and chat_file.is_file():  # resumed: an earlier attempt may have scored it
        before = json.loads(chat_file.read_text()).get("before")
    bot = ChatModel(run)
    answer = bot.respond(
        DEMO_INSTRUCTION["instruction"], DEMO_INSTRUCTION["input"], max_new_tokens=16
    )
    after = result.after
    assert after is not None, "a single-process fine-tune always scores"
    return {
        "run_dir": str(run),
        "steps": result.loop.step,
        "train_loss": result.loop.train_loss,
        "val_loss": result.loop.val_loss,
        "accuracy_before": before["accuracy"] if before else None,
        "accuracy_after": after["accuracy"],
        "held_out": after["total"],
        "per_task_before": before["per_task"] if before else {},
        "per_task_after": after["per_task"],
        "train_seconds": round(result.loop.seconds, 1),
        "example": {**DEMO_INSTRUCTION, "answer": answer},
    }


def _gguf_field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


def _check_hf(src: Path, hf_dir: Path) -> dict[str, Any]:
    """Load the export with transformers; compare logits and token ids with ours."""
    import torch
    from gptforge.conversion import load_any
    from gptforge.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tok = Tokenizer.from_dir(src / "tokenizer")
    ours: Any = load_any(src, dtype=torch.float32)[0].eval()
    hf_logging.disable_progress_bar()
    theirs = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = tok.encode(SAMPLE_TEXT)[: int(ours.config.block_size)]
    x = torch.tensor([ids])  # (1, T)
    with torch.no_grad():
        want, _ = ours(x)  # (1, T, V)
        got = theirs(x).logits  # (1, T, V)
    if got.shape != want.shape:
        raise RuntimeError(
            f"transformers logits have shape {tuple(got.shape)}, ours {tuple(want.shape)}"
        )
    diff = float((got - want).abs().max())
    if not diff <= HF_LOGITS_ATOL:
        raise RuntimeError(
            f"transformers' logits differ from ours by {diff:.3g} (> {HF_LOGITS_ATOL}) on the "
            f"exported model in {hf_dir}; the HF export is wrong (gptforge.conversion.export_hf)"
        )
    hf_ids = AutoTokenizer.from_pretrained(hf_dir)(SAMPLE_TEXT)["input_ids"]
    if hf_ids != tok.encode(SAMPLE_TEXT):
        raise RuntimeError(
            f"AutoTokenizer encodes {SAMPLE_TEXT!r} as {hf_ids}, ours as {tok.encode(SAMPLE_TEXT)}"
        )
    return {"hf_class": type(theirs).__name__, "max_logit_diff": diff, "tokens_compared": len(ids)}


def _check_gguf(src: Path, path: Path) -> dict[str, Any]:
    """Read the GGUF back with gguf's reader; compare metadata and the token embedding."""
    import gguf
    import numpy as np
    import torch
    from gptforge.conversion import load_any
    from torch import nn

    model: Any = load_any(src, dtype=torch.float32)[0]
    cfg = model.config
    reader = gguf.GGUFReader(path)
    arch = _gguf_field(reader, "general.architecture")
    n_layer = getattr(cfg, "n_layer", None)
    if n_layer is not None and _gguf_field(reader, f"{arch}.block_count") != n_layer:
        raise RuntimeError(
            f"GGUF {path} has {_gguf_field(reader, f'{arch}.block_count')} blocks, ours {n_layer}"
        )
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    if len(tokens) != cfg.vocab_size:
        raise RuntimeError(f"GGUF {path} has {len(tokens)} tokens, our model {cfg.vocab_size}")
    tensors = {t.name: t for t in reader.tensors}
    emb = tensors["token_embd.weight"]
    got = np.asarray(gguf.quants.dequantize(emb.data, emb.tensor_type), dtype=np.float32)
    got = got.reshape([int(d) for d in reversed(emb.shape)])  # (V, C)
    table = next(
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.num_embeddings >= cfg.vocab_size
    )
    want = table.weight.detach()[: cfg.vocab_size].numpy()  # (V, C)
    diff = float(np.abs(got - want).max())
    if not diff <= GGUF_ATOL:
        raise RuntimeError(
            f"GGUF token_embd differs from ours by {diff:.3g} (> {GGUF_ATOL}) in {path}"
        )
    return {
        "gguf_arch": arch,
        "gguf_tensors": len(tensors),
        "gguf_tokens": len(tokens),
        "gguf_embd_max_diff": diff,
        "gguf_mb": round(path.stat().st_size / 2**20, 2),
    }


def export_stage(ctx: StageContext) -> dict[str, Any]:
    """Export the fine-tuned model to HF and GGUF and read both back."""
    from gptforge.conversion import export_hf
    from gptforge.conversion.gguf_export import export_gguf
    from gptforge.modeling.io import read_config

    src = ctx.run_dir / "finetune"
    arch = read_config(src).arch
    if arch not in ("gpt", "llama"):
        ctx.log(f"no Hugging Face or GGUF format exists for arch {arch!r}; skipping the export")
        return {"skipped": f"no HF/GGUF format for arch {arch!r}"}
    hf_dir = ctx.run_dir / "export" / "hf"
    ctx.log(f"exporting {src} to Hugging Face format in {hf_dir}")
    export_hf(src, hf_dir, force=True)
    result: dict[str, Any] = {"hf_dir": str(hf_dir), **_check_hf(src, hf_dir)}
    gguf_path = ctx.run_dir / "export" / "gguf" / "model.gguf"
    ctx.log(f"exporting {src} to GGUF (f16) in {gguf_path}")
    export_gguf(src, gguf_path, dtype="f16", force=True, name="gptforge-demo")
    result.update({"gguf": str(gguf_path), **_check_gguf(src, gguf_path)})
    modelfile = gguf_path.parent / "Modelfile"
    if modelfile.exists():
        result["modelfile"] = str(modelfile)
    return result


def build_stages() -> list[Stage]:
    """The demo's stages in order."""
    return [
        Stage("tokenizer", "Tokenizer: byte-level BPE", ("tokenizer",), tokenizer_stage),
        Stage(
            "pretrain",
            "Pre-training",
            ("data", "pretrain"),
            pretrain_stage,
            resume_hint="Training resumes from its last checkpoint in pretrain/checkpoints/.",
        ),
        Stage(
            "finetune",
            "Instruction fine-tuning",
            ("finetune",),
            finetune_stage,
            resume_hint="Fine-tuning resumes from its last checkpoint in finetune/checkpoints/.",
        ),
        Stage("export", "Export: Hugging Face + GGUF", ("export",), export_stage),
        Stage("serve", "gRPC services", ("serve",), serve_stage),
    ]
