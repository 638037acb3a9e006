"""Answer instructions with a fine-tuned run directory (``gptforge chat``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from gptforge.training.instruct import encode_record, stop_ids
from gptforge.training.textgen import generate_ids


def saved_template(model_dir: Path) -> str:
    """The template of a fine-tuned run (``chat.json``) or checkpoint (its manifest's config)."""
    chat_file, manifest = model_dir / "chat.json", model_dir / "manifest.json"
    if chat_file.exists():
        return str(json.loads(chat_file.read_text()).get("template", "inst"))
    if manifest.exists():
        return str(json.loads(manifest.read_text()).get("config", {}).get("template", "inst"))
    return "inst"


class ChatModel:
    """A fine-tuned model, its tokenizer and its template.

    Args:
        run_dir: Output of ``gptforge finetune`` or one of its checkpoints (the template comes
            from ``chat.json`` or the checkpoint's manifest).
        device: Where to run.
        template: Override the template (``inst`` or ``alpaca``).

    >>> bot = ChatModel("runs/demo/sft")  # doctest: +SKIP
    >>> bot.respond("Repeat the words.", "blue moon")  # doctest: +SKIP
    'blue moon'
    """

    def __init__(
        self, run_dir: str | Path, *, device: str = "cpu", template: str | None = None
    ) -> None:
        from gptforge.modeling.io import load_model_dir
        from gptforge.tokenizer import Tokenizer

        run_dir = Path(run_dir)
        self.template: str = template or saved_template(run_dir)
        self.tokenizer: Any = Tokenizer.from_dir(run_dir / "tokenizer")
        if self.template == "inst" and "<INST>" not in self.tokenizer.special_tokens:
            raise ValueError(
                f"{str(run_dir)!r} is not a fine-tuned run (its tokenizer has no <INST> token); "
                "fine-tune it first: gptforge finetune --from RUN_DIR --out RUN_DIR2"
            )
        self.model: Any = load_model_dir(run_dir, device=device, dtype=torch.float32)

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
