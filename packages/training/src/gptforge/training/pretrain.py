"""Pre-training on prepared token shards: ``gptforge train`` (under ``torchrun``: ``-m gptforge.cli train``)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from gptforge.modeling.protocol import LanguageModel
from gptforge.training.checkpoint import CheckpointManager
from gptforge.training.config import TrainConfig
from gptforge.training.data import (
    DataError,
    TokenShards,
    TokenWindows,
    check_resume_data,
    read_meta,
)
from gptforge.training.distributed import DistInfo, init_distributed, shutdown
from gptforge.training.loop import (
    Callback,
    LoopResult,
    resolve_device,
    train_loop,
    uses_fsdp,
)
from gptforge.training.shape import describe
from gptforge.training.textgen import sample_text

TRAIN_CONFIG = "train_config.json"


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``train_config.json`` of a run (``{"kind": ..., "config": {...}}``)."""
    path = Path(run_dir) / TRAIN_CONFIG
    if not path.exists():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a run directory (no {TRAIN_CONFIG}); --resume takes the "
            "--out directory of an earlier `gptforge train` or `gptforge finetune`"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {"kind": saved["kind"], "config": dict(saved["config"])}
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{str(path)!r} is unreadable ({type(exc).__name__}: {exc}); it was probably cut off "
            "by a crash. Restore it from the newest checkpoint's manifest.json ('config' field) "
            "or start a new run with --init-from"
        ) from None


def save_run_config(run_dir: Path, kind: str, config: Any) -> None:
    """Write ``train_config.json`` atomically (what ``--resume`` reads back)."""
    from gptforge.training.io import atomic_write_text

    payload = {"kind": kind, "config": config.to_dict()}
    atomic_write_text(run_dir / TRAIN_CONFIG, json.dumps(payload, indent=2) + "\n")


def check_fresh_run_dir(run_dir: Path) -> None:
    """Refuse to start a fresh run over an earlier one's checkpoints."""
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step_*")):
        raise FileExistsError(
            f"{str(run_dir)!r} already holds checkpoints; continue it with --resume "
            f"{run_dir} or choose a new --out"
        )


def model_config(cfg: TrainConfig, vocab_size: int) -> Any:
    """The model config of ``cfg.preset`` / ``cfg.config`` with the vocabulary and overrides."""
    from gptforge.training.shape import model_config as shape_config

    mcfg = shape_config(cfg, vocab_size)
    if cfg.arch is not None and mcfg.arch != cfg.arch:
        raise ValueError(
            f"{describe(cfg)} is a {mcfg.arch!r} model, not --arch {cfg.arch!r}; drop --arch "
            "(the architecture follows from the preset or config)"
        )
    return mcfg


def load_init_model(directory: str | Path, device: torch.device) -> Any:
    """The model of any directory gptforge can load (run, HF/OpenAI/Meta import, MM-Rec)."""
    from gptforge.conversion.loading import load_any

    model = load_any(directory, device=device, dtype=torch.float32)[0]
    return model.train()


def start_run_dir(run_dir: Path, kind: str, cfg: Any, *, resume: bool) -> None:
    """Rank 0: refuse to start over an earlier run, create ``run_dir`` and write its config."""
    if not resume:
        check_fresh_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir, kind, cfg)


def _data_tokenizer(cfg: TrainConfig, meta: dict[str, Any]) -> tuple[Any, Path]:
    """The tokenizer the data was prepared with, and its directory; another one is refused."""
    from gptforge.tokenizer import Tokenizer

    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else Path(cfg.data) / "tokenizer"
    if not tok_dir.is_dir():
        raise DataError(
            f"no tokenizer directory at {str(tok_dir)!r}; pass --tokenizer DIR (the one the "
            "data was prepared with)"
        )
    tokenizer = Tokenizer.from_dir(tok_dir)
    if meta["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise DataError(
            f"data {cfg.data!r} was prepared with tokenizer fingerprint "
            f"{meta['tokenizer_fingerprint'][:16]}..., but the tokenizer {str(tok_dir)!r} "
            f"has {tokenizer.fingerprint[:16]}...; prepare the data again with this "
            "tokenizer (gptforge data prepare) or pass the matching --tokenizer"
        )
    return tokenizer, tok_dir


def _checked_init_model(
    init_from: str, cfg: TrainConfig, n_vocab: int, device: torch.device
) -> Any:
    """The ``--init-from`` model, refused when the data's vocabulary or the context do not fit."""
    init_model = load_init_model(init_from, device)
    mcfg = init_model.config
    if n_vocab > mcfg.vocab_size:
        raise DataError(
            f"--init-from {init_from!r} has {mcfg.vocab_size} token embeddings, "
            f"the data's tokenizer {n_vocab}; prepare the data with that "
            f"model's tokenizer (gptforge data prepare --tokenizer {init_from})"
        )
    if (cfg.context_length or 0) > mcfg.block_size:
        raise ValueError(
            f"--context-length {cfg.context_length} exceeds the context {mcfg.block_size} "
            f"of --init-from {init_from!r}; pass --context-length {mcfg.block_size}"
        )
    return init_model


