"""Start the generation service: ``start`` (async), ``serve`` (blocking, signals), background.

Start-up order: the server binds first and reports NOT_SERVING; the model loads and the engine
runs one warm-up request; only then health turns SERVING and calls are taken (before that they
get UNAVAILABLE). Stopping is graceful: health NOT_SERVING, new calls UNAVAILABLE, streams in
flight run to the end within the grace period, then the engine thread stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from gptforge.api.generation.v1 import generation_pb2_grpc as pb_grpc
from gptforge.api.server import (
    BackgroundServer,
    RunningServer,
    ServerConfig,
    serve_until_signal,
    start_server,
)
from gptforge.modeling.protocol import LanguageModel
from gptforge.sampling import SamplingParams
from gptforge.sampling.core import context_limit, model_config
from gptforge.services.generation.engine import Engine, EngineEvent, Job
from gptforge.services.generation.requests import GenerationLimits
from gptforge.services.generation.servicer import SERVICE_NAME, GenerationServicer

log = logging.getLogger("gptforge.services.generation")

ModelLoader = Callable[[], tuple[LanguageModel, Any]]
T = TypeVar("T")
# Generation requests are small (a prompt fits the context); a lower receive limit than the
# shared default makes gRPC refuse a huge message before Python parses it (parsing holds the
# GIL, which would pause every stream). Token-id prompts with truncate_prompt fit ~800k ids.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass
class GenerationServer(RunningServer):
    """A running generation server; :meth:`stop` also stops the engine thread."""

    servicer: GenerationServicer | None = None
    engine: Engine | None = None
    loading: asyncio.Task[None] | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop of the gRPC server, then of the engine."""
        await super().stop(grace)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)


def warm_up(engine: Engine, timeout: float = 300.0) -> None:
    """Run one tiny request through the engine (first-call allocations, kernels)."""
    done = threading.Event()
    errors: list[str] = []

    def sink(ev: EngineEvent) -> None:
        if ev.kind in ("invalid", "internal"):
            errors.append(ev.message)
        if ev.kind != "token":
            done.set()

    eos = int(getattr(engine.tokenizer, "eot_token", 0))
    engine.submit(Job([eos], [SamplingParams(max_new_tokens=2, seed=0, ignore_eos=True)], sink))
    if not done.wait(timeout):
        raise RuntimeError(f"warm-up did not finish in {timeout:.0f}s")
    if errors:
        raise RuntimeError(f"warm-up failed: {errors[0]}")


async def start(
    model: LanguageModel | ModelLoader,
    tokenizer: Any = None,
    config: ServerConfig | None = None,
    limits: GenerationLimits | None = None,
    *,
    model_id: str = "",
    wait_ready: bool = True,
    compile: bool = False,
) -> GenerationServer:
    """Start a GenerationService on the running loop; by default returns once the model is warm.

    Args:
        model: a model (with ``tokenizer``), or a zero-argument loader returning
            ``(model, tokenizer)``, called on a worker thread while health says NOT_SERVING.
        tokenizer: the model's ``gptforge.tokenizer.Tokenizer`` (when ``model`` is a model).
        config: network settings (loopback and a free port by default).
        limits: request limits and batching (:class:`GenerationLimits`).
        model_id: reported by GetModelInfo.
        wait_ready: False returns right after binding (health NOT_SERVING); loading goes on in
            ``server.loading`` and health turns SERVING when it is done.
        compile: decode through ``torch.compile`` (CUDA graphs on a GPU); compiled during
            the warm-up, before health turns SERVING.
    """
    config = config or ServerConfig(max_receive_message_bytes=MAX_REQUEST_BYTES)
    servicer = GenerationServicer(
        model_id=model_id,
        message_limits=(config.max_receive_message_bytes, config.max_send_message_bytes),
    )
    running = await start_server(
        config,
        lambda server: pb_grpc.add_GenerationServiceServicer_to_server(servicer, server),
        [SERVICE_NAME],
        serving=False,
    )
    base = {f.name: getattr(running, f.name) for f in dataclasses.fields(RunningServer)}
    server = GenerationServer(**base, servicer=servicer)

    async def load() -> None:
        try:
            engine, resolved = await _in_daemon_thread(
                _build_engine, model, tokenizer, limits or GenerationLimits(), compile
            )
        except asyncio.CancelledError:  # a signal during start-up (serve_until_signal)
            raise
        except (ValueError, OSError) as exc:  # bad limits or files: one line, no traceback
            log.error("loading the model failed: %s; stopping the server", exc)
            await running.stop(0)
            raise
        except BaseException:
            log.exception("loading the model failed; stopping the server")
            await running.stop(0)
            raise
        server.engine = engine
        servicer.attach(engine, resolved)
        servicer.ready = True
        await server.set_serving(True)
        log.info("model loaded and warmed up; SERVING")

    server.loading = asyncio.ensure_future(load())
    if wait_ready:
        await server.loading
    return server


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on a daemon thread: unlike ``asyncio.to_thread``, a process told to stop
    during a long load or compile exits without waiting for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="gptforge-model-load", daemon=True).start()
    return await future


