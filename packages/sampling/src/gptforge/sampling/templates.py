"""Instruction templates: how a record or a chat turn becomes prompt tokens, and which ids
end the answer (shared by fine-tuning, its scoring and :class:`~gptforge.sampling.chat.ChatModel`).

Two templates render an Alpaca-style record (``instruction``, ``input``, ``output``):

- ``inst``: ``<INST>{instruction}\\n{input}</INST><RESP>{output}</RESP>``;
- ``alpaca``: the Alpaca prompt ("Below is an instruction ... ### Response:\\n") followed by
  ``{output}<|endoftext|>``.

Special tokens are inserted as ids, and user text is always encoded as plain text, so text
that merely looks like ``<INST>`` in a record cannot inject a control token.
"""

from __future__ import annotations

from typing import Any

from gptforge.tokenizer.specials import EOT, INST, INST_END, RESP, RESP_END

SPECIAL_TOKENS = [INST, INST_END, RESP, RESP_END]
"""The tokens the ``inst`` template needs (fine-tuning adds them to the tokenizer)."""
ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_HEADER_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request."
)


def render_text(record: dict[str, str], template: str) -> tuple[str, str]:
    """``(prompt, response)`` as text (for display; training uses :func:`encode_record`)."""
    instruction, extra, output = (
        record["instruction"],
        record.get("input", ""),
        record.get("output", ""),
    )
    if template == "inst":
        body = f"{instruction}\n{extra}" if extra else instruction
        return f"{INST}{body}{INST_END}{RESP}", f"{output}{RESP_END}"
    if template == "alpaca":
        header = ALPACA_HEADER_INPUT if extra else ALPACA_HEADER
        prompt = f"{header}\n\n### Instruction:\n{instruction}\n\n"
        if extra:
            prompt += f"### Input:\n{extra}\n\n"
        return prompt + "### Response:\n", f"{output}{EOT}"
    raise ValueError(f"unknown template {template!r}; allowed: ['inst', 'alpaca']")


def _plain(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, disallowed_special=()) if text else []


def encode_record(
    record: dict[str, str], template: str, tokenizer: Any
) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt_ids, response_ids)``; the response ends with the stop token."""
    instruction, extra, output = (
        record["instruction"],
        record.get("input", ""),
        record.get("output", ""),
    )
    special = tokenizer.special_tokens
    if template == "inst":
        missing = [t for t in SPECIAL_TOKENS if t not in special]
        if missing:
            raise ValueError(
                f"tokenizer lacks the special tokens {missing}; call "
                "tokenizer.add_special_tokens(SPECIAL_TOKENS) first"
            )
        body = f"{instruction}\n{extra}" if extra else instruction
        prompt = [special[INST], *_plain(tokenizer, body), special[INST_END], special[RESP]]
        return prompt, [*_plain(tokenizer, output), special[RESP_END]]
    prompt_text, _ = render_text(record, template)
    return _plain(tokenizer, prompt_text), [*_plain(tokenizer, output), tokenizer.eot_token]


def stop_ids(template: str, tokenizer: Any) -> list[int]:
    """Ids that end a response under ``template``."""
    ids = [tokenizer.eot_token]
    if template == "inst" and RESP_END in tokenizer.special_tokens:
        ids.append(tokenizer.special_tokens[RESP_END])
    return ids
