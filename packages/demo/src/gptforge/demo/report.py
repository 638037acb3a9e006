"""Running the demo and printing it: each stage's summary, the final table, the commands to continue.

Stages (see :mod:`gptforge.demo.stages`): tokenizer -> pretrain -> finetune -> export -> serve,
then a summary of where everything is. Each finished stage leaves a marker in
``RUN_DIR/stages/``; running the demo again skips what is done.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptforge.demo.pipeline import PipelineReport, StageRecord
    from rich.console import Console

SUMMARY_FILE = "demo_summary.json"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def stage_rows(name: str, r: dict[str, Any]) -> list[tuple[str, str]]:
    """The key/value lines printed under a stage's heading (also for a skipped stage)."""
    if name == "tokenizer":
        return [
            ("directory", r["dir"]),
            (
                "vocabulary",
                f"{r['n_vocab']} tokens ({r['merges']} merges), fingerprint {r['fingerprint']}",
            ),
            (
                "sample",
                f"{r['sample_text']!r} -> {r['sample_tokens']} tokens ({r['bytes_per_token']} bytes/token)",
            ),
        ]
    if name == "pretrain":
        return [
            (
                "data",
                f"{r['documents']} documents -> {r['train_tokens']:,} train + {r['val_tokens']:,} val tokens in {r['data_dir']}",
            ),
            ("run", f"{r['run_dir']} (context {r['context']}, vocab {r['vocab_size']})"),
            (
                "training",
                f"{r['steps']} steps, {r['tokens_seen']:,} tokens in {r['train_seconds']}s ({r['tokens_per_second']:,} tok/s)",
            ),
            (
                "loss",
                f"train {_fmt(r['first_train_loss'])} -> {_fmt(r['train_loss'])}, validation {_fmt(r['val_loss'])} (uniform guess {r['uniform_loss']})",
            ),
            ("loss curve", r["loss_png"]),
            ("sample", repr(r["sample"])),
        ]
    if name == "finetune":
        ex = r["example"]
        return [
            ("run", r["run_dir"]),
            (
                "training",
                f"{r['steps']} steps in {r['train_seconds']}s, train loss {_fmt(r['train_loss'])}, val loss {_fmt(r['val_loss'])}",
            ),
            (
                "held-out accuracy",
                f"{_pct(r['accuracy_before'])} before -> {_pct(r['accuracy_after'])} after ({r['held_out']} exact-match questions)",
            ),
            ("per task after", ", ".join(f"{k} {v:.0%}" for k, v in r["per_task_after"].items())),
            (
                "example",
                f"{ex['instruction']} {ex['input']!r} -> {ex['answer']!r} (expected {ex['output']!r})",
            ),
        ]
    if name == "export":
        if "skipped" in r:
            return [("skipped", r["skipped"])]
        return [
            (
                "Hugging Face",
                f"{r['hf_dir']} ({r['hf_class']} loads it; max |logit diff| {r['max_logit_diff']:.2g} over {r['tokens_compared']} tokens)",
            ),
            (
                "GGUF",
                f"{r['gguf']} ({r['gguf_mb']} MB, arch {r['gguf_arch']}, {r['gguf_tensors']} tensors, {r['gguf_tokens']} tokens; embedding max diff {r['gguf_embd_max_diff']:.2g})",
            ),
        ]
    if name == "serve":
        return [
            (
                "tokenizer service",
                f"{r['tokenizer_target']} SERVING after {r['tokenizer_ready_s']}s; {r['sample_tokens']} tokens, exact round trip",
            ),
            (
                "generation service",
                f"{r['generation_target']} SERVING after {r['generation_ready_s']}s",
            ),
            ("prompt", f"{r['prompt']!r} ({r['prompt_tokens']} tokens via the tokenizer service)"),
            (
                "streamed answer",
                f"{r['decoded_by_service']!r} (expected {r['expected']!r}); {r['completion_tokens']} tokens in {r['stream_messages']} messages, first after {r['time_to_first_token_ms']} ms, finish {r['finish_reason']}",
            ),
            (
                "shutdown",
                f"SIGTERM -> exit codes {r['tokenizer_exit_code']} / {r['generation_exit_code']}; logs in {r['logs']}",
            ),
        ]
    return [(k, _fmt(v)) for k, v in r.items()]


