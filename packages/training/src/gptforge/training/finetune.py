"""Instruction fine-tuning: ``gptforge finetune --from RUN_DIR --out RUN_DIR2``."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from gptforge.conversion.peft_adapter import save_adapter
from gptforge.modeling.lora import add_trainable_tokens, apply_lora, merge_lora
from gptforge.modeling.protocol import LanguageModel
from gptforge.sampling.templates import SPECIAL_TOKENS, encode_record
from gptforge.training.checkpoint import CheckpointManager
from gptforge.training.config import FinetuneConfig
from gptforge.training.distributed import DistInfo, init_distributed, shutdown
from gptforge.training.instruct import (
    InstructionDataset,
    exact_match,
    read_records_with_origin,
    truncate_example,
)
from gptforge.training.io import atomic_write_text
from gptforge.training.loop import (
    Callback,
    LoopResult,
    resolve_device,
    train_loop,
    uses_fsdp,
)
from gptforge.training.pretrain import start_run_dir
from gptforge.training.tasks import generate_tasks

CHAT_FILE = "chat.json"
BASE_DIR = "base"  # a LoRA run's frozen base model (grown by the template's special tokens)
T = TypeVar("T")


@dataclass
class FinetuneResult:
    """The loop result plus held-out exact-match accuracy before and after fine-tuning."""

    loop: LoopResult
    before: dict[str, Any] | None
    after: dict[str, Any] | None  # None on FSDP ranks other than 0


def split_records(records: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Deterministic shuffle, then ``(train, held_out)`` with ``val_fraction`` held out."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(val_fraction * len(records))))
    if n_val >= len(records):
        raise ValueError(
            f"{len(records)} records leave nothing to train on with val_fraction={val_fraction}"
        )
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def _check_lora_model(cfg: FinetuneConfig, model: torch.nn.Module) -> None:
    """Refuse a family without Hugging Face layer names (PEFT's layout needs them), and LoRA
    targets that leave an untied head unable to emit the template's tokens."""
    arch = getattr(model.config, "arch", None)
    if arch not in ("gpt", "llama"):
        raise ValueError(
            f"--lora-rank supports the gpt and llama families (adapters in PEFT's layout need "
            f"Hugging Face layer names); this model is {arch!r}: fine-tune it without --lora-rank"
        )
    emb = model.get_submodule(getattr(model, "token_embedding_name", "wte"))
    head = cast(Any, model).lm_head
    tied = head.weight is emb.weight
    if cfg.template == "inst" and not tied and "head" not in cfg.lora_config().targets:
        raise ValueError(
            f"--lora-targets {cfg.lora_targets} leaves this model's untied head frozen, so its "
            "new rows for the template's tokens stay equal and it cannot learn to end an "
            "answer; add head (--lora-targets attn,mlp,head) or use --template alpaca"
        )


def _trains_token_rows(cfg: FinetuneConfig, *, resume: bool) -> bool:
    """Whether the ``inst`` template's token rows train: always in a new run; on resume as
    the newest readable checkpoint did (a run whose checkpoints hold no rows goes on without)."""
    from safetensors import safe_open

    if cfg.template != "inst":
        return False
    if not resume:
        return True
    for info in reversed(CheckpointManager(cfg.out, warn=lambda _: None).list()):
        try:
            with safe_open(str(info.path / "model.safetensors"), "pt") as weights:
                return any(key.endswith(".token_rows") for key in weights.keys())  # noqa: SIM118
        except Exception:  # unreadable: resume falls back past it, and so does this
            continue
    return True


def _add_adapters(
    model: torch.nn.Module,
    cfg: FinetuneConfig,
    tokenizer: Any,
    *,
    write_base: bool,
    resume: bool,
) -> None:
    """Freeze ``model`` and add the LoRA adapters of ``cfg`` (seeded, so every rank and a
    resumed run start from the same ones); rank 0 of a fresh run saves the base first.

    With the ``inst`` template the rows of its special tokens train too: the base never saw
    those tokens, and adapters on linear layers cannot move their embedding rows (a model
    adapted on attn,mlp alone never learns to emit ``</RESP>``)."""
    from gptforge.modeling.io import save_model_dir

    token_rows = _trains_token_rows(cfg, resume=resume)
    run_dir = Path(cfg.out)
    if write_base:
        save_model_dir(model, run_dir / BASE_DIR, tokenizer_dir=run_dir / "tokenizer")
    torch.manual_seed(cfg.seed)
    names = apply_lora(model, cfg.lora_config())
    rows = ""
    if token_rows:
        add_trainable_tokens(model, [tokenizer.special_tokens[t] for t in SPECIAL_TOKENS])
        rows = f" (with the embedding rows of {', '.join(SPECIAL_TOKENS)})"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"LoRA: {len(names)} layers adapted, {trainable:,} trainable parameters{rows}")


