"""``gptforge eval``: perplexity and bits per byte, multiple-choice accuracy, exact match.

- Perplexity follows the sliding-window recipe of Hugging Face's perplexity guide: windows of
  ``max_length`` tokens every ``stride`` tokens, each scoring only the tokens the previous window
  did not, so every token after the first is predicted once with up to ``max_length - stride``
  tokens of context. (The guide subtracts one token per window from its count; here the count
  is exact, so the number is the mean NLL over precisely the predicted tokens.) Bits per byte
  divide the summed NLL (in bits) by the UTF-8 bytes of those tokens, so models with different
  tokenizers compare.
- Multiple choice scores each choice by the log-likelihood of its tokens after the context
  (tokenized the way lm-evaluation-harness does) and reports ``acc`` (raw sum) and ``acc_norm``
  (divided by the choice's length in characters).
- Exact match is the fine-tune's held-out metric (:func:`gptforge.training.instruct.exact_match`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from gptforge.modeling.protocol import LanguageModel


def _check_window(
    model: LanguageModel, max_length: int | None, stride: int | None
) -> tuple[int, int]:
    config: Any = model.config
    block = int(config.block_size)
    max_length = max_length or block
    if not 2 <= max_length <= block:
        raise ValueError(
            f"--max-length {max_length} must be in [2, {block}] (the model's context); "
            f"pass --max-length {block} or less"
        )
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise ValueError(f"--stride {stride} must be in [1, --max-length {max_length}]")
    return max_length, stride


@torch.no_grad()
def sliding_window_nll(
    model: LanguageModel,
    ids: Sequence[int] | torch.Tensor,
    *,
    max_length: int | None = None,
    stride: int | None = None,
) -> tuple[float, torch.Tensor]:
    """Summed next-token NLL (nats) and a (N,) bool mask of the tokens it scored (every token
    but the first when ``stride < max_length``; windows that do not overlap score none of
    their first tokens, as in the guide).

    Args:
        model: ``forward(idx) -> (logits, loss)``.
        ids: The token stream (at least two tokens).
        max_length: Window length (default: the model's context).
        stride: Distance between window starts (default: half the window).

    >>> nll, n = sliding_window_nll(model, ids, max_length=256, stride=128)  # doctest: +SKIP
    """
    max_length, stride = _check_window(model, max_length, stride)
    device = next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel()
    if n < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {n}")
    was_training = model.training
    model.eval()
    total, prev_end = 0.0, 0
    scored = torch.zeros(n, dtype=torch.bool)
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        x = ids[begin : end - 1].to(device)[None]  # (1, T)
        y = ids[begin + 1 : end].clone().to(device)  # (T,): y[k] is token begin + 1 + k
        first = max(0, prev_end - begin - 1)
        y[:first] = -100  # tokens an earlier window already scored
        scored[begin + 1 + first : end] = True
        logits, _ = model(x)  # (1, T, V)
        assert logits is not None
        total += float(F.cross_entropy(logits[0].float(), y, ignore_index=-100, reduction="sum"))
        prev_end = end
        if end == n:
            break
    model.train(was_training)
    return total, scored


def perplexity_report(
    model: LanguageModel,
    tokenizer: Any,
    ids: Sequence[int],
    *,
    max_length: int | None = None,
    stride: int | None = None,
) -> dict[str, Any]:
    """``{"perplexity", "bits_per_byte", "nll", "tokens", "bytes", "max_length", "stride"}``."""
    max_length, stride = _check_window(model, max_length, stride)
    nll, scored = sliding_window_nll(model, ids, max_length=max_length, stride=stride)
    count = int(scored.sum())
    n_bytes = len(tokenizer.decode_bytes(torch.as_tensor(ids)[scored].tolist()))
    return {
        "perplexity": math.exp(nll / count),
        "bits_per_byte": nll / math.log(2) / max(1, n_bytes),
        "nll": nll / count,
        "tokens": count,
        "bytes": n_bytes,
        "max_length": max_length,
        "stride": stride,
    }


def text_token_ids(
    tokenizer: Any,
    source: str | Path | None = None,
    *,
    dataset: str | None = None,
    split: str = "test",
    field: str = "text",
    max_tokens: int | None = None,
) -> list[int]:
    """Token ids of a text source: documents joined by blank lines (as the perplexity guide
    joins WikiText), read from files/directories/.jsonl (``source``) or a ``datasets`` split.

    Args:
        tokenizer: Encodes the text (special-token text stays plain text).
        source: Anything :func:`gptforge.corpus.iter_documents` reads.
        dataset: A ``datasets`` name, ``NAME`` or ``NAME:CONFIG`` (instead of ``source``).
        split: The ``datasets`` split.
        field: Text field of records.
        max_tokens: Keep the first this many tokens.
    """
    if (source is None) == (dataset is None):
        raise ValueError("pass exactly one of --text PATH, --dataset NAME[:CONFIG]")
    if dataset is not None:
        import datasets

        name, _, config = dataset.partition(":")
        try:
            rows = datasets.load_dataset(name, config or None, split=split)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line
            raise ValueError(
                f"cannot load dataset {dataset!r} split {split!r} ({type(exc).__name__}: {exc}); "
                "check the name, --split, and the network or HF_DATASETS_OFFLINE cache"
            ) from exc
        if field not in rows.column_names:
            raise ValueError(f"dataset {dataset!r} has no field {field!r}: {rows.column_names}")
        docs: Any = (row[field] for row in rows)
    else:
        from gptforge.corpus import iter_documents

        assert source is not None  # checked above
        docs = iter_documents(source, field=field)
    text = "\n\n".join(d for d in docs if d)
    ids = tokenizer.encode(text, disallowed_special=())
    return ids[:max_tokens] if max_tokens else ids


def prepared_token_ids(
    data_dir: str | Path, tokenizer: Any, *, split: str = "val", max_tokens: int | None = None
) -> list[int]:
    """Token ids of a prepared data split (``gptforge data prepare``), checked against the
    model's tokenizer."""
    import numpy as np
    from gptforge.training.data import DataError, TokenShards

    shards = TokenShards(data_dir, split)
    expect = shards.meta.get("tokenizer_fingerprint")
    if expect and expect != tokenizer.fingerprint:
        raise DataError(
            f"{str(data_dir)!r} was prepared with another tokenizer than the model's "
            f"(fingerprint {expect[:12]} vs {tokenizer.fingerprint[:12]}); prepare the data "
            "with the model's tokenizer/ directory"
        )
    parts = []
    left = max_tokens if max_tokens else math.inf
    for shard in shards.shards:
        take = shard[: int(min(left, len(shard)))]
        parts.append(np.asarray(take, dtype=np.int64))
        left -= len(take)
        if left <= 0:
            break
    return np.concatenate(parts).tolist() if parts else []


# ---- log-likelihood of continuations ---------------------------------------------------------
def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-evaluation-harness splits them: trailing spaces of
    the context move to the continuation, and the continuation is what encoding the whole adds."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation, disallowed_special=())
    ctx = tokenizer.encode(context, disallowed_special=())
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def continuation_logprobs(
    model: LanguageModel, requests: Sequence[tuple[list[int], list[int]]]
) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), whether greedy decoding gives it)`` per request.

    Long inputs keep their last ``block_size + 1`` tokens (the continuation is never cut).
    """
    config: Any = model.config
    block = int(config.block_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation encodes to no tokens; give every choice some text")
        whole = (ctx + cont)[-(block + 1) :]
        x = torch.tensor(whole[:-1], device=device)[None]  # (1, T)
        logits, _ = model(x)  # (1, T, V)
        assert logits is not None
        logp = F.log_softmax(logits[0, -len(cont) :].float(), dim=-1)  # (n, V)
        target = torch.tensor(cont, device=device)
        score = float(logp.gather(1, target[:, None]).sum())
        out.append((score, bool((logp.argmax(-1) == target).all())))
    model.train(was_training)
    return out


def read_choice_records(path: str | Path) -> list[dict[str, Any]]:
    """Multiple-choice records of a ``.jsonl``: ``context`` (or ``query``/``question``),
    ``choices`` (a list of strings) and ``label`` (the index of the right one)."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        context = next((row[k] for k in ("context", "query", "question") if k in row), None)
        choices, label = row.get("choices"), row.get("label")
        if (
            not isinstance(context, str)
            or not isinstance(choices, list)
            or not all(isinstance(c, str) for c in choices)
            or not isinstance(label, int)
            or not 0 <= label < len(choices)
        ):
            raise ValueError(
                f"{path}:{lineno} needs 'context' (str), 'choices' (list of str) and 'label' "
                f"(an index into choices); got {line[:200]!r}"
            )
        rows.append({"context": context, "choices": choices, "label": label})
    if not rows:
        raise ValueError(f"{path} holds no multiple-choice records")
    return rows


