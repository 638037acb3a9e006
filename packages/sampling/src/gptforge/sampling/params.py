"""Sampling parameters: one frozen dataclass, validated on construction.

Every validation error is a ``ValueError`` whose message starts with the offending field name,
so the generation service can map it to ``INVALID_ARGUMENT`` and name the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Upper bounds that keep one request from monopolising the engine.
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each new token and when to stop.

    Args:
        max_new_tokens: upper bound on generated tokens (>= 1).
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (0 = off).
        top_p: nucleus sampling: keep the smallest set of tokens whose mass reaches p (1 = off).
        repetition_penalty: CTRL-style penalty (> 0; 1 = off) on tokens already in the prompt or
            the output: positive logits are divided by it, negative ones multiplied.
        min_new_tokens: EOS and the stop token ids are masked out, and stop strings ignored, until
            this many tokens were generated.
        stop_token_ids: token ids that end the sequence (the EOS of the tokenizer always does
            unless ``ignore_eos``); the stop token is kept in the token output, not in the text.
        stop: strings that end the sequence; they may span tokens; the text is cut before them.
        seed: seeds this sequence's own ``torch.Generator``; the same seed reproduces the same
            output whatever else shares the batch. ``None`` draws a fresh seed.
        logprobs: ``None`` for no log-probabilities, 0 for the chosen token's only, k > 0 to also
            return the k most likely alternatives at each step (raw model distribution).
        ignore_eos: keep generating past EOS (benchmarks).
        slide_tokens: 0 ends a sequence at the model's context (and a prompt plus
            ``max_new_tokens`` that does not fit is refused). ``n > 0`` goes past the context
            with a sliding window: a prompt longer than the context keeps its last tokens, and
            whenever the context is full the oldest ``n`` tokens leave it and the cache is
            recomputed over the rest (one forward over ``context - n + 1`` tokens every ``n``
            new tokens; ``n = 1`` is a full-context forward per token, the books' crop).

    >>> SamplingParams(temperature=0.0, max_new_tokens=8).greedy
    True
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    slide_tokens: int = 0

    def __post_init__(self) -> None:
        # Accept lists from callers (CLI, protobuf) but store tuples so the object stays hashable.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}; ask for at least one token"
            )
        if not self.temperature >= 0.0:  # also catches NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(
                f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty!r}"
            )
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens!r}"
            )
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be >= 0, got {list(self.stop_token_ids)!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(
                f"stop has {len(self.stop)} strings, at most {MAX_STOP_STRINGS} are allowed"
            )
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_STRING_CHARS:
                raise ValueError(
                    f"stop strings must be non-empty str of at most {MAX_STOP_STRING_CHARS} "
                    f"characters, got {s!r}"
                )
        if self.slide_tokens < 0:
            raise ValueError(
                f"slide_tokens must be >= 0 (0 = stop at the context), got {self.slide_tokens!r}"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(
                f"logprobs must be None or in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs!r}"
            )

    @property
    def greedy(self) -> bool:
        """True when the token is the argmax (temperature 0)."""
        return self.temperature == 0.0

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming ``stop_token_ids`` if one is outside ``[0, vocab_size)``."""
        bad = [t for t in self.stop_token_ids if t >= vocab_size]
        if bad:
            raise ValueError(
                f"stop_token_ids {bad!r} are outside the vocabulary [0, {vocab_size}); "
                "use ids the model's tokenizer produces"
            )