def fit_examples(
    items: Sequence[tuple[dict[str, str], str]],
    split: str,
    cfg: FinetuneConfig,
    tokenizer: Any,
    block: int,
) -> list[tuple[list[int], list[int]]]:
    """Encode ``(record, origin)`` pairs; an over-long one is refused, truncated or skipped."""
    limit = min(cfg.max_length, block + 1)
    out, cut, skipped = [], 0, 0
    for record, origin in items:
        prompt, response = encode_record(record, cfg.template, tokenizer)
        n = len(prompt) + len(response)
        if n <= limit:
            out.append((prompt, response))
        elif cfg.truncate:
            out.append(truncate_example(prompt, response, limit))
            cut += 1
        elif cfg.skip_long:
            skipped += 1
        else:
            if cfg.max_length >= block + 1:
                hint = (
                    f"the model's context ({block} tokens + 1) is the limit, so --max-length "
                    "cannot help: shorten the record, or pass --truncate or --skip-long"
                )
            else:
                hint = f"raise --max-length (up to {block + 1}), or pass --truncate or --skip-long"
            raise ValueError(
                f"{origin} ({split} split) renders to {n} tokens, over the limit {limit} "
                f"(min of --max-length {cfg.max_length} and context {block} + 1); {hint}"
            )
    if cut or skipped:
        what = f"truncated {cut}" if cut else f"skipped {skipped}"
        print(f"{split}: {what} of {len(items)} records longer than {limit} tokens")
    if not out:
        raise ValueError(f"no {split} record fits {limit} tokens; pass --truncate instead")
    return out


def _load_model(
    cfg: FinetuneConfig, info: DistInfo, device: torch.device, *, resume: bool
) -> tuple[Any, Any]:
    """The model of ``cfg.from_run`` and its tokenizer, grown by the template's special tokens."""
    from gptforge.conversion import load_any
    from gptforge.modeling import build_model
    from gptforge.modeling.io import read_config
    from gptforge.tokenizer import Tokenizer

    src = Path(cfg.from_run)
    if uses_fsdp(cfg, info):
        # Rank 0 loads the model on the CPU, the others describe it on the meta device;
        # the loop shards it and hands out rank 0's weights (as pretrain does).
        tokenizer = Tokenizer.from_dir(src / "tokenizer")
        if info.is_main:
            model: Any = load_any(src, device="cpu", dtype=torch.float32)[0]
        else:
            with torch.device("meta"):
                model = build_model(read_config(src))
    else:
        # Any checkpoint load_any reads (a run, a checkpoint, an HF or GGUF import) with the
        # tokenizer it carries or sits beside.
        model, tokenizer, _ = load_any(
            src, device=device, dtype=torch.float32, require_tokenizer=True
        )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    if tokenizer.n_vocab > model.config.vocab_size:
        model.resize_token_embeddings(tokenizer.n_vocab)
    if cfg.lora_rank and uses_fsdp(cfg, info):
        raise ValueError(
            "--lora-rank with --parallel fsdp is not supported (the frozen base would be "
            "sharded for a few trainable adapters); use --parallel ddp, which replicates "
            "the base and all-reduces only the adapters' gradients"
        )
    if cfg.lora_rank and not resume:  # a resumed run goes on as it began
        _check_lora_model(cfg, model)
    model.train()
    return model, tokenizer


def _split_items(
    cfg: FinetuneConfig,
) -> tuple[list[tuple[dict[str, str], str]], list[tuple[dict[str, str], str]]]:
    """``(record, origin)`` pairs of ``cfg.data`` (or generated tasks): ``(train, held_out)``."""
    if cfg.data:
        records, origins = read_records_with_origin(cfg.data)
    else:
        records = generate_tasks(cfg.num_examples, seed=cfg.seed, tasks=cfg.task_names)
        origins = [f"generated record {i}" for i in range(len(records))]
    if cfg.max_samples is not None:
        records, origins = records[: cfg.max_samples], origins[: cfg.max_samples]
    return split_records(list(zip(records, origins, strict=True)), cfg.val_fraction, cfg.seed)


