"""Stage 5 of ``gptforge demo``: both gRPC services as real subprocesses, called by the clients.

The servers are started exactly as a user would (``gptforge serve tokenizer`` /
``gptforge serve generation``, through ``python -m gptforge.cli`` so the same interpreter runs
them) on free loopback ports, with their output in ``serve/*.log``. The stage waits for health
SERVING, tokenizes an instruction through the tokenizer service, streams the fine-tuned model's
answer from the generation service, decodes it through the tokenizer service again, and stops
both servers with SIGTERM (graceful shutdown), checking that they exit cleanly.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from gptforge.demo.pipeline import StageContext

TOKENIZER_START_TIMEOUT = 90.0
GENERATION_START_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def serving_device(run_dir: Path) -> str:
    """The device pre-training used (``auto`` resolved), so the server runs where training did."""
    from gptforge.modeling.device import auto_device_name
    from gptforge.training.pretrain import load_run_config

    name = str(load_run_config(run_dir / "pretrain")["config"].get("device", "auto"))
    return auto_device_name() if name == "auto" else name


class ServerProcess:
    """A ``gptforge serve ...`` subprocess with its log file; stopped with SIGTERM on exit.

    Args:
        name: ``tokenizer`` or ``generation`` (the ``serve`` verb).
        args: Flags after ``gptforge serve NAME``.
        log_path: Where stdout and stderr go.
    """

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [sys.executable, "-m", "gptforge.cli", "serve", name, *args]
        self.command += ["--host", "127.0.0.1", "--port", str(self.port)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        self.exit_code: int | None = None

    def check_alive(self) -> None:
        """Raise with the log's tail if the server exited."""
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"`gptforge serve {self.name}` exited with code {code} before serving; "
                f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def wait_serving(self, health: Any, timeout: float) -> float:
        """Poll ``health()`` until SERVING; returns the seconds since the process started."""
        import grpc

        deadline = time.monotonic() + timeout
        last = "unreachable"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                last = health()
                if last == "SERVING":
                    return time.perf_counter() - self.started
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.2)
        raise TimeoutError(
            f"`gptforge serve {self.name}` on {self.target} not SERVING after {timeout:.0f}s "
            f"(last health status {last}); see {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self) -> int:
        """SIGTERM, wait for the graceful shutdown (SIGKILL after a timeout); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.exit_code = self.proc.returncode
        return int(self.exit_code)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_servers(
    stack: ExitStack, ctx: StageContext, model_dir: Path
) -> tuple[ServerProcess, ServerProcess]:
    """Both servers on the model in ``model_dir``, stopped when ``stack`` closes."""
    logs = ctx.run_dir / "serve"
    tok_srv = stack.enter_context(
        ServerProcess(
            "tokenizer", ["--tokenizer", str(model_dir / "tokenizer")], logs / "tokenizer.log"
        )
    )
    gen_srv = stack.enter_context(
        ServerProcess(
            "generation",
            [
                "--ckpt",
                str(model_dir),
                "--max-batch-size",
                "4",
                "--default-max-new-tokens",
                "32",
                "--device",
                serving_device(ctx.run_dir),
            ],
            logs / "generation.log",
        )
    )
    ctx.log(
        f"started tokenizer service on {tok_srv.target}, generation service on {gen_srv.target}"
    )
    return tok_srv, gen_srv


def _check_tokenizer_service(client: Any, local: Any, text: str) -> int:
    """Raise unless the service encodes ``text`` as ``local`` does and decodes it back exactly;
    the number of tokens."""
    ids = client.encode(text)
    if ids != local.encode(text):
        raise RuntimeError(
            f"the tokenizer service encodes {text!r} as {ids}, locally {local.encode(text)}"
        )
    if client.decode(ids) != text:
        raise RuntimeError(
            f"the tokenizer service decodes {ids} to {client.decode(ids)!r}, not {text!r}"
        )
    info = client.info()
    if info.fingerprint != local.fingerprint:
        raise RuntimeError(
            f"served tokenizer fingerprint {info.fingerprint[:16]} != local {local.fingerprint[:16]}"
        )
    return len(ids)


def _finish_name(chunk: Any) -> str:
    """The name of a stream message's ``finish_reason`` enum value (``STOP``, ``LENGTH``...)."""
    field = type(chunk).DESCRIPTOR.fields_by_name["finish_reason"]
    return str(field.enum_type.values_by_number[chunk.finish_reason].name)


def _stream_answer(
    client: Any, prompt_ids: list[int], stop_id: int
) -> tuple[dict[str, Any], list[int]]:
    """Stream a greedy answer to ``prompt_ids``: the stage's figures of the stream (messages,
    tokens, finish reason, text, timings) and the new token ids."""
    t0 = time.perf_counter()
    first: float | None = None
    chunks, new_ids, finish = [], [], ""
    for chunk in client.generate_stream(
        prompt_ids, max_new_tokens=16, temperature=0.0, stop_token_ids=[stop_id]
    ):
        if first is None and chunk.token_ids:
            first = time.perf_counter() - t0
        chunks.append(chunk.text)
        new_ids.extend(chunk.token_ids)
        if chunk.finish_reason:
            finish = _finish_name(chunk)
    seconds = time.perf_counter() - t0
    figures = {
        "stream_messages": len(chunks),
        "completion_tokens": len(new_ids),
        "finish_reason": finish,
        "streamed_text": "".join(chunks),
        "time_to_first_token_ms": round(1000 * (first or seconds), 1),
        "stream_seconds": round(seconds, 3),
    }
    return figures, new_ids


def _check_clean_exit(servers: tuple[ServerProcess, ...]) -> None:
    """Raise with the log's tail for a server that did not exit 0 after SIGTERM."""
    for srv in servers:
        if srv.exit_code != 0:
            raise RuntimeError(
                f"`gptforge serve {srv.name}` exited with code {srv.exit_code} after SIGTERM "
                f"(expected 0 from a graceful shutdown); see {srv.log_path}:\n{_tail(srv.log_path)}"
            )


def serve_stage(ctx: StageContext) -> dict[str, Any]:
    """Start both services on the fine-tuned model, use them through the clients, stop them."""
    from gptforge.demo.stages import DEMO_INSTRUCTION, SAMPLE_TEXT
    from gptforge.sampling.templates import RESP_END, encode_record, render_text
    from gptforge.services.generation import GenerationClient
    from gptforge.services.tokenizer import TokenizerClient
    from gptforge.tokenizer import Tokenizer

    model_dir = ctx.run_dir / "finetune"
    local = Tokenizer.from_dir(model_dir / "tokenizer")
    prompt_text, _ = render_text(DEMO_INSTRUCTION, "inst")
    want_prompt_ids, _ = encode_record(DEMO_INSTRUCTION, "inst", local)
    stop_id = local.special_tokens[RESP_END]
    result: dict[str, Any] = {"logs": str(ctx.run_dir / "serve")}
    with ExitStack() as stack:
        tok_srv, gen_srv = _start_servers(stack, ctx, model_dir)
        tok_client = stack.enter_context(TokenizerClient(tok_srv.target))
        gen_client = stack.enter_context(GenerationClient(gen_srv.target))
        result["tokenizer_target"] = tok_srv.target
        result["generation_target"] = gen_srv.target
        result["tokenizer_ready_s"] = round(
            tok_srv.wait_serving(tok_client.health, TOKENIZER_START_TIMEOUT), 2
        )
        result["generation_ready_s"] = round(
            gen_srv.wait_serving(gen_client.health, GENERATION_START_TIMEOUT), 2
        )
        ctx.log("both services report health SERVING")
        result["sample_tokens"] = _check_tokenizer_service(tok_client, local, SAMPLE_TEXT)

        # Generation service: prompt ids from the tokenizer service, answer streamed greedily.
        prompt_ids = tok_client.encode(prompt_text, special_tokens="allow_all")
        if prompt_ids != want_prompt_ids:
            raise RuntimeError(
                f"the tokenizer service encodes the prompt {prompt_text!r} as {prompt_ids}, expected {want_prompt_ids}"
            )
        stream, new_ids = _stream_answer(gen_client, prompt_ids, stop_id)
        answer_ids = [i for i in new_ids if i != stop_id]
        result.update(
            prompt=prompt_text,
            prompt_tokens=len(prompt_ids),
            **stream,
            decoded_by_service=tok_client.decode(answer_ids).strip(),
            expected=DEMO_INSTRUCTION["output"],
        )
        ctx.log(
            f"streamed {len(new_ids)} tokens in {stream['stream_messages']} messages; "
            "stopping both with SIGTERM"
        )
    result["tokenizer_exit_code"] = tok_srv.exit_code
    result["generation_exit_code"] = gen_srv.exit_code
    _check_clean_exit((tok_srv, gen_srv))
    return result
