"""Batched generation of sequences with different prompts and parameters (continuous batching).

:class:`BatchGenerator` is the step-level engine the generation service drives: ``add`` prefills
one sequence into a free slot and returns its first token, ``step`` runs one batched decode for
every live sequence, ``cancel`` frees a slot at once. :func:`generate_batch` and
:func:`stream_generate` are the library entry points built on it.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from gptforge.modeling.protocol import LanguageModel
from gptforge.sampling.core import (
    cache_length,
    check_slide,
    compiled_decode_one_token,
    decode_one_token,
    model_config,
    prefill,
    suppress_tokens,
)
from gptforge.sampling.params import SamplingParams
from gptforge.sampling.processing import apply_repetition_penalty, sample, token_logprobs
from gptforge.sampling.stream import StopStringMatcher, StreamingDetokenizer
from torch import Tensor

#: Why a sequence ended: its EOS, one of its stop token ids, one of its stop strings, its
#: ``max_new_tokens``, the end of the cache/context, or a cancel.
FinishReason = Literal[
    "eos", "stop_token", "stop_sequence", "length", "context_length", "cancelled"
]


@dataclass
class TokenEvent:
    """One generated token of one sequence, as it leaves the engine.

    ``text`` is the printable delta (maybe ``""`` while a character or a possible stop string is
    incomplete); ``finish_reason`` is set on the sequence's last event.
    """

    seq_id: int
    index: int
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: FinishReason | None = None
    matched_stop: str | None = None
    matched_stop_token: int | None = None


@dataclass
class Completion:
    """A finished sequence: tokens, text, why it stopped, and log-probabilities if asked."""

    seq_id: int
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    seed: int
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    matched_stop: str | None = None
    matched_stop_token: int | None = None


@dataclass
class _Seq:
    seq_id: int
    slot: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    generator: torch.Generator
    stop_ids: list[int]
    eos_id: int | None
    detok: StreamingDetokenizer | None
    stopper: StopStringMatcher
    seen: Tensor | None
    history: list[int] | None = None  # prompt + output, kept to slide a window (slide_tokens)
    pos: int = 0
    last: int = 0
    n: int = 0
    events: list[TokenEvent] = field(default_factory=list)


def fresh_seed() -> int:
    """A random 63-bit seed (what a request without a seed gets)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def batch_bucket(rows: int, max_rows: int) -> int:
    """Rows a compiled decode step runs for ``rows`` live rows: the next power of two, at
    least ``max_rows / 32`` and at most ``max_rows``. That is at most 7 shapes, each compiled
    once (the compiled step keeps up to ``core.COMPILED_GRAPHS`` graphs)."""
    floor = -(-max_rows // 32)  # ceil(max_rows / 32)
    return min(max(1 << max(rows - 1, 0).bit_length(), floor), max_rows)


def batch_buckets(max_rows: int) -> list[int]:
    """Every row count :func:`batch_bucket` can return for ``max_rows`` slots, ascending."""
    return sorted({batch_bucket(r, max_rows) for r in range(1, max_rows + 1)})


class BatchGenerator:
    """Continuous-batching engine over a gptforge model's KV cache.

    Args:
        model: a gptforge model in eval mode.
        max_batch_size: slots, i.e. sequences decoded together.
        max_seq_len: positions per slot (default: ``model.config.block_size``).
        tokenizer: a ``gptforge.tokenizer.Tokenizer`` for text deltas and stop strings (optional).
        eos_id: ends a sequence unless ``ignore_eos`` (default: ``tokenizer.eot_token``).
        compile: run each decode step through ``torch.compile`` (CUDA graphs on a GPU; see
            :func:`~gptforge.sampling.core.compiled_decode_one_token`). Every step then decodes
            the slots up to the next power of two (:func:`batch_bucket`) with per-row
            positions, so a few compiled graphs serve any mix of sequences.

    >>> # gen = BatchGenerator(model, max_batch_size=4, tokenizer=tok)
    >>> # first = gen.add(tok.encode("Hi"), SamplingParams(max_new_tokens=8))
    >>> # while gen.num_active: events = gen.step()
    """

    def __init__(
        self,
        model: LanguageModel,
        *,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        tokenizer: Any | None = None,
        eos_id: int | None = None,
        compile: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        self.model = model
        self.vocab_size: int = model_config(model).vocab_size
        self.max_seq_len: int = max_seq_len or model_config(model).block_size
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eot_token", None)
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        # One cache row per slot: a sequence keeps its row from add() to its end.
        model.setup_caches(max_batch_size, self.max_seq_len)
        self.compile = compile
        self._free = list(range(max_batch_size))
        heapq.heapify(self._free)
        self._by_slot: dict[int, _Seq] = {}
        self._by_id: dict[int, _Seq] = {}
        self._next_id = 0

    @property
    def num_active(self) -> int:
        """Sequences currently holding a slot."""
        return len(self._by_slot)

    @property
    def free_slots(self) -> int:
        """Slots available to :meth:`add`."""
        return len(self._free)

    def validate(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise ``ValueError`` (message starting with the field name) if the request can't run."""
        if len(prompt_ids) == 0:
            raise ValueError("prompt is empty; give at least one token")
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"prompt_ids {bad[:5]!r} are outside the vocabulary [0, {self.vocab_size}); "
                "encode the prompt with the model's own tokenizer"
            )
        if len(prompt_ids) + params.max_new_tokens > self.max_seq_len:
            check_slide(
                params.slide_tokens, self.max_seq_len, len(prompt_ids), params.max_new_tokens
            )
        params.check_vocab(self.vocab_size)

    @torch.inference_mode()
    def add(
        self, prompt_ids: Sequence[int], params: SamplingParams, seq_id: int | None = None
    ) -> TokenEvent:
        """Prefill a new sequence into a free slot and return its first token.

        Raises:
            ValueError: the request is invalid (see :meth:`validate`).
            RuntimeError: no slot is free (check :attr:`free_slots` first).
        """
        self.validate(prompt_ids, params)
        if not self._free:
            raise RuntimeError(f"all {self.max_batch_size} slots are busy; wait for step()")
        if seq_id is None:
            seq_id, self._next_id = self._next_id, self._next_id + 1
        slot = heapq.heappop(self._free)
        seed = params.seed if params.seed is not None else fresh_seed()
        stop_ids = list(params.stop_token_ids)
        if self.eos_id is not None and not params.ignore_eos and self.eos_id not in stop_ids:
            stop_ids.append(self.eos_id)
        window = list(prompt_ids)[-self.max_seq_len :]  # a long prompt only when sliding
        prompt = torch.tensor([window], dtype=torch.long, device=self.device)  # (1, T)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)  # (V,)
            seen[torch.tensor(list(prompt_ids), device=self.device)] = True
        seq = _Seq(
            seq_id=seq_id,
            slot=slot,
            prompt_ids=list(prompt_ids),
            params=params,
            seed=seed,
            generator=torch.Generator(device=self.device).manual_seed(seed),
            stop_ids=stop_ids,
            eos_id=None if params.ignore_eos else self.eos_id,
            detok=StreamingDetokenizer(self.tokenizer) if self.tokenizer is not None else None,
            stopper=StopStringMatcher(params.stop),
            seen=seen,
            history=list(prompt_ids) if params.slide_tokens else None,
        )
        self._by_slot[slot] = seq
        self._by_id[seq_id] = seq
        try:
            logits = self._prefill(seq, prompt)
        except BaseException:
            self._release(seq)
            raise
        return self._sample_and_advance(logits, [seq])[0]

    def _prefill(self, seq: _Seq, tokens: Tensor) -> Tensor:
        """Fill ``seq``'s cache row with ``tokens`` (1, T) from position 0; next-token logits."""
        pos = torch.arange(tokens.size(1), device=self.device)  # (T,)
        # Position 0 starts the row afresh: stale keys are masked, a recurrent state zeroed.
        rows = torch.tensor([seq.slot], device=self.device)  # (1,)
        logits = prefill(self.model, tokens, pos, rows)  # (1, V)
        seq.pos = tokens.size(1)
        return logits

    def _slide(self, seq: _Seq) -> Tensor:
        """Recompute a full row's cache over its last tokens (``slide_tokens`` dropped)."""
        assert seq.history is not None
        keep = self.max_seq_len - seq.params.slide_tokens + 1
        window = torch.tensor([seq.history[-keep:]], dtype=torch.long, device=self.device)
        return self._prefill(seq, window)  # (1, V)

    @torch.inference_mode()
    def precompile(self) -> int:
        """With ``compile=True``, compile the decode step for every batch bucket now (a server
        calls this before it reports SERVING, so no request waits for a compile). Needs an
        idle generator: it decodes junk into the free rows, which admission clears. Returns the
        number of shapes run (0 without ``compile``)."""
        if not self.compile:
            return 0
        if self._by_slot:
            raise RuntimeError("precompile() needs an idle BatchGenerator (no live sequences)")
        buckets = batch_buckets(self.max_batch_size)
        # CUDA graph trees warm a new shape up eagerly and record it on a later call.
        calls = 3 if self.device.type == "cuda" else 1
        for rows in buckets:
            tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # (rows, 1)
            for _ in range(calls):  # the first ``rows`` cache rows, like step()
                compiled_decode_one_token(self.model, tokens, torch.zeros_like(tokens))
        return len(buckets)

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """One batched decode step for every live sequence; returns one event per sequence."""
        if not self._by_slot:
            return []
        live = sorted(self._by_slot)
        # Rows whose context is full (slide_tokens) get a junk decode at position 0 below;
        # their window prefill then rewrites the row from position 0.
        full = [s for s in live if self._by_slot[s].pos >= self.max_seq_len]
        slots = [s for s in live if s not in full]
        # Compiled: the rows up to the next power of two, so a few static shapes (one graph
        # each, CUDA graphs on a GPU) serve every mix of slots; free rows decode junk.
        hi = batch_bucket(live[-1] + 1, self.max_batch_size) if self.compile else live[-1] + 1
        tokens = torch.zeros(hi, 1, dtype=torch.long)  # (hi, 1); free rows decode junk
        pos = torch.zeros(hi, 1, dtype=torch.long)  # (hi, 1)
        for s in slots:
            seq = self._by_slot[s]
            tokens[s, 0] = seq.last
            pos[s, 0] = seq.pos
        tokens, pos = tokens.to(self.device), pos.to(self.device)
        same_pos = not self.compile and len(slots) == hi and bool((pos == pos[0]).all())
        decode = compiled_decode_one_token if self.compile else decode_one_token
        try:
            # The batch is cache rows 0..hi-1 (the model's default rows), so the step reads
            # the caches in place. Equal positions use the shared-position form of the contract.
            logits = decode(self.model, tokens, pos[0] if same_pos else pos)  # (hi, V)
            for s in full:
                logits[s] = self._slide(self._by_slot[s])[0]
        except BaseException:
            # The caches may be half-written; drop every live sequence so the engine stays usable.
            for seq in list(self._by_slot.values()):
                self._release(seq)
            raise
        for s in slots:
            self._by_slot[s].pos += 1
        return self._sample_and_advance(logits[live], [self._by_slot[s] for s in live])

    def cancel(self, seq_id: int) -> TokenEvent | None:
        """Free a sequence's slot now; returns its final event, or None if it already left."""
        seq = self._by_id.get(seq_id)
        if seq is None:
            return None
        self._release(seq)
        return TokenEvent(seq_id, seq.n, -1, "", finish_reason="cancelled")

    def cancel_all(self) -> list[TokenEvent]:
        """Cancel every live sequence (engine shutdown or failure)."""
        return [e for e in (self.cancel(i) for i in list(self._by_id)) if e is not None]

    def seed_of(self, seq_id: int) -> int | None:
        """The seed a live sequence draws from (reported to clients)."""
        seq = self._by_id.get(seq_id)
        return seq.seed if seq is not None else None

    # -- internals ---------------------------------------------------------------------------

    def _release(self, seq: _Seq) -> None:
        if self._by_id.pop(seq.seq_id, None) is not None:
            del self._by_slot[seq.slot]
            heapq.heappush(self._free, seq.slot)

    def _sample_and_advance(self, raw: Tensor, seqs: list[_Seq]) -> list[TokenEvent]:
        logits = raw.float()  # (n, V)
        if any(s.seen is not None for s in seqs):
            seen = torch.stack(
                [
                    s.seen if s.seen is not None else torch.zeros_like(logits[0], dtype=torch.bool)
                    for s in seqs
                ]
            )  # (n, V)
            penalty = torch.tensor([s.params.repetition_penalty for s in seqs], device=self.device)
            logits = apply_repetition_penalty(logits, seen, penalty)
        for row, s in enumerate(seqs):
            if s.n < s.params.min_new_tokens:
                logits = suppress_tokens(logits, [row], s.stop_ids)
        temps = torch.tensor([s.params.temperature for s in seqs], device=self.device)
        top_k = torch.tensor([s.params.top_k for s in seqs], device=self.device)
        top_p = torch.tensor([s.params.top_p for s in seqs], device=self.device)
        toks = sample(logits, temps, top_k, top_p, [s.generator for s in seqs])  # (n,)
        want = [s.params.logprobs for s in seqs if s.params.logprobs is not None]
        chosen = top_ids = top_vals = None
        if want:
            chosen, top_ids, top_vals = token_logprobs(raw, toks, max(want))
        toks_l = toks.tolist()
        events = []
        for row, (s, tok) in enumerate(zip(seqs, toks_l, strict=True)):
            lp = top = None
            if s.params.logprobs is not None and chosen is not None:
                lp = float(chosen[row])
                if s.params.logprobs > 0 and top_ids is not None and top_vals is not None:
                    k = s.params.logprobs
                    top = list(
                        zip(top_ids[row, :k].tolist(), top_vals[row, :k].tolist(), strict=True)
                    )
            events.append(self._advance(s, tok, lp, top))
        return events

    def _advance(
        self, s: _Seq, tok: int, lp: float | None, top: list[tuple[int, float]] | None
    ) -> TokenEvent:
        s.n += 1
        s.last = tok
        if s.history is not None:
            s.history.append(tok)
        if s.seen is not None:
            s.seen[tok] = True
        check = s.n >= s.params.min_new_tokens
        finish: FinishReason | None = None
        stop_token = None
        text = ""
        if tok in s.stop_ids:
            finish = "eos" if tok == s.eos_id else "stop_token"
            stop_token = None if tok == s.eos_id else tok
            if s.detok is not None:
                text = s.stopper.push(s.detok.flush(), check=check) + s.stopper.flush()
        else:
            if s.detok is not None:
                text = s.stopper.push(s.detok.push(tok), check=check)
            if s.n >= s.params.max_new_tokens:
                finish = "length"
            elif s.pos >= self.max_seq_len and s.history is None:
                finish = "context_length"
            if finish is not None and s.detok is not None and not s.stopper.stopped:
                text += s.stopper.push(s.detok.flush(), check=check)
                text += s.stopper.flush()
        if s.stopper.stopped:
            finish = "stop_sequence"
        if finish is not None:
            self._release(s)
        return TokenEvent(
            s.seq_id, s.n - 1, tok, text, lp, top, finish, s.stopper.matched, stop_token
        )


def _collect(
    events: Iterator[TokenEvent] | list[TokenEvent], store: dict[int, list[TokenEvent]]
) -> None:
    for e in events:
        store.setdefault(e.seq_id, []).append(e)


def _completion(
    seq_id: int, prompt: list[int], params: SamplingParams, seed: int, evs: list[TokenEvent]
) -> Completion:
    want = params.logprobs is not None
    return Completion(
        seq_id=seq_id,
        prompt_ids=prompt,
        token_ids=[e.token_id for e in evs],
        text="".join(e.text for e in evs),
        finish_reason=evs[-1].finish_reason or "length",
        seed=seed,
        matched_stop=evs[-1].matched_stop,
        matched_stop_token=evs[-1].matched_stop_token,
        logprobs=[e.logprob for e in evs if e.logprob is not None] if want else None,
        top_logprobs=[e.top_logprobs or [] for e in evs] if want and params.logprobs else None,
    )


@torch.inference_mode()
def generate_batch(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    *,
    tokenizer: Any | None = None,
    eos_id: int | None = None,
    max_batch_size: int | None = None,
    compile: bool = False,
) -> list[Completion]:
    """Generate for prompts of different lengths, each with its own parameters, batched.

    Sequences are decoded together; when one finishes the next waiting prompt takes its slot.

    Args:
        model: a gptforge model.
        prompts: token id lists (any lengths).
        params: one :class:`SamplingParams` for all or one per prompt.
        tokenizer: to produce text (and honour stop strings).
        eos_id: default ``tokenizer.eot_token``.
        max_batch_size: slots (default: all prompts at once).
        compile: decode through ``torch.compile`` (see :class:`BatchGenerator`).

    Returns:
        one :class:`Completion` per prompt, in order.
    """
    plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(plist) != len(prompts):
        raise ValueError(
            f"params: got {len(plist)} for {len(prompts)} prompts; give one or one each"
        )
    if not prompts:
        return []
    plist = [p if p.seed is not None else _with_seed(p) for p in plist]
    need = max(len(p) + q.max_new_tokens for p, q in zip(prompts, plist, strict=True))
    gen = BatchGenerator(
        model,
        max_batch_size=min(max_batch_size or len(prompts), len(prompts)),
        max_seq_len=cache_length(model, need, compile=compile),
        tokenizer=tokenizer,
        eos_id=eos_id,
        compile=compile,
    )
    for p, q in zip(prompts, plist, strict=True):
        gen.validate(p, q)
    store: dict[int, list[TokenEvent]] = {}
    waiting = list(range(len(prompts)))[::-1]
    while waiting or gen.num_active:
        while waiting and gen.free_slots:
            i = waiting.pop()
            _collect([gen.add(prompts[i], plist[i], seq_id=i)], store)
        _collect(gen.step(), store)
    return [
        _completion(i, list(prompts[i]), plist[i], plist[i].seed or 0, store[i])
        for i in range(len(prompts))
    ]


def _with_seed(p: SamplingParams) -> SamplingParams:
    from dataclasses import replace

    return replace(p, seed=fresh_seed())


@torch.inference_mode()
def stream_generate(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    params: SamplingParams = SamplingParams(),
    *,
    tokenizer: Any | None = None,
    eos_id: int | None = None,
    compile: bool = False,
) -> Iterator[TokenEvent]:
    """Yield the events of one sequence as they are generated (batch 1, shared positions).

    ``compile=True`` decodes through ``torch.compile`` (see :class:`BatchGenerator`).

    >>> # for ev in stream_generate(model, tok.encode("Once"), SamplingParams(), tokenizer=tok):
    >>> #     print(ev.text, end="", flush=True)
    """
    gen = BatchGenerator(
        model,
        max_batch_size=1,
        max_seq_len=cache_length(model, len(prompt_ids) + params.max_new_tokens, compile=compile),
        tokenizer=tokenizer,
        eos_id=eos_id,
        compile=compile,
    )
    ev = gen.add(prompt_ids, params)
    yield ev
    while ev.finish_reason is None:
        (ev,) = gen.step()
        yield ev
