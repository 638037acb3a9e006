"""gRPC TokenizerService v1: a thin servicer over ``gptforge.tokenizer.Tokenizer`` plus clients.

- :func:`serve` / :func:`start` / :func:`serve_in_background` run the service;
- :class:`TokenizerClient` / :class:`AsyncTokenizerClient` call it; :class:`RemoteTokenizer`
  wraps the blocking client for data preparation (``grpc://host:port``);
- :class:`TokenizerLimits` holds the per-request limits (batch size, text size, ids per sequence).
"""

from gptforge.services.tokenizer.client import AsyncTokenizerClient, EncodedText, TokenizerClient
from gptforge.services.tokenizer.remote import RemoteTokenizer
from gptforge.services.tokenizer.server import (
    load_tokenizer,
    serve,
    serve_in_background,
    start,
    start_servicer,
)
from gptforge.services.tokenizer.servicer import (
    SERVICE_NAME,
    TokenizerLike,
    TokenizerLimits,
    TokenizerServicer,
)

__all__ = [
    "SERVICE_NAME",
    "AsyncTokenizerClient",
    "EncodedText",
    "RemoteTokenizer",
    "TokenizerClient",
    "TokenizerLike",
    "TokenizerLimits",
    "TokenizerServicer",
    "load_tokenizer",
    "serve",
    "serve_in_background",
    "start",
    "start_servicer",
]