def _windows(
    cfg: TrainConfig, vocab_size: int, context: int, *, resume: bool
) -> tuple[TokenWindows, TokenWindows | None]:
    """Training and validation windows of the token shards (no validation without tokens)."""
    if resume:
        saved = CheckpointManager(cfg.out).list()
        check_resume_data(cfg.data, saved[-1].manifest.get("data_checksum") if saved else None)
    train_shards = TokenShards(cfg.data, "train")
    val_shards = TokenShards(cfg.data, "val")
    for shards in (train_shards, val_shards):
        shards.check_vocab(vocab_size)
    train_data = TokenWindows(train_shards, context, cfg.stride)
    val_data = TokenWindows(val_shards, context, context) if val_shards.num_tokens else None
    if len(train_data) == 0:
        raise DataError(
            f"{train_shards.num_tokens} training tokens cannot fill one window of "
            f"{context + 1} tokens; use more data or a smaller --context-length"
        )
    return train_data, val_data


def _place_model(
    cfg: TrainConfig, info: DistInfo, device: torch.device, mcfg: Any, init_model: Any
) -> Any:
    """The model to train, seeded. Under FSDP rank 0 initialises the whole model on the CPU and
    the others only describe it on the meta device; the loop shards it and hands out rank 0's
    weights."""
    from gptforge.modeling import build_model

    torch.manual_seed(cfg.seed)
    where = device
    if uses_fsdp(cfg, info):
        where = torch.device("cpu") if info.is_main else torch.device("meta")
    if init_model is not None:
        return init_model.to(where) if where.type != "meta" else init_model.to("meta")
    with torch.device(where):
        return build_model(mcfg)


def _save_model(model: torch.nn.Module, directory: Path, *, tok_dir: Path) -> None:
    from gptforge.modeling.io import save_model_dir

    save_model_dir(cast(LanguageModel, model), directory, tokenizer_dir=tok_dir)


def _sample(model: torch.nn.Module, *, tokenizer: Any, cfg: TrainConfig) -> str:
    return sample_text(  # the loop hands over a module; it is one of ours
        cast(LanguageModel, model),
        tokenizer,
        cfg.sample_prompt,
        max_new_tokens=cfg.sample_tokens,
        seed=cfg.seed,
    )


def pretrain(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> LoopResult:
    """Pre-train ``cfg.arch``/``cfg.preset`` on ``cfg.data`` into the run directory ``cfg.out``.

    The run directory is a model directory at the top (``config.json``, ``model.safetensors``,
    ``tokenizer/``: the latest weights) plus ``checkpoints/``, ``metrics.jsonl``, ``plots/`` and
    ``train_config.json``.

    Args:
        cfg: Training settings.
        resume: Continue from the newest usable checkpoint in ``cfg.out`` (bit-exact on CPU).
        callbacks: ``cb(step, model, row)`` after every step.

    Raises:
        DataError: The data was prepared with another tokenizer or holds out-of-vocabulary ids.

    >>> pretrain(TrainConfig(preset="debug", data="runs/data", out="runs/x", max_steps=20))  # doctest: +SKIP
    """
    info = init_distributed(cfg.device)
    try:
        device = resolve_device(cfg.device, info)
        meta = read_meta(cfg.data)
        tokenizer, tok_dir = _data_tokenizer(cfg, meta)
        init_model = None
        if cfg.init_from:
            init_model = _checked_init_model(cfg.init_from, cfg, tokenizer.n_vocab, device)
            mcfg = init_model.config
            context = int(cfg.context_length or mcfg.block_size)
        else:
            mcfg = model_config(cfg, tokenizer.n_vocab)
            context = mcfg.block_size
        train_data, val_data = _windows(cfg, mcfg.vocab_size, context, resume=resume)
        if info.is_main:
            start_run_dir(Path(cfg.out), "pretrain", cfg, resume=resume)
        model = _place_model(cfg, info, device, mcfg, init_model)
        if info.is_main:
            n = model.num_params()
            source = f"--init-from {cfg.init_from}" if cfg.init_from else describe(cfg)
            print(
                f"model {mcfg.arch} from {source}: {n / 1e6:.2f}M parameters, context {context}, "
                f"{len(train_data)} training windows, device {device}"
            )
        manifest = {
            "kind": "pretrain",
            "config": cfg.to_dict(),
            "model_config": json.loads(json.dumps(vars(mcfg))),
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "tokenizer_dir": str(tok_dir),
            "data_checksum": meta.get("checksum"),
        }
        return train_loop(
            cfg,
            model,
            train_data,
            val_data,
            info=info,
            device=device,
            resume=resume,
            save_model=functools.partial(_save_model, tok_dir=tok_dir),
            manifest=manifest,
            sample=functools.partial(_sample, tokenizer=tokenizer, cfg=cfg),
            callbacks=callbacks,
        )
    finally:
        shutdown(info)
