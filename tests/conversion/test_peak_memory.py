"""Streaming conversion: peak RSS stays under 1.5x the model's size (gpt2-medium, slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Child processes: one builds a random gpt2-medium run dir, the others each run one conversion
# and report their own peak RSS (ru_maxrss, which counts memory-mapped pages that were touched).
BUILD = """
import sys, torch
from gptforge.modeling import build_model, get_config
from gptforge.modeling.io import save_model_dir
torch.manual_seed(0)
save_model_dir(build_model(get_config("gpt2-medium")), sys.argv[1])
"""
CONVERT = """
import json, resource, sys
from gptforge.conversion import export_hf, import_hf
from gptforge.conversion.gguf_export import export_gguf
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kind, src, out = sys.argv[1:4]
if kind == "to-hf":
    export_hf(src, out, tokenizer=False)
elif kind == "from-hf":
    import_hf(src, out, tokenizer=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kib": base, "peak_kib": peak}))
"""


def measure(kind: str, src: Path, out: Path) -> dict[str, int]:
    """Run one conversion in a fresh interpreter and return its baseline and peak RSS (KiB)."""
    res = subprocess.run(
        [sys.executable, "-c", CONVERT, kind, str(src), str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streaming_conversion_peak_rss_gpt2_medium(tmp_path: Path) -> None:
    run = tmp_path / "medium"
    subprocess.run([sys.executable, "-c", BUILD, str(run)], check=True)
    size_kib = (run / "model.safetensors").stat().st_size / 1024
    for kind, src, out in (("to-hf", run, tmp_path / "hf"), ("from-hf", tmp_path / "hf", tmp_path / "back")):
        m = measure(kind, src, out)
        ratio = m["peak_kib"] / size_kib
        print(f"{kind}: model {size_kib / 2**20:.2f} GiB, peak RSS {m['peak_kib'] / 2**20:.2f} GiB "
              f"({ratio:.2f}x; interpreter + imports {m['baseline_kib'] / 2**20:.2f} GiB)")  # fmt: skip
        assert ratio < 1.5, (kind, m, size_kib)
