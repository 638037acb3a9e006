"""Training config dataclasses and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
from gptforge.training.config import FinetuneConfig, LoopConfig, TrainConfig
from gptforge.training.schedule import lr_at


def test_config_imports_without_torch():
    import subprocess

    code = "import sys, gptforge.training.config, gptforge.training; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"lr": 1e-3, "min_lr": 1e-2}, "min_lr=0.01 is above lr=0.001"),
        ({"lr_schedule": "step"}, "lr_schedule='step' is not one of"),
        ({"dtype": "fp8"}, "dtype='fp8'"),
        ({"beta2": 1.0}, "beta2 must be in [0, 1)"),
    ],
)
def test_invalid_values_are_refused_with_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=__import__("re").escape(needle)):
        TrainConfig(**kwargs)


def test_arch_and_template_choices():
    with pytest.raises(ValueError, match="arch='bert'"):
        TrainConfig(arch="bert")
    with pytest.raises(ValueError, match="template='chatml'"):
        FinetuneConfig(template="chatml")


def test_roundtrip_and_unknown_fields():
    cfg = TrainConfig(preset="debug", max_steps=7, tie_weights=False)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['nope'\]"):
        TrainConfig.from_dict({"nope": 1})


def test_finetune_defaults_use_a_lower_learning_rate():
    assert FinetuneConfig().lr < LoopConfig().lr
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert {"from_run", "template", "val_fraction"} <= names


def test_schedule_warmup_peak_and_floor():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    decay = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_linear_and_constant_schedules():
    kw = dict(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=100)
    assert lr_at(50, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_at(50, schedule="constant", **kw) == 1.0
    assert math.isclose(lr_at(0, schedule="cosine", **kw), 1.0)
