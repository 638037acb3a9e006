"""Special-token names and the GPT-2 pre-tokenization pattern shared by the whole project."""

from __future__ import annotations

EOT = "<|endoftext|>"
"""End of text: separates documents; GPT-2's only special token."""
INST = "<INST>"
INST_END = "</INST>"
RESP = "<RESP>"
RESP_END = "</RESP>"
PAD = "<|pad|>"
CHAT_TOKENS: tuple[str, ...] = (INST, INST_END, RESP, RESP_END, PAD)
"""The tokens instruction fine-tuning adds with :meth:`Tokenizer.add_special_tokens`."""

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenization regex in tiktoken's spelling.

It is the same language as the pattern HF ``tokenizers`` applies in
``pre_tokenizers.ByteLevel(use_regex=True)``: contractions, an optional space plus a run of
letters, of digits or of other symbols, and whitespace runs that leave their last space to the
following word.
"""