def next_commands(run_dir: Path, preset: str) -> list[tuple[str, str]]:
    """``(what, command)`` pairs to continue from a finished demo run folder."""
    rd = shlex.quote(str(run_dir))
    return [
        ("chat with the fine-tuned model", f"gptforge chat --ckpt {rd}/finetune"),
        ("generate text (pre-trained)", f'gptforge generate --ckpt {rd}/pretrain --prompt "The"'),
        (
            "serve the tokenizer",
            f"gptforge serve tokenizer --tokenizer {rd}/finetune/tokenizer  # or make serve-tokenizer TOKENIZER={rd}/finetune/tokenizer",
        ),
        (
            "serve the model",
            f"gptforge serve generation --ckpt {rd}/finetune  # or make serve-generation CKPT={rd}/finetune",
        ),
        ("call the services", 'gptforge client tokenize "Hello" ; gptforge client generate "The"'),
        ("train longer (resume)", f"gptforge train --resume {rd}/pretrain --max-steps 1000"),
        (
            "convert to HF / GGUF",
            f"gptforge convert to-hf --ckpt {rd}/finetune --out runs/hf ; gptforge convert to-gguf --ckpt {rd}/finetune --out runs/model.gguf --dtype q8_0",
        ),
        (
            "run llama.cpp / Ollama",
            f"llama-cli -m {rd}/export/gguf/model.gguf -p The ; ollama create demo -f {rd}/export/gguf/Modelfile",
        ),
        ("rerun a stage", f"gptforge demo --run-dir {rd} --preset {preset} --redo finetune"),
    ]


class DemoPrinter:
    """Rich rendering of the stage headings, summaries and the final table."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total

    def log(self, message: str) -> None:
        """One dim progress line."""
        self.console.print(f"  [dim]{message}[/dim]", highlight=False)

    def start(self, index: int, stage: Any) -> None:
        """Heading of stage ``index``."""
        self.console.rule(f"[bold]{index}/{self.total + 1} {stage.title}[/bold]", align="left")

    def end(self, index: int, record: StageRecord) -> None:
        """The stage's result lines."""
        from rich.table import Table

        if record.status == "skipped":
            self.console.print(
                f"  [yellow]skipped[/yellow]: already done in {record.seconds:.1f}s "
                f"({record.marker}); --redo {record.name} runs it again",
                highlight=False,
            )
        table = Table.grid(padding=(0, 2))
        table.add_column(style="cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in stage_rows(record.name, record.result):
            table.add_row(f"  {key}", value)
        self.console.print(table)
        if record.status == "ran":
            cpu = f", {record.cpu_seconds:.1f}s CPU" if record.cpu_seconds is not None else ""
            self.console.print(
                f"  [green]done[/green] in {record.seconds:.1f}s{cpu}", highlight=False
            )

    def summary(self, run_dir: Path, preset: str, report: PipelineReport) -> None:
        """Stage 6: the time table, where everything is, and what to run next."""
        from rich.table import Table

        self.console.rule(f"[bold]{self.total + 1}/{self.total + 1} Summary[/bold]", align="left")
        times = Table(title=None, show_edge=False)
        times.add_column("stage")
        times.add_column("status")
        times.add_column("wall time", justify="right")
        times.add_column("CPU time", justify="right")
        for r in report.records:
            cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.1f}s"
            times.add_row(r.name, r.status, f"{r.seconds:.1f}s", cpu)
        times.add_row("total (this run)", "", f"{report.seconds:.1f}s", "")
        self.console.print(times)
        where = Table.grid(padding=(0, 2))
        where.add_column(style="cyan", no_wrap=True)
        where.add_column(overflow="fold")
        for key, rel in (
            ("run folder", ""),
            ("tokenizer", "tokenizer"),
            ("prepared data", "data"),
            ("pre-trained model", "pretrain"),
            ("loss curve", "pretrain/plots/loss.png"),
            ("fine-tuned model", "finetune"),
            ("Hugging Face export", "export/hf"),
            ("GGUF export", "export/gguf/model.gguf"),
            ("service logs", "serve"),
            ("stage markers", "stages"),
            ("summary", SUMMARY_FILE),
        ):
            where.add_row(f"  {key}", str(run_dir / rel) if rel else str(run_dir))
        self.console.print("[bold]Where everything is[/bold]")
        self.console.print(where)
        self.console.print("[bold]Continue with[/bold]")
        for what, command in next_commands(run_dir, preset):
            self.console.print(
                f"  [cyan]{what}[/cyan]\n    {command}", highlight=False, soft_wrap=True
            )