def multiple_choice(
    model: LanguageModel, tokenizer: Any, records: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """``{"acc", "acc_norm", "total"}``: argmax of the summed log-likelihood, and of it
    divided by each choice's length in characters (lm-evaluation-harness's ``acc_norm``)."""
    hits = hits_norm = 0
    for rec in records:
        ctx = rec["context"] or tokenizer.decode([tokenizer.eot_token])
        pairs = [encode_pair(tokenizer, ctx, choice) for choice in rec["choices"]]
        scores = [s for s, _ in continuation_logprobs(model, pairs)]
        norm = [s / max(1, len(c)) for s, c in zip(scores, rec["choices"], strict=True)]
        hits += max(range(len(scores)), key=scores.__getitem__) == rec["label"]
        hits_norm += max(range(len(norm)), key=norm.__getitem__) == rec["label"]
    n = len(records)
    return {"acc": hits / n, "acc_norm": hits_norm / n, "total": n}


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned two-column table."""
    lines = []
    for section, values in report.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, float):
                value = f"{value:.4f}"
            elif isinstance(value, dict):
                value = ", ".join(f"{k}={v:.2f}" for k, v in value.items())
            lines.append(f"{section:<16} {key:<14} {value}")
    return "\n".join(lines)


def held_out_records(run_dir: str | Path) -> tuple[list[dict[str, str]], str]:
    """The records a fine-tune scored exact match on, and its template (from
    ``train_config.json``), so ``gptforge eval`` reproduces the fine-tune's number."""
    from gptforge.training.config import FinetuneConfig
    from gptforge.training.finetune import split_records
    from gptforge.training.instruct import read_records
    from gptforge.training.tasks import generate_tasks

    path = Path(run_dir) / "train_config.json"
    if not path.is_file():  # a checkpoint of the run: its manifest holds the same two fields
        path = Path(run_dir) / "manifest.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("kind") != "finetune":
        raise ValueError(
            f"{str(run_dir)!r} is not a `gptforge finetune` run (no finetune train_config.json); "
            "pass --instructions FILE.jsonl to score exact match on your own records"
        )
    cfg = cast(FinetuneConfig, FinetuneConfig.from_dict(saved["config"]))
    records = (
        read_records(cfg.data)
        if cfg.data
        else generate_tasks(cfg.num_examples, seed=cfg.seed, tasks=cfg.task_names)
    )
    if cfg.max_samples is not None:  # as finetune cut them, before the split
        records = records[: cfg.max_samples]
    _, held_out = split_records(records, cfg.val_fraction, cfg.seed)
    return held_out[: cfg.eval_examples], cfg.template


def evaluate_checkpoint(
    ckpt: str | Path,
    *,
    text: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    field: str = "text",
    max_length: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    choices: str | None = None,
    exact_match: bool = False,
    instructions: str | None = None,
    template: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """One report over every evaluation asked for (see :mod:`gptforge.training.evaluation`).

    Args:
        ckpt: A run/model directory (a LoRA run too) or a Hugging Face directory.
        text: Text file(s) for perplexity (anything ``gptforge.corpus`` reads).
        data: A prepared data directory for perplexity (its ``split``, default ``val``).
        dataset: A ``datasets`` name (``NAME`` or ``NAME:CONFIG``; split default ``test``).
        split: Split of ``data`` or ``dataset``.
        field: Text field of records.
        max_length: Perplexity window (default: the model's context).
        stride: Perplexity stride (default: half the window).
        max_tokens: Score at most this many tokens.
        choices: Multiple-choice ``.jsonl`` (context, choices, label).
        exact_match: Score instruction exact match (the fine-tune's held-out records unless
            ``instructions`` is given).
        instructions: Alpaca-style ``.jsonl`` for exact match.
        template: Template for exact match (default: the run's).
        device: Where the model runs.

    >>> evaluate_checkpoint("runs/demo/finetune", text="notes.txt", exact_match=True)  # doctest: +SKIP
    """
    from gptforge.conversion import load_any
    from gptforge.training.instruct import exact_match as score_exact_match
    from gptforge.training.instruct import read_records

    if not (text or data or dataset or choices or exact_match or instructions):
        raise ValueError(
            "nothing to evaluate: pass --text, --data, --dataset, --choices, --exact-match "
            "or --instructions"
        )
    model, tokenizer, _ = load_any(ckpt, device=device, dtype=torch.float32, require_tokenizer=True)
    report: dict[str, Any] = {"model": {"ckpt": str(ckpt)}}
    window = {"max_length": max_length, "stride": stride}
    for name, given in (("text", text), ("data", data), ("dataset", dataset)):
        if not given:
            continue
        if name == "data":
            ids = prepared_token_ids(given, tokenizer, split=split or "val", max_tokens=max_tokens)
        elif name == "text":
            ids = text_token_ids(tokenizer, given, field=field, max_tokens=max_tokens)
        else:
            ids = text_token_ids(
                tokenizer, dataset=given, split=split or "test", field=field, max_tokens=max_tokens
            )
        report[f"perplexity:{name}"] = perplexity_report(model, tokenizer, ids, **window)
    if choices:
        report["multiple_choice"] = multiple_choice(model, tokenizer, read_choice_records(choices))
    if exact_match or instructions:
        if instructions:
            records, saved_template = read_records(instructions), "inst"
            chat = Path(ckpt) / "chat.json"
            if chat.is_file():
                saved_template = json.loads(chat.read_text()).get("template", "inst")
        else:
            records, saved_template = held_out_records(ckpt)
        report["exact_match"] = score_exact_match(
            model, tokenizer, records, template or saved_template
        )
    return report
