"""The resumable stage runner behind ``gptforge demo``.

A pipeline is a list of :class:`Stage` objects run in order inside one run directory. Each stage
that finishes writes a marker ``stages/<nn>-<name>.json`` atomically (temp file + ``os.replace``)
holding the settings it ran with, its wall time and its result (the numbers the summary prints).
A second run of the same command finds the markers and skips those stages, printing the stored
result again, so an interrupted demo picks up at the stage that did not finish.

Rules that keep the run directory consistent:

- a stage whose recorded settings differ from the current ones is refused with the difference and
  the fix (``--redo STAGE`` or a new ``--run-dir``), never silently mixed with new settings;
- once a stage runs (first time, ``--redo`` or a missing marker), every later stage runs again,
  because it consumed the earlier stage's outputs; their old outputs are removed first;
- a stage that fails leaves its marker unwritten, writes its traceback to ``logs/`` and raises
  :class:`StageFailed`, which names the stage and the command that continues the run.

This module knows nothing about tokenizers or models: the stages themselves live in
:mod:`gptforge.demo.stages`. It imports neither torch nor rich.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptforge.fileio import atomic_write_json

MARKER_DIR = "stages"
LOG_DIR = "logs"
MARKER_VERSION = 1


class DemoError(RuntimeError):
    """A demo setting or a run directory that cannot be used, with the fix in the message."""


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage, the cause and how to continue.

    Attributes:
        stage: The stage's name.
        log_path: Where the full traceback was written.
    """

    def __init__(self, stage: str, message: str, log_path: Path | None) -> None:
        super().__init__(message)
        self.stage = stage
        self.log_path = log_path


@dataclass
class StageContext:
    """What a stage function gets: the run directory, its settings and earlier results.

    Attributes:
        run_dir: The run directory (created).
        settings: This stage's settings (as recorded in its marker).
        results: Results of the stages before this one, by stage name.
        log: Prints one progress line (the CLI routes it to the console).
    """

    run_dir: Path
    settings: dict[str, Any]
    results: dict[str, dict[str, Any]]
    log: Callable[[str], None]


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: Short name used in markers, messages and ``--redo`` (e.g. ``pretrain``).
        title: Heading printed above the stage's summary.
        outputs: Paths relative to the run directory that the stage writes; removed before the
            stage runs again after an earlier stage ran.
        run: Does the work; returns a JSON-able result dict (what the summary shows).
        resume_hint: Extra advice printed when the stage fails (e.g. that training resumes).
    """

    name: str
    title: str
    outputs: tuple[str, ...]
    run: Callable[[StageContext], dict[str, Any]]
    resume_hint: str = ""


@dataclass
class StageRecord:
    """How a stage went in this invocation: ``ran`` or ``skipped``, its seconds and result.

    ``seconds`` is the wall time of the run that produced the result (for a skipped stage: the
    earlier run's, read from the marker); ``cpu_seconds`` the CPU time it used (all threads, and
    subprocesses it waited for), which depends less on other load on the machine.
    """

    name: str
    title: str
    status: str
    seconds: float
    result: dict[str, Any]
    marker: Path
    cpu_seconds: float | None = None


@dataclass
class PipelineReport:
    """Every stage's record, in order, plus the total wall time of this invocation."""

    records: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0

    def result(self, name: str) -> dict[str, Any]:
        """The result dict of stage ``name``."""
        for record in self.records:
            if record.name == name:
                return record.result
        raise KeyError(f"no stage {name!r}; stages: {[r.name for r in self.records]}")


def cpu_time() -> float:
    """CPU seconds of this process and its waited-for children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def marker_path(run_dir: Path, index: int, stage: Stage) -> Path:
    """``run_dir/stages/<nn>-<name>.json``."""
    return run_dir / MARKER_DIR / f"{index:02d}-{stage.name}.json"


def read_marker(path: Path) -> dict[str, Any] | None:
    """A marker's content, or ``None`` if it is missing or unreadable (then the stage reruns)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("version") != MARKER_VERSION:
        return None
    return data


def _jsonable(value: Any) -> Any:
    """Settings as they compare after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def settings_diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable ``key: old -> new`` lines for every setting that changed."""
    keys = sorted(set(recorded) | set(current))
    return [
        f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]


