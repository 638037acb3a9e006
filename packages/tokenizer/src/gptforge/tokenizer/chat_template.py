"""The chat templates of instruction-tuned models, defined once for every format that carries one.

A :class:`ChatFormat` is four pieces of text around the turns of a conversation. From them come
the Jinja template that ``transformers`` (``tokenizer_config.json``'s ``chat_template``) and
llama.cpp (``tokenizer.chat_template`` in GGUF) render, the Go template and stop strings of an
Ollama ``Modelfile``, and our own token ids (:func:`encode_conversation`), so the three can never
drift apart.

>>> CHAT_FORMATS["inst"].render([{"role": "user", "content": "Hi"}])
'<INST>Hi</INST><RESP>'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptforge.tokenizer.specials import EOT, INST, INST_END, RESP, RESP_END

__all__ = ["CHAT_FORMATS", "ChatFormat", "encode_conversation"]

ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class ChatFormat:
    """A conversation as ``user_prefix + text + user_suffix`` and ``assistant_prefix + text +
    assistant_suffix`` per turn; a prompt for a new answer ends with ``assistant_prefix``."""

    name: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str

    @property
    def stop(self) -> tuple[str, ...]:
        """Strings that end an answer: the assistant suffix, and end-of-text."""
        return tuple(dict.fromkeys((self.assistant_suffix, EOT)))

    def segments(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[tuple[str, bool]]:
        """``(text, is_template)`` pieces of a conversation, in order."""
        out: list[tuple[str, bool]] = []
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if role not in ("user", "assistant") or not isinstance(content, str):
                raise ValueError(
                    f"message {i} must be {{'role': 'user'|'assistant', 'content': str}}, "
                    f"got {dict(m)!r:.120}"
                )
            pre, post = (
                (self.user_prefix, self.user_suffix)
                if role == "user"
                else (self.assistant_prefix, self.assistant_suffix)
            )
            out += [(pre, True), (content, False), (post, True)]
        if add_generation_prompt:
            out.append((self.assistant_prefix, True))
        return [(text, tpl) for text, tpl in out if text]

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The conversation as text (what the Jinja template renders)."""
        return "".join(text for text, _ in self.segments(messages, add_generation_prompt))

    def jinja(self) -> str:
        """The Jinja template of ``tokenizer_config.json`` and GGUF's ``tokenizer.chat_template``."""
        up, us, ap, as_ = (
            _jinja_str(s)
            for s in (
                self.user_prefix,
                self.user_suffix,
                self.assistant_prefix,
                self.assistant_suffix,
            )
        )
        return (
            "{% for message in messages %}"
            f"{{% if message['role'] == 'user' %}}{{{{ {up} + message['content'] + {us} }}}}"
            f"{{% elif message['role'] == 'assistant' %}}{{{{ {ap} + message['content'] + {as_} }}}}"
            "{% endif %}{% endfor %}"
            f"{{% if add_generation_prompt %}}{{{{ {ap} }}}}{{% endif %}}"
        )

    def ollama(self) -> str:
        """The Go template of an Ollama ``Modelfile`` (``.Messages`` keeps the whole history)."""
        return (
            "{{- range .Messages }}"
            f'{{{{- if eq .Role "user" }}}}{self.user_prefix}{{{{ .Content }}}}{self.user_suffix}'
            f'{{{{- else if eq .Role "assistant" }}}}{self.assistant_prefix}{{{{ .Content }}}}'
            f"{self.assistant_suffix}{{{{- end }}}}"
            "{{- end }}"
            f"{self.assistant_prefix}"
        )


def _jinja_str(s: str) -> str:
    """A Jinja string literal (escaped like a Python one)."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


CHAT_FORMATS: dict[str, ChatFormat] = {
    "inst": ChatFormat("inst", INST, INST_END, RESP, RESP_END),
    "alpaca": ChatFormat(
        "alpaca", f"{ALPACA_HEADER}\n\n### Instruction:\n", "\n\n", "### Response:\n", EOT
    ),
}


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    template: str,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a conversation under ``template``, as ``apply_chat_template`` gives them.

    Template pieces that are special tokens become their ids; everything else, message text
    included, is encoded as plain text between them (text that looks like ``<INST>`` in a message
    stays text).

    Args:
        tokenizer: Our tokenizer (with the template's special tokens).
        messages: ``[{"role": "user"|"assistant", "content": str}, ...]``.
        template: A key of :data:`CHAT_FORMATS`.
        add_generation_prompt: End with the assistant prefix (a prompt for the next answer).
    """
    if template not in CHAT_FORMATS:
        raise ValueError(f"unknown chat template {template!r}; allowed: {sorted(CHAT_FORMATS)}")
    special = tokenizer.special_tokens
    ids: list[int] = []
    plain: list[str] = []
    for text, is_template in CHAT_FORMATS[template].segments(messages, add_generation_prompt):
        if is_template and text in special:
            ids += _plain_ids(tokenizer, plain) + [special[text]]
            plain = []
        else:
            plain.append(text)
    return ids + _plain_ids(tokenizer, plain)


def _plain_ids(tokenizer: Any, parts: Iterable[str]) -> list[int]:
    text = "".join(parts)
    return tokenizer.encode(text, disallowed_special=()) if text else []
