"""Instruction records, the response-only-loss dataset and exact-match scoring.

The templates that render a record live in :mod:`gptforge.sampling.templates` (chat uses them
too); they are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from gptforge.modeling.protocol import LanguageModel
from gptforge.sampling.templates import encode_record, stop_ids


def read_records(path: str | Path) -> list[dict[str, str]]:
    """Alpaca-style records of a ``.jsonl`` (or a ``.json`` list) file, checked field by field."""
    return read_records_with_origin(path)[0]


def read_records_with_origin(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """:func:`read_records` plus where each record is (``file.jsonl:LINE``) for error messages."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        origins = [f"{path} record {i}" for i in range(len(rows))]
    else:
        rows, origins = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno} is not valid JSON ({exc})") from exc
                origins.append(f"{path}:{lineno}")
    for row, origin in zip(rows, origins, strict=True):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("instruction"), str)
            or not isinstance(row.get("output"), str)
        ):
            raise ValueError(
                f"{origin} needs string fields 'instruction' and 'output' "
                f"(and optionally 'input'); got {row!r:.200}"
            )
    if not rows:
        raise ValueError(f"{path} holds no records")
    return rows, origins


def truncate_example(
    prompt: list[int], response: list[int], limit: int, min_prompt: int = 8
) -> tuple[list[int], list[int]]:
    """Cut ``prompt + response`` to ``limit`` tokens, keeping the response's end where possible.

    The prompt loses tokens from its middle, so its start (the instruction) and its end (the
    template's response marker) stay; only when the response alone does not fit beside
    ``min_prompt`` prompt tokens is the response cut, before its final stop token.

    >>> truncate_example([1, 2, 3, 4, 5, 6], [7, 8, 9], 7, min_prompt=2)
    ([1, 2, 5, 6], [7, 8, 9])
    """
    if len(prompt) + len(response) <= limit:
        return prompt, response
    keep_response = max(1, limit - min(len(prompt), min_prompt))
    if len(response) > keep_response:
        response = response[: keep_response - 1] + response[-1:]
    room = limit - len(response)
    if len(prompt) > room:
        head = room // 2
        prompt = prompt[:head] + prompt[len(prompt) - (room - head) :]
    return prompt, response


class InstructionDataset:
    """Rendered records as next-token examples with the loss on response tokens only.

    ``batch`` right-pads with the end-of-text id; padded and prompt positions get target
    ``-100`` (ignored by the loss).
    """

    def __init__(self, examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> None:
        self.examples = list(examples)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(B, longest - 1)``."""
        seqs = [self.examples[i] for i in indices]
        width = max(len(p) + len(r) for p, r in seqs) - 1
        x = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)  # (B, T)
        y = torch.full((len(seqs), width), -100, dtype=torch.long)  # (B, T)
        for row, (prompt, response) in enumerate(seqs):
            full = torch.tensor(prompt + response, dtype=torch.long)
            n = len(full) - 1
            x[row, :n] = full[:-1]
            y[row, len(prompt) - 1 : n] = full[len(prompt) :]
        return x, y


def exact_match(
    model: LanguageModel,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    template: str,
    *,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Greedy-decode each record's prompt and compare the answer with ``output`` (stripped).

    Decoding stops at the template's stop token (:func:`stop_ids`).

    Args:
        model: The model to score (put back in its previous train/eval mode afterwards).
        tokenizer: Tokenizer with the template's special tokens.
        records: Records with ``output`` (and optionally ``task`` for the per-task breakdown).
        template: ``inst`` or ``alpaca``.
        max_new_tokens: Most tokens generated per record; ``None``: the longest expected
            answer plus 4 tokens, which is enough for any correct answer (an untrained model
            that never emits the stop token would otherwise decode 32+ tokens per record).

    Returns:
        ``{"accuracy": float, "correct": int, "total": int, "per_task": {task: accuracy}}``.
    """
    from gptforge.training.textgen import new_tokens

    encoded = [encode_record(r, template, tokenizer) for r in records]
    prompts = [prompt for prompt, _ in encoded]
    if max_new_tokens is None:
        # (the response ids end with the stop token, which is not generated)
        max_new_tokens = max((len(response) for _, response in encoded), default=1) + 3
    outs = new_tokens(
        cast(LanguageModel, model),
        prompts,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids(template, tokenizer),
    )
    hits: dict[str, list[bool]] = {}
    correct = 0
    for record, ids in zip(records, outs, strict=True):
        ok = tokenizer.decode(ids).strip() == record["output"].strip()
        correct += ok
        hits.setdefault(record.get("task", "all"), []).append(ok)
    return {
        "accuracy": correct / max(1, len(records)),
        "correct": correct,
        "total": len(records),
        "per_task": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
    }