def remove_outputs(run_dir: Path, stage: Stage) -> None:
    """Delete a stage's outputs (files or directories) inside ``run_dir``."""
    root = run_dir.resolve()
    for rel in stage.outputs:
        target = (run_dir / rel).resolve()
        if root not in target.parents:
            raise DemoError(f"stage {stage.name!r} output {rel!r} is outside {str(run_dir)!r}")
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_pipeline(
    run_dir: Path,
    stages: Sequence[Stage],
    settings: dict[str, dict[str, Any]],
    *,
    redo: Sequence[str] = (),
    log: Callable[[str], None] = print,
    on_stage_start: Callable[[int, Stage], None] | None = None,
    on_stage_end: Callable[[int, StageRecord], None] | None = None,
    continue_command: str = "",
) -> PipelineReport:
    """Run ``stages`` in order in ``run_dir``, skipping those whose marker matches.

    Args:
        run_dir: The run directory (created if missing).
        stages: The pipeline.
        settings: Per stage name, the settings it runs with (compared with its marker).
        redo: Stage names to run again even if done (later stages run again too).
        log: Where stages print progress lines.
        on_stage_start: Called before a stage runs or is skipped.
        on_stage_end: Called with the record after a stage ran or was skipped.
        continue_command: The command that continues this run (quoted in failure messages).

    Raises:
        DemoError: An unknown ``redo`` name, or a done stage recorded with other settings.
        StageFailed: A stage raised (earlier stages' markers stay; rerun to continue).
    """
    names = [s.name for s in stages]
    unknown = [r for r in redo if r not in names]
    if unknown:
        raise DemoError(f"--redo {unknown[0]!r} is not a stage; stages: {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    report = PipelineReport()
    start = time.perf_counter()
    rerun_rest = False
    for index, stage in enumerate(stages, start=1):
        if on_stage_start is not None:
            on_stage_start(index, stage)
        current = _jsonable(settings.get(stage.name, {}))
        path = marker_path(run_dir, index, stage)
        marker = read_marker(path)
        if stage.name in redo or rerun_rest:
            marker = None
            path.unlink(missing_ok=True)
            remove_outputs(run_dir, stage)
        if marker is not None:
            diff = settings_diff(marker.get("settings", {}), current)
            if diff:
                raise DemoError(
                    f"stage {stage.name!r} in {str(run_dir)!r} was done with other settings "
                    f"({'; '.join(diff)}); add --redo {stage.name} to redo it and the stages "
                    "after it, or pass a new --run-dir"
                )
            record = StageRecord(
                stage.name,
                stage.title,
                "skipped",
                float(marker["seconds"]),
                marker["result"],
                path,
                marker.get("cpu_seconds"),
            )
        else:
            rerun_rest = True
            record = _run_stage(
                run_dir, index, len(stages), stage, current, report, log, path, continue_command
            )
        report.records.append(record)
        if on_stage_end is not None:
            on_stage_end(index, record)
    report.seconds = time.perf_counter() - start
    return report


def _run_stage(
    run_dir: Path,
    index: int,
    total: int,
    stage: Stage,
    current: dict[str, Any],
    report: PipelineReport,
    log: Callable[[str], None],
    path: Path,
    continue_command: str,
) -> StageRecord:
    ctx = StageContext(
        run_dir=run_dir,
        settings=current,
        results={r.name: r.result for r in report.records},
        log=log,
    )
    t0, cpu0 = time.perf_counter(), cpu_time()
    try:
        result = stage.run(ctx)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        log_path = run_dir / LOG_DIR / f"{index:02d}-{stage.name}-error.txt"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(traceback.format_exc(), encoding="utf-8")
        except OSError:
            log_path = None  # type: ignore[assignment]
        where = f"; traceback in {log_path}" if log_path else ""
        again = f" `{continue_command}`" if continue_command else ""
        hint = f" {stage.resume_hint}" if stage.resume_hint else ""
        raise StageFailed(
            stage.name,
            f"stage {index}/{total} {stage.name!r} failed: {type(exc).__name__}: {exc}{where}. "
            f"Stages before it are done and kept; fix the cause and rerun the same command"
            f"{again} to continue from this stage.{hint}",
            log_path,
        ) from exc
    seconds, cpu = time.perf_counter() - t0, cpu_time() - cpu0
    result = _jsonable(result)
    atomic_write_json(
        path,
        {
            "version": MARKER_VERSION,
            "stage": stage.name,
            "settings": current,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "result": result,
        },
    )
    return StageRecord(stage.name, stage.title, "ran", seconds, result, path, cpu)


def dataclass_settings(obj: Any, fields: Sequence[str]) -> dict[str, Any]:
    """The named fields of a dataclass instance as a dict (a stage's settings)."""
    values = dataclasses.asdict(obj)
    return {k: values[k] for k in fields}
