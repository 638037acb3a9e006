from __future__ import annotations

import pytest
from gptforge.training import stopwatch
from gptforge.training.stopwatch import Stopwatch


@pytest.fixture
def clock(monkeypatch):
    """A fake perf_counter the test advances by hand."""
    now = [100.0]
    monkeypatch.setattr(stopwatch.time, "perf_counter", lambda: now[0])
    return now


def test_phases_accumulate_also_when_the_block_raises(clock):
    watch = Stopwatch()
    for seconds in (1.0, 2.0):
        with watch("data"):
            clock[0] += seconds
    with pytest.raises(RuntimeError), watch("checkpoint"):
        clock[0] += 4.0
        raise RuntimeError("disk full")
    clock[0] += 3.0  # outside any phase
    assert watch.totals == {"data": 3.0, "checkpoint": 4.0}
    assert watch.elapsed() == 10.0


def test_fraction_leaves_excluded_phases_out_of_the_whole(clock):
    watch = Stopwatch()
    with watch("log"):
        clock[0] += 1.0
    with watch("eval"):
        clock[0] += 6.0
    clock[0] += 3.0  # training steps
    assert watch.fraction(["log"]) == pytest.approx(0.1)
    assert watch.fraction(["log"], excluding=["eval"]) == pytest.approx(0.25)
    assert watch.fraction(["missing"], excluding=["eval"]) == 0.0
