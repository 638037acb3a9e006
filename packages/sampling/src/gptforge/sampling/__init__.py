"""gptforge.sampling: composable sampling and generation over the gptforge model interface.

gpt-fast style building blocks (:func:`logits_to_probs`, :func:`sample`, :func:`prefill`,
:func:`decode_one_token`, :func:`generate`, :func:`compiled_decode_one_token`), a continuous-batching engine
(:class:`BatchGenerator`, used by the generation service), batched and streaming entry points
(:func:`generate_batch`, :func:`stream_generate`), a UTF-8-safe streaming detokenizer and
:class:`ChatModel` (a fine-tuned model answering in its instruction template).

>>> from gptforge.modeling import build_model, get_config
>>> model = build_model(get_config("debug")).eval()
>>> out = generate(model, [1, 2, 3], max_new_tokens=4, temperature=0.0)
>>> out.shape[0] <= 7
True
"""

from gptforge.sampling.batch import (
    BatchGenerator,
    Completion,
    FinishReason,
    TokenEvent,
    fresh_seed,
    generate_batch,
    stream_generate,
)
from gptforge.sampling.chat import ChatModel
from gptforge.sampling.core import (
    compiled_decode_one_token,
    decode_one_token,
    generate,
    prefill,
    suppress_tokens,
)
from gptforge.sampling.params import (
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    SamplingParams,
)
from gptforge.sampling.processing import (
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    logits_to_probs,
    sample,
    sample_from_probs,
    token_logprobs,
)
from gptforge.sampling.stream import StopStringMatcher, StreamingDetokenizer

__version__ = "0.1.0"

__all__ = [
    "MAX_STOP_STRINGS",
    "MAX_STOP_STRING_CHARS",
    "MAX_TOP_LOGPROBS",
    "BatchGenerator",
    "ChatModel",
    "Completion",
    "FinishReason",
    "SamplingParams",
    "StopStringMatcher",
    "StreamingDetokenizer",
    "TokenEvent",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "compiled_decode_one_token",
    "decode_one_token",
    "fresh_seed",
    "generate",
    "generate_batch",
    "logits_to_probs",
    "prefill",
    "sample",
    "sample_from_probs",
    "stream_generate",
    "suppress_tokens",
    "token_logprobs",
]
