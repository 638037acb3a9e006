"""Fixtures of the tokenizer service tests: a small trained tokenizer and a running server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gptforge.api.server import RunningServer, ServerConfig
from gptforge.services.tokenizer import AsyncTokenizerClient, TokenizerLimits, start
from gptforge.tokenizer import CHAT_TOKENS, EOT, Tokenizer

CORPUS = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.\n"
    "Tokenizers split text into tokens, and tokens map to ids. Byte-level BPE never fails.\n"
    "İstanbul'da ılık bir gün; Iğdır ve ıspanak. 東京は大きい都市です。 Emoji: 🙂🚀👩‍💻.\n"
)
LIMITS = TokenizerLimits(max_batch_size=8, max_text_bytes=4096, max_ids_per_sequence=64)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A 300-id byte-level BPE (small, so emoji and CJK split into byte tokens) + chat tokens."""
    return Tokenizer.train(
        texts=[CORPUS] * 20, vocab_size=300, special_tokens=(EOT, *CHAT_TOKENS), show_progress=False
    )


@pytest.fixture
def limits() -> TokenizerLimits:
    """The small limits the test server runs with."""
    return LIMITS


@pytest.fixture
async def server(tokenizer: Tokenizer) -> AsyncIterator[RunningServer]:
    """A TokenizerService on 127.0.0.1:<free port> with small limits."""
    running = await start(tokenizer, ServerConfig(port=0, grace_seconds=1.0), LIMITS, name="test")
    yield running
    await running.stop(grace=0.5)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[AsyncTokenizerClient]:
    """An async client connected to ``server``."""
    async with AsyncTokenizerClient(server.address, timeout=10) as c:
        yield c
