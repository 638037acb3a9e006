"""gptforge.tokenizer: byte-level BPE training, tiktoken-speed encoding, GPT-2 encoding.

>>> from gptforge.tokenizer import Tokenizer
>>> tok = Tokenizer.train("default", vocab_size=4096, show_progress=False)
>>> tok.decode(tok.encode("Hello, world!"))
'Hello, world!'
"""

from gptforge.tokenizer.core import Tokenizer
from gptforge.tokenizer.errors import SpecialTokenError, TokenizerError
from gptforge.tokenizer.specials import (
    CHAT_TOKENS,
    EOT,
    GPT2_PATTERN,
    INST,
    INST_END,
    PAD,
    RESP,
    RESP_END,
)

__all__ = [
    "CHAT_TOKENS",
    "EOT",
    "GPT2_PATTERN",
    "INST",
    "INST_END",
    "PAD",
    "RESP",
    "RESP_END",
    "SpecialTokenError",
    "Tokenizer",
    "TokenizerError",
]
