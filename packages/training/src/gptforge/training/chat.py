"""Answer instructions with a fine-tuned run directory (``gptforge chat``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from gptforge.training.instruct import encode_record, stop_ids
from gptforge.training.textgen import generate_ids


class ChatModel:
    """A fine-tuned model, its tokenizer and its template.

    Args:
        run_dir: Output of ``gptforge finetune`` (reads ``chat.json`` for the template).
        device: Where to run.
        template: Override the template (``inst`` or ``alpaca``).

    >>> bot = ChatModel("runs/demo/sft")  # doctest: +SKIP
    >>> bot.respond("Repeat the words.", "blue moon")  # doctest: +SKIP
    'blue moon'
    """

    def __init__(
        self, run_dir: str | Path, *, device: str = "cpu", template: str | None = None
    ) -> None:
        from gptforge.conversion.peft_adapter import is_adapter_dir, load_adapted
        from gptforge.modeling.io import load_model_dir
        from gptforge.tokenizer import Tokenizer

        run_dir = Path(run_dir)
        chat_file = run_dir / "chat.json"
        saved = json.loads(chat_file.read_text()) if chat_file.exists() else {}
        self.template: str = template or saved.get("template", "inst")
        self.tokenizer: Any = Tokenizer.from_dir(run_dir / "tokenizer")
        if self.template == "inst" and "<INST>" not in self.tokenizer.special_tokens:
            raise ValueError(
                f"{str(run_dir)!r} is not a fine-tuned run (its tokenizer has no <INST> token); "
                "fine-tune it first: gptforge finetune --from RUN_DIR --out RUN_DIR2"
            )
        if is_adapter_dir(run_dir) and not (run_dir / "config.json").is_file():  # LoRA, unmerged
            self.model: Any = load_adapted(run_dir, device=device)
        else:
            self.model = load_model_dir(run_dir, device=device, dtype=torch.float32)

    def respond(
        self,
        instruction: str,
        input: str = "",
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str:
        """The model's answer to one instruction (greedy by default)."""
        record = {"instruction": instruction, "input": input, "output": ""}
        prompt, _ = encode_record(record, self.template, self.tokenizer)
        block = int(self.model.config.block_size)
        room = max(1, min(max_new_tokens, block - len(prompt)))
        ids = generate_ids(
            self.model,
            [prompt[-block:]],
            max_new_tokens=room,
            stop_ids=stop_ids(self.template, self.tokenizer),
            temperature=temperature,
            top_k=50 if temperature > 0 else None,
            seed=seed,
        )[0]
        return self.tokenizer.decode(ids).strip()
