"""The v1 ``GenerationService`` servicer: validation, the engine queue, and proto mapping.

Handlers run on the ``grpc.aio`` event loop and never compute: they validate and tokenize the
request on a small thread pool (work that grows with the input never runs on the loop, which
must keep streaming tokens and answering health checks), submit a job to the :class:`Engine`
thread and await its events from an ``asyncio.Queue``. When the call
ends early (client cancel, disconnect, deadline) the job is cancelled and its slots free up
before the next decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from gptforge.api.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
    grpc_errors,
)
from gptforge.api.generation.v1 import generation_pb2 as pb
from gptforge.api.generation.v1 import generation_pb2_grpc as pb_grpc
from gptforge.api.server import REQUEST_BYTES
from gptforge.sampling import TokenEvent
from gptforge.sampling.core import model_config
from gptforge.services.generation.engine import (
    Engine,
    EngineClosedError,
    EngineEvent,
    EngineOverloadedError,
    Job,
    RequestTooLargeError,
)
from gptforge.services.generation.requests import GenerationLimits, ParsedRequest, parse_request

log = logging.getLogger("gptforge.services.generation")
# Threads that parse and tokenize requests; each request is bounded by max_prompt_bytes.
PARSE_THREADS = 2

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name

_FINISH = {
    "eos": pb.FINISH_REASON_EOS,
    "stop_token": pb.FINISH_REASON_STOP_TOKEN,
    "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE,
    "length": pb.FINISH_REASON_LENGTH,
    "context_length": pb.FINISH_REASON_CONTEXT_LENGTH,
}


class InternalError(ServiceError):
    """The engine failed while running the request: ``INTERNAL``."""

    code = grpc.StatusCode.INTERNAL


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    """Serves one model through an :class:`Engine` attached once the model is loaded.

    Args:
        model_id: reported name of the model.
        message_limits: the server's (receive, send) message sizes, for GetModelInfo.
    """

    def __init__(self, *, model_id: str = "", message_limits: tuple[int, int] = (0, 0)) -> None:
        self.model_id = model_id
        self.message_limits = message_limits
        self.engine: Engine | None = None
        self.limits = GenerationLimits()
        self.vocab_size = 0
        self.ready = False
        self._parse_pool = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="gptforge-parse")

    def attach(self, engine: Engine, limits: GenerationLimits) -> None:
        """Serve ``engine`` with resolved ``limits`` (calls are UNAVAILABLE until :attr:`ready`)."""
        self.engine = engine
        self.limits = limits
        self.vocab_size = model_config(engine.model).vocab_size

    def _engine(self) -> Engine:
        if self.engine is None or not self.ready:
            raise UnavailableError(
                "the model is still loading/warming up; retry when health reports SERVING"
            )
        return self.engine

    # -- RPCs -----------------------------------------------------------------------------------

    @grpc_errors
    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        engine = self._engine()
        parsed, job, queue = await self._start(request)
        n = len(parsed.params)
        events: list[list[TokenEvent]] = [[] for _ in range(n)]
        try:
            while True:
                ev = await queue.get()
                if ev.kind == "token":
                    assert ev.token is not None
                    events[ev.index].append(ev.token)
                elif ev.kind == "done":
                    break
                else:
                    self._raise_for(ev)
        finally:
            if job.remaining:
                engine.cancel(job)
        completions = [self._completion(i, parsed, events[i]) for i in range(n)]
        return pb.GenerateResponse(
            completions=completions,
            usage=self._usage(parsed, sum(len(c.token_ids) for c in completions)),
            model_id=self.model_id,
            request_id=parsed.request_id,
        )

    @grpc_errors
    async def GenerateStream(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        engine = self._engine()
        parsed, job, queue = await self._start(request)
        generated = 0
        try:
            while True:
                ev = await queue.get()
                if ev.kind == "token":
                    tok = ev.token
                    assert tok is not None
                    generated += 1
                    yield self._chunk(ev.index, parsed, tok)
                elif ev.kind == "done":
                    break
                else:
                    self._raise_for(ev)
            yield pb.GenerateStreamResponse(
                usage=self._usage(parsed, generated), request_id=parsed.request_id
            )
        finally:
            # Cancel, disconnect and deadline land here (CancelledError / GeneratorExit).
            if job.remaining:
                engine.cancel(job)

    @grpc_errors
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Any
    ) -> pb.GetModelInfoResponse:
        engine = self._engine()
        model, tok, lim = engine.model, engine.tokenizer, self.limits
        param = next(model.parameters())
        return pb.GetModelInfoResponse(
            model_id=self.model_id,
            architecture=getattr(model_config(model), "arch", type(model).__name__.lower()),
            context_length=lim.context_length,
            vocab_size=self.vocab_size,
            num_parameters=model.num_params(),
            dtype=str(param.dtype).removeprefix("torch."),
            device=str(param.device),
            eos_token_id=int(tok.eot_token),
            special_tokens={k: int(v) for k, v in getattr(tok, "special_tokens", {}).items()},
            tokenizer_fingerprint=str(getattr(tok, "fingerprint", "")),
            limits=pb.ServerLimits(
                max_new_tokens=lim.max_new_tokens,
                default_max_new_tokens=lim.default_max_new_tokens,
                max_prompt_tokens=(lim.context_length or 1) - 1,
                max_batch_size=lim.max_batch_size,
                max_tokens_in_flight=lim.max_tokens_in_flight,
                max_n=lim.max_n,
                max_top_logprobs=lim.max_top_logprobs,
                max_stop_sequences=lim.max_stop_sequences,
                max_stop_sequence_bytes=lim.max_stop_sequence_bytes,
                max_stop_token_ids=lim.max_stop_token_ids,
                max_receive_message_bytes=self.message_limits[0],
                max_send_message_bytes=self.message_limits[1],
            ),
        )

    # -- helpers --------------------------------------------------------------------------------

    async def _start(
        self, request: pb.GenerateRequest
    ) -> tuple[ParsedRequest, Job, asyncio.Queue[EngineEvent]]:
        engine = self._engine()
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(
            self._parse_pool,
            parse_request,
            request,
            engine.tokenizer,
            self.vocab_size,
            self.limits,
            REQUEST_BYTES.get(),
        )
        queue: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def sink(ev: EngineEvent) -> None:
            # A closed loop means the server is gone and nobody listens any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, ev)

        job = Job(parsed.prompt_ids, parsed.params, sink)
        try:
            engine.submit(job)
        except RequestTooLargeError as exc:
            raise InvalidArgumentError(str(exc)) from None
        except EngineOverloadedError as exc:
            raise ResourceExhaustedError(str(exc)) from None
        except EngineClosedError as exc:
            raise UnavailableError(f"{exc}; the server is shutting down") from None
        return parsed, job, queue

    @staticmethod
    def _raise_for(ev: EngineEvent) -> None:
        if ev.kind == "invalid":
            raise InvalidArgumentError(ev.message)
        raise InternalError(f"generation failed: {ev.message}; the server has recovered, retry")

    def _finish(self, parsed: ParsedRequest, reason: str | None) -> Any:
        if reason == "length" and parsed.cut_to_context:
            return pb.FINISH_REASON_CONTEXT_LENGTH
        return _FINISH.get(reason or "", pb.FINISH_REASON_UNSPECIFIED)

    def _token_logprob(self, tok: TokenEvent) -> pb.TokenLogprob:
        decode = self._engine().tokenizer.decode_bytes

        def piece(ids: list[int]) -> bytes:
            try:
                return decode(ids)
            except (ValueError, KeyError):  # an id past the tokenizer (padded model vocab)
                return b""

        return pb.TokenLogprob(
            token_id=tok.token_id,
            token=piece([tok.token_id]),
            logprob=tok.logprob or 0.0,
            top_logprobs=[
                pb.Logprob(token_id=i, token=piece([i]), logprob=v)
                for i, v in tok.top_logprobs or []
            ],
        )

    def _chunk(
        self, index: int, parsed: ParsedRequest, tok: TokenEvent
    ) -> pb.GenerateStreamResponse:
        msg = pb.GenerateStreamResponse(
            index=index,
            text=tok.text,
            token_ids=[tok.token_id],
            finish_reason=self._finish(parsed, tok.finish_reason),
            seed=parsed.params[index].seed or 0,
            matched_stop_sequence=tok.matched_stop or "",
            request_id=parsed.request_id,
        )
        if tok.matched_stop_token is not None:
            msg.matched_stop_token_id = tok.matched_stop_token
        if parsed.params[index].logprobs is not None:
            msg.logprobs.append(self._token_logprob(tok))
        return msg

    def _completion(
        self, index: int, parsed: ParsedRequest, toks: list[TokenEvent]
    ) -> pb.Completion:
        last = toks[-1]
        c = pb.Completion(
            index=index,
            text="".join(t.text for t in toks),
            token_ids=[t.token_id for t in toks],
            finish_reason=self._finish(parsed, last.finish_reason),
            seed=parsed.params[index].seed or 0,
            matched_stop_sequence=last.matched_stop or "",
        )
        if last.matched_stop_token is not None:
            c.matched_stop_token_id = last.matched_stop_token
        if parsed.params[index].logprobs is not None:
            c.logprobs.extend(self._token_logprob(t) for t in toks)
        return c

    @staticmethod
    def _usage(parsed: ParsedRequest, generated: int) -> pb.Usage:
        prompt = len(parsed.prompt_ids)
        return pb.Usage(
            prompt_tokens=prompt,
            completion_tokens=generated,
            total_tokens=prompt + generated,
            truncated_prompt_tokens=parsed.truncated,
        )
