"""The engine thread: continuous batching over ``gptforge.sampling.BatchGenerator``.

Handlers never touch the model. They :meth:`Engine.submit` a :class:`Job` (admission control
happens right there, under a lock, so an over-full server answers at once) and receive
:class:`EngineEvent` objects through the job's ``sink`` callback, which the servicer points at an
``asyncio.Queue`` of its own event loop. One thread owns the model and loops:

1. drop cancelled jobs (their slots free up before the next decode step);
2. admit waiting sequences into free slots (prefill + first token);
3. one batched decode step for every live sequence.

An exception inside a step fails the affected jobs with an ``internal`` event and the loop goes
on with a clean batch, so one bad step never takes the service down.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from gptforge.modeling.protocol import LanguageModel
from gptforge.sampling import BatchGenerator, SamplingParams, TokenEvent
from gptforge.sampling.core import model_config

log = logging.getLogger("gptforge.services.generation")


class EngineOverloadedError(Exception):
    """The admission budget (tokens in flight) cannot take the job now."""


class RequestTooLargeError(ValueError):
    """The job needs more than the whole admission budget: it can never run, retrying is futile."""


class EngineClosedError(Exception):
    """The engine is stopped (or not started) and takes no new jobs."""


@dataclass
class EngineEvent:
    """What the engine tells a handler: a token of completion ``index``, or the job's end.

    ``kind`` is ``"token"`` (``token`` set), ``"done"`` (every completion finished),
    ``"invalid"`` (the request cannot run: ``message`` says why) or ``"internal"`` (the engine
    failed while running it).
    """

    kind: Literal["token", "done", "invalid", "internal"]
    index: int = 0
    token: TokenEvent | None = None
    seed: int = 0
    message: str = ""


@dataclass
class Job:
    """One request: a prompt and one :class:`SamplingParams` per completion."""

    prompt_ids: list[int]
    params: list[SamplingParams]
    sink: Callable[[EngineEvent], None]
    job_id: int = 0
    cancelled: bool = False
    remaining: int = 0
    cost: int = 0
    seq_ids: list[int] = field(default_factory=list)

    @property
    def tokens_in_flight(self) -> int:
        """Admission cost: prompt + max_new_tokens, summed over the completions."""
        return sum(len(self.prompt_ids) + p.max_new_tokens for p in self.params)


class Engine:
    """Owns the model and runs continuous batching on one thread.

    Args:
        model: a gptforge model in eval mode.
        tokenizer: the model's tokenizer (text deltas, stop strings, EOS).
        max_batch_size: sequences decoded together.
        max_seq_len: positions per sequence (default ``model.config.block_size``).
        max_tokens_in_flight: admission budget over running and queued jobs.
        compile: decode through ``torch.compile`` (CUDA graphs on a GPU); the engine thread
            compiles every batch bucket (``BatchGenerator.precompile``) before it serves the
            warm-up request, so health turns SERVING only after all compiles.
    """

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Any,
        *,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        max_tokens_in_flight: int | None = None,
        compile: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len or model_config(model).block_size
        self.max_tokens_in_flight = max_tokens_in_flight or 2 * max_batch_size * self.max_seq_len
        self.gen = BatchGenerator(
            model,
            max_batch_size=max_batch_size,
            max_seq_len=self.max_seq_len,
            tokenizer=tokenizer,
            compile=compile,
        )
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[tuple[Job, int]] = collections.deque()
        self._jobs: dict[int, Job] = {}
        self._owner: dict[int, tuple[Job, int]] = {}  # seq_id -> (job, completion index)
        self._in_flight = 0
        self._ids = itertools.count()
        self._seq_ids = itertools.count()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="gptforge-engine", daemon=True)
        self.steps = 0

    # -- handler side (any thread) ------------------------------------------------------------

    @property
    def tokens_in_flight(self) -> int:
        """Admission budget in use (prompt + max_new_tokens of running and queued sequences)."""
        return self._in_flight

    @property
    def num_active(self) -> int:
        """Sequences holding a slot."""
        return self.gen.num_active

    def start(self) -> Engine:
        """Start the engine thread."""
        self._thread.start()
        return self

    def submit(self, job: Job) -> Job:
        """Queue a job, or raise at once: :class:`EngineOverloadedError` when it does not fit
        now, :class:`RequestTooLargeError` when it never can."""
        cost = job.tokens_in_flight
        if cost > self.max_tokens_in_flight:
            raise RequestTooLargeError(
                f"this request needs {cost} tokens in flight (prompt + max_new_tokens, summed "
                f"over its {len(job.params)} completions) but the server's whole budget is "
                f"max_tokens_in_flight={self.max_tokens_in_flight}; lower n or max_new_tokens, "
                "or shorten the prompt"
            )
        with self._wake:
            if self._stop or not self._thread.is_alive():
                raise EngineClosedError("the generation engine is stopped")
            if self._in_flight + cost > self.max_tokens_in_flight:
                raise EngineOverloadedError(
                    f"server is full: {self._in_flight} of {self.max_tokens_in_flight} tokens in "
                    f"flight, this request needs {cost} (prompt + max_new_tokens per completion); "
                    "retry later or ask for fewer tokens"
                )
            job.job_id = next(self._ids)
            job.cost = cost
            job.remaining = len(job.params)
            self._in_flight += cost
            self._jobs[job.job_id] = job
            self._waiting.extend((job, i) for i in range(len(job.params)))
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Mark a job cancelled; its slots are freed before the next decode step."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; jobs still running are ended with an ``internal`` event."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        try:  # compile=True: every batch bucket now, before the warm-up request is served
            if shapes := self.gen.precompile():
                log.info("decode step compiled for %d batch sizes", shapes)
        except Exception:
            log.exception("compiling the decode step failed; requests will try again")
        while True:
            with self._wake:
                while not (self._stop or self._waiting or self._owner or self._has_cancelled()):
                    self._wake.wait()
                if self._stop:
                    break
            try:
                self._drop_cancelled()
                self._admit()
                self._step()
            except Exception:  # a bug here must not kill the thread: fail everything, go on
                log.exception("engine loop failed; failing every job in flight")
                for seq in self.gen.cancel_all():
                    self._owner.pop(seq.seq_id, None)
                with self._lock:
                    jobs = list(self._jobs.values())
                for job in jobs:
                    self._fail(job, "internal", "engine loop failed")
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self._fail(job, "internal", "the generation engine stopped before the request finished")

    def _has_cancelled(self) -> bool:
        return any(job.cancelled for job in self._jobs.values())

    def _drop_cancelled(self) -> None:
        with self._lock:  # handlers add jobs concurrently
            cancelled = [j for j in self._jobs.values() if j.cancelled]
        for job in cancelled:
            for seq_id in job.seq_ids:
                self.gen.cancel(seq_id)
                self._owner.pop(seq_id, None)
            self._finish_job(job)

    def _admit(self) -> None:
        while self.gen.free_slots:
            with self._lock:
                if not self._waiting:
                    return
                job, index = self._waiting.popleft()
            if job.cancelled or job.job_id not in self._jobs:
                continue
            seq_id = next(self._seq_ids)
            try:
                event = self.gen.add(job.prompt_ids, job.params[index], seq_id=seq_id)
            except ValueError as exc:
                self._fail(job, "invalid", str(exc))
                continue
            except Exception as exc:
                log.exception("prefill failed (job %d)", job.job_id)
                self._fail(job, "internal", f"prefill failed ({type(exc).__name__})")
                continue
            job.seq_ids.append(seq_id)
            self._owner[seq_id] = (job, index)
            self._deliver(event)

    def _step(self) -> None:
        if not self._owner:
            return
        try:
            events = self.gen.step()
        except Exception as exc:
            log.exception("decode step failed; failing %d sequences", len(self._owner))
            # BatchGenerator released every slot; fail their jobs and carry on with a clean batch.
            for job in {id(j): j for j, _ in self._owner.values()}.values():
                self._fail(job, "internal", f"decode step failed ({type(exc).__name__})")
            return
        self.steps += 1
        for event in events:
            self._deliver(event)

    def _deliver(self, event: TokenEvent) -> None:
        owner = self._owner.get(event.seq_id)
        if owner is None:
            return
        job, index = owner
        seed = job.params[index].seed or 0
        job.sink(EngineEvent("token", index, event, seed))
        if event.finish_reason is not None:
            del self._owner[event.seq_id]
            job.remaining -= 1
            if job.remaining == 0:
                self._finish_job(job)
                job.sink(EngineEvent("done"))

    def _fail(self, job: Job, kind: Literal["invalid", "internal"], message: str) -> None:
        for seq_id in job.seq_ids:
            self.gen.cancel(seq_id)
            self._owner.pop(seq_id, None)
        if self._finish_job(job):
            job.sink(EngineEvent(kind, message=message))

    def _finish_job(self, job: Job) -> bool:
        """Return the job's budget; False if it was already finished."""
        with self._lock:
            if self._jobs.pop(job.job_id, None) is None:
                return False
            self._in_flight -= job.cost
            if self._waiting:
                self._waiting = collections.deque((j, i) for j, i in self._waiting if j is not job)
            return True
