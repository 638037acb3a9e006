"""Streaming conversion: memory beyond the interpreter and its imports stays under 1.25x the
model's size (gpt2-medium, slow). The import baseline is left out because it depends on the torch
build (a CUDA build maps several hundred MB more than a CPU one)."""

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
tok = sys.argv[2]
save_model_dir(build_model(get_config("gpt2-medium", vocab_size=int(sys.argv[3]))), sys.argv[1], tokenizer_dir=tok)
"""
CONVERT = """
import json, resource, sys, time
from gptforge.conversion import export_hf, import_hf
from gptforge.conversion.gguf_export import export_gguf
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kind, src, out = sys.argv[1:4]
start = time.perf_counter()
if kind == "to-hf":
    export_hf(src, out, tokenizer=False)
elif kind == "from-hf":
    import_hf(src, out, tokenizer=False)
elif kind == "to-gguf":
    export_gguf(src, out, dtype="f16", modelfile=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kib": base, "peak_kib": peak, "seconds": seconds}))
"""


def measure(kind: str, src: Path, out: Path) -> dict[str, float]:
    """Run one conversion in a fresh interpreter and return its baseline and peak RSS (KiB)."""
    res = subprocess.run(
        [sys.executable, "-c", CONVERT, kind, str(src), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streaming_conversion_peak_rss_gpt2_medium(tmp_path: Path, tokenizer_dir: Path) -> None:
    run = tmp_path / "medium"
    # gpt2-medium's shape and 50257-token vocabulary with the small test tokenizer: GGUF gets
    # placeholder tokens for the ids past the tokenizer.
    subprocess.run([sys.executable, "-c", BUILD, str(run), str(tokenizer_dir), "50257"], check=True)
    size_kib = (run / "model.safetensors").stat().st_size / 1024
    steps = (
        ("to-hf", run, tmp_path / "hf"),
        ("from-hf", tmp_path / "hf", tmp_path / "back"),
        ("to-gguf", run, tmp_path / "medium.gguf"),
    )
    for kind, src, out in steps:
        m = measure(kind, src, out)
        ratio = m["peak_kib"] / size_kib
        growth = (m["peak_kib"] - m["baseline_kib"]) / size_kib
        print(f"{kind}: model {size_kib / 2**20:.2f} GiB, {m['seconds']:.1f}s, peak RSS {m['peak_kib'] / 2**20:.2f} GiB "
              f"({ratio:.2f}x; interpreter + imports {m['baseline_kib'] / 2**20:.2f} GiB, growth {growth:.2f}x)")  # fmt: skip
        # A conversion that held the whole state dict twice would grow by 2x.
        assert growth < 1.25, (kind, m, size_kib)