def write_summary(run_dir: Path, settings: dict[str, Any], report: PipelineReport) -> Path:
    """``RUN_DIR/demo_summary.json`` (atomic): settings, per-stage status/time/result, next steps."""
    from gptforge.demo.pipeline import atomic_write_json

    path = run_dir / SUMMARY_FILE
    atomic_write_json(
        path,
        {
            "settings": settings,
            "total_seconds": round(report.seconds, 2),
            "stages": [
                {
                    "name": r.name,
                    "status": r.status,
                    "seconds": round(r.seconds, 2),
                    "cpu_seconds": None if r.cpu_seconds is None else round(r.cpu_seconds, 2),
                    "result": r.result,
                }
                for r in report.records
            ],
            "next": [
                {"what": w, "command": c} for w, c in next_commands(run_dir, settings["preset"])
            ],
        },
    )
    return path


def demo_command(settings: Any) -> str:
    """The ``gptforge demo`` command line that reproduces (and so continues) ``settings``."""
    parts = ["gptforge", "demo", "--run-dir", str(settings.run_dir), "--preset", settings.preset]
    defaults = {"data": "default", "steps": None, "finetune_steps": None, "vocab_size": None,
                "eval_examples": 100, "device": "auto"}  # fmt: skip
    for name, default in defaults.items():
        value = getattr(settings, name)
        if value != default:
            parts += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(parts)


def run_demo(
    settings: Any,
    *,
    redo: list[str] | tuple[str, ...] = (),
    console: Console | None = None,
) -> PipelineReport:
    """Run (or continue) the demo in ``settings.run_dir`` and print every stage's summary.

    Args:
        settings: A :class:`gptforge.demo.stages.DemoSettings`.
        redo: Stage names to run again (and the stages after them).
        console: Where to print (default: a new rich console on stdout).

    Raises:
        DemoError: Bad settings or a run folder made with other settings.
        StageFailed: A stage failed; its message says how to continue.

    >>> from gptforge.demo.stages import DemoSettings
    >>> run_demo(DemoSettings(Path("runs/demo"), preset="debug", steps=20))  # doctest: +SKIP
    """
    from gptforge.demo.pipeline import run_pipeline
    from gptforge.demo.stages import build_stages
    from rich.console import Console

    console = console or Console()
    stages = build_stages()
    printer = DemoPrinter(console, len(stages))
    resolved = settings.resolved()
    run_dir = Path(settings.run_dir)
    command = demo_command(settings)
    console.print(
        f"[bold]gptforge demo[/bold]: preset {resolved['preset']} ({resolved['arch']}), data "
        f"{resolved['data']!r}, {resolved['steps']} pre-training + {resolved['finetune_steps']} "
        f"fine-tuning steps, device {resolved['device']}, run folder {run_dir}",
        highlight=False,
    )
    report = run_pipeline(
        run_dir,
        stages,
        settings.stage_settings(),
        redo=redo,
        log=printer.log,
        on_stage_start=printer.start,
        on_stage_end=printer.end,
        continue_command=command,
    )
    write_summary(run_dir, resolved, report)
    printer.summary(run_dir, settings.preset, report)
    return report
