"""The resumable stage runner behind ``gptforge demo``, with cheap fake stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gptforge.demo.pipeline import (
    DemoError,
    Stage,
    StageContext,
    StageFailed,
    read_marker,
    run_pipeline,
)


class Recorder:
    """Fake stages that write one file each and remember how often they ran."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def stage(self, name: str) -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            self.calls.append(name)
            if name == self.fail:
                raise ValueError(f"{name} broke on purpose")
            out = ctx.run_dir / name / "out.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(f"{name} {ctx.settings}")
            return {"name": name, "seen_before": sorted(ctx.results), "settings": ctx.settings}

        return Stage(name, name.title(), (name,), run, resume_hint=f"{name} resumes.")

    def stages(self) -> list[Stage]:
        return [self.stage(n) for n in ("a", "b", "c")]


SETTINGS = {"a": {"x": 1}, "b": {"y": [1, 2]}, "c": {}}


def test_first_run_runs_every_stage_and_writes_markers(tmp_path: Path) -> None:
    rec = Recorder()
    report = run_pipeline(tmp_path, rec.stages(), SETTINGS, log=lambda m: None)
    assert rec.calls == ["a", "b", "c"]
    assert [r.status for r in report.records] == ["ran", "ran", "ran"]
    assert report.result("c")["seen_before"] == ["a", "b"]  # later stages see earlier results
    marker = read_marker(tmp_path / "stages" / "02-b.json")
    assert marker is not None
    assert marker["settings"] == {"y": [1, 2]} and marker["result"]["name"] == "b"
    assert not list((tmp_path / "stages").glob(".*tmp"))  # atomic writes leave no temp files


def test_second_run_skips_done_stages_and_returns_stored_results(tmp_path: Path) -> None:
    run_pipeline(tmp_path, Recorder().stages(), SETTINGS, log=lambda m: None)
    rec = Recorder()
    report = run_pipeline(tmp_path, rec.stages(), SETTINGS, log=lambda m: None)
    assert rec.calls == []
    assert [r.status for r in report.records] == ["skipped"] * 3
    assert report.result("b")["settings"] == {"y": [1, 2]}


def test_redo_reruns_the_stage_and_every_later_one_after_removing_outputs(tmp_path: Path) -> None:
    run_pipeline(tmp_path, Recorder().stages(), SETTINGS, log=lambda m: None)
    stale = tmp_path / "c" / "stale.txt"
    stale.write_text("old")
    rec = Recorder()
    report = run_pipeline(tmp_path, rec.stages(), SETTINGS, redo=["b"], log=lambda m: None)
    assert rec.calls == ["b", "c"]
    assert [r.status for r in report.records] == ["skipped", "ran", "ran"]
    assert not stale.exists()


def test_a_missing_marker_reruns_that_stage_and_the_later_ones(tmp_path: Path) -> None:
    run_pipeline(tmp_path, Recorder().stages(), SETTINGS, log=lambda m: None)
    (tmp_path / "stages" / "02-b.json").write_text("{torn")  # unreadable counts as missing
    rec = Recorder()
    run_pipeline(tmp_path, rec.stages(), SETTINGS, log=lambda m: None)
    assert rec.calls == ["b", "c"]


def test_changed_settings_are_refused_with_the_diff_and_the_fix(tmp_path: Path) -> None:
    run_pipeline(tmp_path, Recorder().stages(), SETTINGS, log=lambda m: None)
    changed = {**SETTINGS, "b": {"y": [1, 3]}}
    with pytest.raises(DemoError) as info:
        run_pipeline(tmp_path, Recorder().stages(), changed, log=lambda m: None)
    message = str(info.value)
    assert "'b'" in message and "[1, 2] -> [1, 3]" in message
    assert "--redo b" in message and "--run-dir" in message


def test_unknown_redo_stage_lists_the_stages(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match=r"--redo 'zzz' is not a stage; stages: \['a', 'b', 'c'\]"):
        run_pipeline(tmp_path, Recorder().stages(), SETTINGS, redo=["zzz"], log=lambda m: None)


def test_failure_names_the_stage_keeps_earlier_markers_and_continues_on_rerun(
    tmp_path: Path,
) -> None:
    rec = Recorder(fail="b")
    with pytest.raises(StageFailed) as info:
        run_pipeline(
            tmp_path, rec.stages(), SETTINGS, log=lambda m: None, continue_command="demo --again"
        )
    exc = info.value
    assert exc.stage == "b"
    message = str(exc)
    assert "stage 2/3 'b' failed: ValueError: b broke on purpose" in message
    assert "`demo --again`" in message and "b resumes." in message
    assert exc.log_path is not None and "broke on purpose" in exc.log_path.read_text()
    assert (tmp_path / "stages" / "01-a.json").exists()
    assert not (tmp_path / "stages" / "02-b.json").exists()

    rec = Recorder()
    report = run_pipeline(tmp_path, rec.stages(), SETTINGS, log=lambda m: None)
    assert rec.calls == ["b", "c"]
    assert [r.status for r in report.records] == ["skipped", "ran", "ran"]


def test_marker_records_time_and_json_round_tripped_settings(tmp_path: Path) -> None:
    run_pipeline(tmp_path, Recorder().stages(), {"a": {"t": (1, 2)}}, log=lambda m: None)
    marker = json.loads((tmp_path / "stages" / "01-a.json").read_text())
    assert marker["settings"] == {"t": [1, 2]}
    assert marker["seconds"] >= 0 and marker["finished_at"].endswith("+00:00")
    # the tuple compares equal to its JSON list form, so the next run skips
    rec = Recorder()
    run_pipeline(tmp_path, rec.stages(), {"a": {"t": (1, 2)}}, log=lambda m: None)
    assert rec.calls == []
