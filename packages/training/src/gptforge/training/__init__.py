"""gptforge.training: data preparation, pre-training, exact resume, fine-tuning and DDP.

>>> from gptforge.training import TrainConfig, lr_at
>>> TrainConfig(preset="debug", max_steps=10).batch_size
8
"""

from gptforge.training.config import FinetuneConfig, LoopConfig, ModelShape, TrainConfig
from gptforge.training.schedule import lr_at

__version__ = "0.1.0"

__all__ = [
    "FinetuneConfig",
    "LoopConfig",
    "ModelShape",
    "TrainConfig",
    "__version__",
    "lr_at",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy torch-heavy imports keep config import-light
    lazy = {
        "pretrain": "gptforge.training.pretrain",
        "finetune": "gptforge.training.finetune",
        "prepare_data": "gptforge.training.prepare",
        "CheckpointManager": "gptforge.training.checkpoint",
        "TokenShards": "gptforge.training.data",
        "TokenWindows": "gptforge.training.data",
        "SlidingWindowDataset": "gptforge.training.data",
        "DataError": "gptforge.training.data",
        "TrainingDiverged": "gptforge.training.loop",
        "generate_tasks": "gptforge.training.tasks",
        "model_config": "gptforge.training.shape",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'gptforge.training' has no attribute {name!r}")