def _save_model(m: torch.nn.Module, directory: Path, *, cfg: FinetuneConfig) -> None:
    """The run's model directory: the adapter beside ``base/`` with LoRA, else the model."""
    from gptforge.modeling.io import save_model_dir

    run_dir = Path(cfg.out)
    if cfg.lora_rank:
        save_adapter(m, directory, base=str(run_dir / BASE_DIR))
    else:
        save_model_dir(cast(LanguageModel, m), directory, tokenizer_dir=run_dir / "tokenizer")


def _sample(
    m: torch.nn.Module, *, tokenizer: Any, scored: list[dict[str, str]], template: str
) -> str:
    """The first held-out record and whether the model answers it exactly (the loop's sample)."""
    got = exact_match(cast(LanguageModel, m), tokenizer, scored[:1], template)
    return f"{scored[0]['instruction']} {scored[0].get('input', '')} -> exact={got['correct']}"


def _report(
    cfg: FinetuneConfig,
    model: Any,
    tokenizer: Any,
    before: dict[str, Any] | None,
    after: dict[str, Any],
) -> None:
    """Rank 0: print the accuracy, merge the adapters if asked, and write ``chat.json``."""
    from gptforge.modeling.io import save_model_dir

    run_dir = Path(cfg.out)
    print(f"held-out exact match after fine-tuning: {after['accuracy']:.1%} {after['per_task']}")
    if cfg.merge:
        save_model_dir(merge_lora(model), run_dir, tokenizer_dir=run_dir / "tokenizer")
    chat = {"template": cfg.template, "before": before, "after": after}
    if before is None and (run_dir / CHAT_FILE).exists():
        chat["before"] = json.loads((run_dir / CHAT_FILE).read_text()).get("before")
    atomic_write_text(run_dir / CHAT_FILE, json.dumps(chat, indent=2) + "\n")


def finetune(
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """Fine-tune the model of ``cfg.from_run`` on instruction records into ``cfg.out``.

    Adds ``<INST> </INST> <RESP> </RESP>`` to the tokenizer, grows the embedding and LM head
    (new rows = mean of old rows, ties kept), trains with the loss on response tokens only, and
    scores held-out exact match before and after. The output is a run directory like
    ``gptforge train`` writes, plus ``chat.json`` (template and accuracies) for ``gptforge chat``.

    >>> finetune(FinetuneConfig(from_run="runs/demo/pretrain", out="runs/demo/sft"))  # doctest: +SKIP
    """
    info = init_distributed(cfg.device)
    try:
        device = resolve_device(cfg.device, info)
        run_dir = Path(cfg.out)
        model, tokenizer = _load_model(cfg, info, device, resume=resume)
        block = int(model.config.block_size)
        train_items, held_items = _split_items(cfg)
        encoded = {
            name: InstructionDataset(
                fit_examples(items, name, cfg, tokenizer, block), pad_id=tokenizer.eot_token
            )
            for name, items in (("train", train_items), ("val", held_items))
        }
        scored = [r for r, _ in held_items][: cfg.eval_examples]
        tok_dir = run_dir / "tokenizer"
        if info.is_main:
            start_run_dir(run_dir, "finetune", cfg, resume=resume)
            tokenizer.save(tok_dir)
        before = None
        if not resume and info.is_main:
            before = exact_match(model, tokenizer, scored, cfg.template)
            print(
                f"held-out exact match before fine-tuning: {before['accuracy']:.1%} {before['per_task']}"
            )
        if cfg.lora_rank:
            _add_adapters(
                model, cfg, tokenizer, write_base=info.is_main and not resume, resume=resume
            )
        loop = train_loop(
            cfg,
            model,
            encoded["train"],
            encoded["val"],
            info=info,
            device=device,
            resume=resume,
            save_model=functools.partial(_save_model, cfg=cfg),
            manifest={
                "kind": "finetune",
                "config": cfg.to_dict(),
                "tokenizer_fingerprint": tokenizer.fingerprint,
            },
            sample=functools.partial(
                _sample, tokenizer=tokenizer, scored=scored, template=cfg.template
            ),
            callbacks=callbacks,
        )
        if uses_fsdp(cfg, info):
            # Rank 0's model came back whole and trained (on the CPU); the others hold none.
            if not info.is_main:
                return FinetuneResult(loop, before, None)
            model.to(device)
        after = exact_match(model, tokenizer, scored, cfg.template)
        if info.is_main:
            _report(cfg, model, tokenizer, before, after)
        return FinetuneResult(loop, before, after)
    finally:
        shutdown(info)
