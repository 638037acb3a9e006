"""CLI verbs of the generation area: ``generate``, ``serve generation``, ``client generate``.

torch, grpc and the service are imported inside the commands so ``gptforge --help`` stays fast.
``stream_completion`` is the reusable piece (``gptforge chat`` prints its replies through it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from gptforge.cli.options import DeviceOpt, warn_token_on_command_line

AUTH_ENV = "GPTFORGE_AUTH_TOKEN"
DEFAULT_TARGET = "127.0.0.1:50052"
DTYPES = ("float32", "bfloat16", "float16")

CkptOpt = Annotated[
    Path,
    typer.Option("--ckpt", help="Run directory, model directory or Hugging Face directory."),
]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")]
TempOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus mass in (0, 1] (1 = off).")]
RepOpt = Annotated[float, typer.Option("--repetition-penalty", help="> 0; 1 = off (CTRL-style).")]
MinNewOpt = Annotated[
    int, typer.Option("--min-new-tokens", help="EOS/stop ids masked until this many tokens.")
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of this generation (default: random).")]
StopOpt = Annotated[
    list[str] | None, typer.Option("--stop", help="Stop string (repeatable); may span tokens.")
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="Decode weight mode: float32, float16 (fast on CPU), bfloat16, int8-dynamic "
        "(CPU; logits checked against fp32 in bench-generate). Default: as loaded."
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Decode through torch.compile (CUDA graphs on a GPU); the first step compiles. "
        "For GPUs: on CPU it measured no faster than eager.",
    ),
]
SlideOpt = Annotated[
    int | None,
    typer.Option(
        "--slide-tokens",
        help="Past the context: each time the window is full, drop its N oldest tokens and "
        "recompute the cache over the rest, so every N new tokens cost one extra forward over "
        "context - N + 1 tokens (default: a quarter of the context; 1 = crop at every step, a "
        "full-context forward per token; 0 = refuse to go past the context).",
    ),
]
DtypeOpt = Annotated[
    str, typer.Option(help=f"Weight dtype: one of {', '.join(DTYPES)} (default: as saved).")
]
AuthOpt = Annotated[
    str | None,
    typer.Option(
        "--auth-token",
        envvar=AUTH_ENV,
        show_envvar=True,
        help="Shared token (server: required on calls; client: sent).",
    ),
]


def _torch_dtype(name: str | None) -> Any:
    import torch

    if name is None or name == "":
        return None
    if name not in DTYPES:
        raise typer.BadParameter(f"--dtype {name!r} is not one of {list(DTYPES)}")
    return getattr(torch, name)


def slide_for(model: Any, prompt_len: int, max_new_tokens: int, slide_tokens: int | None) -> int:
    """``slide_tokens`` for a generation, with a one-line notice on stderr when the window
    slides (``None``: a quarter of the context)."""
    from gptforge.sampling.core import context_limit

    context = context_limit(model)
    if context is None or prompt_len + max_new_tokens <= context:
        return slide_tokens or 0
    slide = max(1, context // 4) if slide_tokens is None else slide_tokens
    if not 0 <= slide <= context:
        raise ValueError(f"--slide-tokens must be in [0, {context}] (the context), got {slide}")
    if slide == 0:
        raise ValueError(
            f"--max-new-tokens {max_new_tokens} + {prompt_len} prompt tokens exceed the context "
            f"of {context}; use --max-new-tokens {max(context - prompt_len, 1)}, a shorter "
            "prompt, or --slide-tokens N to slide a window past the context"
        )
    typer.secho(
        f"note: {prompt_len} prompt + {max_new_tokens} new tokens exceed the context of "
        f"{context}; sliding the window {slide} tokens at a time (the cache is recomputed "
        "at each slide; --slide-tokens 0 refuses instead)",
        err=True,
        dim=True,
    )
    return slide


def stream_completion(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    params: Any,
    out: IO[str] | None = None,
    *,
    compile: bool = False,
) -> Any:
    """Generate with ``params`` and write each text delta to ``out`` as it arrives.

    Returns the finished ``gptforge.sampling.Completion``-like summary: the last
    ``TokenEvent`` plus ``text`` and ``token_ids`` attributes (a simple namespace).
    """
    from types import SimpleNamespace

    from gptforge.sampling import stream_generate

    out = out or sys.stdout
    text, ids, last = [], [], None
    for ev in stream_generate(model, prompt_ids, params, tokenizer=tokenizer, compile=compile):
        if ev.text:
            out.write(ev.text)
            out.flush()
        text.append(ev.text)
        ids.append(ev.token_id)
        last = ev
    return SimpleNamespace(
        text="".join(text), token_ids=ids, finish_reason=last.finish_reason if last else None
    )


def generate(
    ckpt: CkptOpt,
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt text.")] = "",
    max_new_tokens: MaxNewOpt = 64,
    temperature: TempOpt = 0.8,
    top_k: TopKOpt = 200,
    top_p: TopPOpt = 1.0,
    repetition_penalty: RepOpt = 1.0,
    min_new_tokens: MinNewOpt = 0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    allow_special_tokens: Annotated[
        bool, typer.Option("--allow-special-tokens", help="Encode special-token text as specials.")
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "",
    precision: PrecisionOpt = "",
    compile: CompileOpt = False,
    slide_tokens: SlideOpt = None,
) -> None:
    """Generate text from a trained model and stream it to the terminal.

    Works for every architecture through the model interface (KV cache or recurrent state).
    An empty --prompt starts from the end-of-text token. Past the model's context a sliding
    window goes on (see --slide-tokens for what it costs).
    """
    from dataclasses import replace

    from gptforge.conversion import load_any
    from gptforge.sampling import SamplingParams

    try:
        params = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            min_new_tokens=min_new_tokens,
            seed=seed,
            stop=tuple(stop or ()),
        )
        model, tok, _ = load_any(
            ckpt, device=device, dtype=_torch_dtype(dtype), require_tokenizer=True
        )
        if precision:
            from gptforge.sampling.precision import apply_weight_precision

            model = apply_weight_precision(model, precision)
        ids = (
            tok.encode(prompt, allowed_special="all" if allow_special_tokens else frozenset())
            if prompt
            else [tok.eot_token]
        )
        slide = slide_for(model, len(ids), max_new_tokens, slide_tokens)
        params = replace(params, slide_tokens=slide)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from exc
    sys.stdout.write(prompt)
    done = stream_completion(model, tok, ids, params, compile=compile)
    sys.stdout.write("\n")
    typer.secho(f"[{len(done.token_ids)} tokens, finish: {done.finish_reason}]", err=True, dim=True)


def serve_generation(
    ckpt: CkptOpt,
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port).")] = 50052,
    max_batch_size: Annotated[int, typer.Option(help="Sequences decoded together.")] = 16,
    max_tokens_in_flight: Annotated[
        int,
        typer.Option(help="Admission budget (prompt + max_new_tokens); 0 = 2 x batch x context."),
    ] = 0,
    default_max_new_tokens: Annotated[
        int, typer.Option(help="max_new_tokens when a request leaves it unset.")
    ] = 128,
    context_length: Annotated[
        int, typer.Option(help="Positions per sequence (0 = the model's block_size).")
    ] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "",
    precision: PrecisionOpt = "",
    compile: CompileOpt = False,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate chain.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    auth_token: AuthOpt = None,
    max_receive_message_bytes: Annotated[
        int, typer.Option(help="Largest request message; gRPC refuses larger ones unparsed.")
    ] = 4 * 1024 * 1024,
    grace_seconds: Annotated[
        float, typer.Option(help="Time in-flight streams get on SIGTERM/SIGINT.")
    ] = 30.0,
) -> None:
    """Serve a model over gRPC (GenerationService v1) with continuous batching.

    Health is NOT_SERVING until the model is loaded and warmed up; SIGTERM/SIGINT stops
    gracefully (streams in flight finish, new calls get UNAVAILABLE).
    """
    from gptforge.api.server import ServerConfig
    from gptforge.services.generation import GenerationLimits, serve

    warn_token_on_command_line()
    if host not in {"127.0.0.1", "localhost", "::1"} and (auth_token is None or tls_cert is None):
        typer.secho(
            f"warning: serving on {host!r} without TLS and an auth token", err=True, fg="yellow"
        )
    try:
        config = ServerConfig(
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            auth_token=auth_token,
            grace_seconds=grace_seconds,
            max_receive_message_bytes=max_receive_message_bytes,
        )
        limits = GenerationLimits(
            max_batch_size=max_batch_size,
            max_tokens_in_flight=max_tokens_in_flight or None,
            default_max_new_tokens=default_max_new_tokens,
            context_length=context_length or None,
        )
        serve(
            ckpt,
            config,
            limits,
            device=device,
            dtype=_torch_dtype(dtype),
            precision=precision or None,
            compile=compile,
        )
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from exc


def client_generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    target: Annotated[
        str, typer.Option("--target", help="host:port of the service.")
    ] = DEFAULT_TARGET,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print text as it comes.")
    ] = True,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Most new tokens (default: server's).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy (default 1).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    auth_token: AuthOpt = None,
    tls_root_cert: Annotated[
        Path | None, typer.Option("--tls-root-cert", help="PEM to trust for a TLS server.")
    ] = None,
) -> None:
    """Call a running generation service and print the completion."""
    import grpc
    from gptforge.services.generation import GenerationClient

    kw = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or (),
    )
    try:
        with GenerationClient(target, auth_token=auth_token, tls_root_cert=tls_root_cert) as c:
            if stream:
                usage = None
                for chunk in c.generate_stream(prompt, **kw):
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                    if chunk.HasField("usage"):
                        usage = chunk.usage
                sys.stdout.write("\n")
                if usage is not None:
                    typer.secho(f"[{usage.completion_tokens} tokens]", err=True, dim=True)
            else:
                resp = c.generate(prompt, **kw)
                print(resp.completions[0].text)
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details()
        hint = ""
        if code == "UNAVAILABLE":
            hint = " (is it running? `gptforge serve generation --ckpt RUN_DIR`)"
        elif code == "UNAUTHENTICATED":
            hint = f" (pass --auth-token or set {AUTH_ENV})"
        typer.secho(f"error: {code}: {details}{hint}", err=True, fg="red")
        raise typer.Exit(1) from exc


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the root app and the shared groups."""
    root.command("generate")(generate)
    groups["serve"].command("generation")(serve_generation)
    groups["client"].command("generate")(client_generate)
