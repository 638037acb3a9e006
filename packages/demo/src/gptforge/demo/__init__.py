"""gptforge.demo: the whole pipeline in one run folder, each stage checked against the real tools.

Tokenizer, pre-training, fine-tuning, Hugging Face and GGUF export (read back with transformers and
gguf), both gRPC services started and called; finished stages are skipped on the next run.

>>> from gptforge.demo import DemoSettings, run_demo
>>> run_demo(DemoSettings(Path("runs/demo"), preset="debug", steps=20))  # doctest: +SKIP
"""

from gptforge.demo.pipeline import DemoError, StageFailed
from gptforge.demo.report import SUMMARY_FILE, run_demo
from gptforge.demo.stages import DemoSettings

__version__ = "0.1.0"

__all__ = ["SUMMARY_FILE", "DemoError", "DemoSettings", "StageFailed", "__version__", "run_demo"]