def longest_token_bytes(tokenizer: Any) -> int:
    """Bytes of the tokenizer's longest token (special-token text included): a prompt of B
    bytes has at least B / this many tokens."""
    specials = dict(getattr(tokenizer, "special_tokens", {}))
    longest = max((len(s.encode()) for s in specials), default=1)
    ranks = getattr(tokenizer, "mergeable_ranks", None)
    if ranks is not None:
        return max(longest, *(len(b) for b in ranks))
    special_ids = set(specials.values())
    pieces = (tokenizer.decode_bytes([i]) for i in range(int(tokenizer.n_vocab)))
    return max(longest, *(len(p) for i, p in enumerate(pieces) if i not in special_ids))


def _build_engine(
    model: LanguageModel | ModelLoader,
    tokenizer: Any,
    limits: GenerationLimits,
    compile: bool = False,
) -> tuple[Engine, GenerationLimits]:
    if isinstance(model, torch.nn.Module):
        lm = cast(LanguageModel, model)
    else:
        lm, tokenizer = cast(ModelLoader, model)()
    if tokenizer is None:
        raise ValueError("tokenizer: the generation service needs the model's tokenizer")
    lm.eval()
    resolved = limits.resolved(
        model_config(lm).block_size,
        unbounded=context_limit(lm) is None,
        max_token_bytes=longest_token_bytes(tokenizer),
    )
    # Every model family keeps its cache state in explicit rows, so all share slots.
    engine = Engine(
        lm,
        tokenizer,
        max_batch_size=resolved.max_batch_size,
        max_seq_len=resolved.context_length,
        max_tokens_in_flight=resolved.max_tokens_in_flight,
        compile=compile,
    )
    engine.start()
    try:
        warm_up(engine)
    except BaseException:
        engine.stop()
        raise
    return engine, resolved


def serve_in_background(
    model: LanguageModel | ModelLoader,
    tokenizer: Any = None,
    config: ServerConfig | None = None,
    limits: GenerationLimits | None = None,
    *,
    model_id: str = "",
    compile: bool = False,
) -> BackgroundServer:
    """Start the service on a background thread; ``.address`` to connect, ``.stop()`` to end.

    >>> with serve_in_background(model, tok) as bg:  # doctest: +SKIP
    ...     print(GenerationClient(bg.address).generate("Hello").completions[0].text)
    """
    return BackgroundServer(
        lambda: start(model, tokenizer, config, limits, model_id=model_id, compile=compile)
    ).start(timeout=600)


def serve(
    ckpt: str | Path,
    config: ServerConfig | None = None,
    limits: GenerationLimits | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    precision: str | None = None,
    compile: bool = False,
) -> None:
    """Serve the model in ``ckpt`` (run dir, model dir or HF dir) until SIGTERM/SIGINT.

    Args:
        ckpt: where the model is: anything ``gptforge.conversion.load_any`` reads.
        config: network settings (the CLI defaults to ``127.0.0.1:50052``).
        limits: request limits and batching.
        device: ``cpu`` or ``cuda``.
        dtype: weight dtype (default: as saved).
        precision: a decode weight mode of ``gptforge.sampling.precision`` (``float16``,
            ``int8-dynamic``, ...), applied after loading.
        compile: decode through ``torch.compile`` (CUDA graphs on a GPU).
    """
    from gptforge.conversion import detect_layout, find_model_dir, load_any
    from gptforge.conversion.peft_adapter import is_adapter_dir, lora_base_dir
    from gptforge.sampling.precision import MODES, apply_weight_precision

    # Fail before binding when the path is wrong (an unmerged LoRA run: when its base is).
    if is_adapter_dir(ckpt) and not (Path(ckpt) / "config.json").is_file():
        detect_layout(lora_base_dir(ckpt))
    else:
        detect_layout(find_model_dir(ckpt))
    if precision is not None and precision not in MODES:
        raise ValueError(f"precision {precision!r} is not one of {list(MODES)}")

    def load() -> tuple[LanguageModel, Any]:
        model, tok, _ = load_any(ckpt, device=device, dtype=dtype, require_tokenizer=True)
        if precision is not None:
            model = apply_weight_precision(model, precision)
        return model, tok

    serve_model(
        load,
        config or ServerConfig(port=50052, max_receive_message_bytes=MAX_REQUEST_BYTES),
        limits,
        Path(ckpt).resolve().name,
        compile,
    )


def serve_model(
    load: ModelLoader,
    config: ServerConfig,
    limits: GenerationLimits | None = None,
    model_id: str = "",
    compile: bool = False,
) -> None:
    """Bind, then load with ``load`` and serve until SIGTERM/SIGINT (the body of :func:`serve`).

    A signal while the model loads or warms up (a ``--compile`` may take minutes) stops the
    server at once and returns normally, without waiting for the load to finish.
    """

    async def main() -> None:
        server = await start(
            load, config=config, limits=limits, model_id=model_id, compile=compile, wait_ready=False
        )

        def announce() -> None:
            print(
                f"generation service listening on {server.address} (tls={config.tls}, "
                f"auth={config.auth_token is not None}); loading the model, health NOT_SERVING "
                "until it is warm; Ctrl-C to stop",
                flush=True,
            )

        assert server.loading is not None
        if await serve_until_signal(server, loading=server.loading, announce=announce):
            print("generation service stopped", flush=True)
        else:
            print("generation service stopped during start-up", flush=True)

    asyncio.run(main())
