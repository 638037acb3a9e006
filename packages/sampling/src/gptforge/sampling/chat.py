"""Answer instructions with a fine-tuned model in its template (``gptforge chat``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from gptforge.conversion import load_any
from gptforge.sampling.core import context_limit, generate
from gptforge.sampling.templates import INST, encode_record, stop_ids


class ChatModel:
    """A fine-tuned model, its tokenizer and its template.

    Args:
        run_dir: Output of ``gptforge finetune`` (reads ``chat.json`` for the template) or
            one of its checkpoints (``RUN/checkpoints/best``).
        device: Where to run.
        template: Override the template (``inst`` or ``alpaca``).

    >>> bot = ChatModel("runs/demo/sft")  # doctest: +SKIP
    >>> bot.respond("Repeat the words.", "blue moon")  # doctest: +SKIP
    'blue moon'
    """

    def __init__(
        self, run_dir: str | Path, *, device: str = "cpu", template: str | None = None
    ) -> None:
        run_dir = Path(run_dir)
        # A run keeps its template in chat.json, a checkpoint in its manifest's config.
        chat_file, manifest = run_dir / "chat.json", run_dir / "manifest.json"
        saved = json.loads(chat_file.read_text()) if chat_file.exists() else {}
        if not saved and manifest.exists():
            saved = json.loads(manifest.read_text()).get("config", {})
        self.template: str = template or saved.get("template", "inst")
        self.model: Any
        self.model, self.tokenizer, _ = load_any(
            run_dir, device=device, dtype=torch.float32, require_tokenizer=True
        )
        if self.template == "inst" and INST not in self.tokenizer.special_tokens:
            raise ValueError(
                f"{str(run_dir)!r} is not a fine-tuned run (its tokenizer has no {INST} token); "
                "fine-tune it first: gptforge finetune --from RUN_DIR --out RUN_DIR2"
            )

    def prompt_ids(self, instruction: str, input: str = "") -> list[int]:
        """The template's prompt tokens for one instruction (and its optional input)."""
        record = {"instruction": instruction, "input": input, "output": ""}
        return encode_record(record, self.template, self.tokenizer)[0]

    def respond(
        self,
        instruction: str,
        input: str = "",
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        slide_tokens: int | None = None,
    ) -> str:
        """The model's answer to one instruction (greedy by default).

        Args:
            slide_tokens: past the context, the window's slide (see
                :class:`~gptforge.sampling.SamplingParams`); None: a quarter of the context.
        """
        prompt = self.prompt_ids(instruction, input)
        if slide_tokens is None:
            slide_tokens = max(1, (context_limit(self.model) or 4) // 4)
        stops = stop_ids(self.template, self.tokenizer)
        out = generate(
            self.model,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=50 if temperature > 0 else 0,
            stop_token_ids=stops,
            seed=seed,
            slide_tokens=slide_tokens,
        )[len(prompt) :].tolist()
        answer = out[: next((i for i, t in enumerate(out) if t in stops), len(out))]
        return self.tokenizer.decode(answer).strip()
