"""gptforge.conversion: Hugging Face, OpenAI GPT-2, Meta LLaMA and GGUF conversion, and inspection.

>>> from gptforge.conversion import export_hf, import_hf
>>> export_hf("runs/demo/pretrain", "runs/hf")  # doctest: +SKIP
"""

from gptforge.conversion.detect import find_model_dir, require_ours
from gptforge.conversion.errors import ConversionError
from gptforge.conversion.gguf_export import export_gguf
from gptforge.conversion.hf import export_hf, import_hf, read_hf_config
from gptforge.conversion.hf_gpt2 import (
    gpt_config_to_hf,
    hf_gpt2_config,
    hf_gpt2_to_ours,
    ours_to_hf_gpt2,
)
from gptforge.conversion.hf_llama import (
    hf_llama_config,
    hf_llama_to_ours,
    llama_config_to_hf,
    ours_to_hf_llama,
)
from gptforge.conversion.inspect import CheckpointInfo, format_info, inspect_checkpoint
from gptforge.conversion.loading import (
    Loaded,
    detect_family,
    detect_layout,
    load_any,
    model_from_tensors,
)
from gptforge.conversion.meta_llama import (
    export_meta,
    import_meta,
    load_meta_checkpoint,
    meta_llama_config,
    meta_llama_to_ours,
    ours_to_meta_llama,
)
from gptforge.conversion.openai_gpt2 import import_openai, openai_gpt2_config
from gptforge.conversion.pytorch_gpt import import_pytorch, read_pytorch_gpt
from gptforge.conversion.tf_checkpoint import TFCheckpoint, read_tf_checkpoint
from gptforge.conversion.weights import (
    WeightSource,
    iter_state_dict,
    load_state_dict,
    read_tensor_infos,
    torch_load_weights,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointInfo",
    "Loaded",
    "ConversionError",
    "TFCheckpoint",
    "WeightSource",
    "detect_family",
    "detect_layout",
    "export_gguf",
    "export_hf",
    "export_meta",
    "find_model_dir",
    "format_info",
    "gpt_config_to_hf",
    "hf_gpt2_config",
    "hf_gpt2_to_ours",
    "hf_llama_config",
    "hf_llama_to_ours",
    "import_hf",
    "import_meta",
    "import_openai",
    "import_pytorch",
    "inspect_checkpoint",
    "iter_state_dict",
    "llama_config_to_hf",
    "load_any",
    "load_meta_checkpoint",
    "load_state_dict",
    "meta_llama_config",
    "meta_llama_to_ours",
    "model_from_tensors",
    "openai_gpt2_config",
    "ours_to_hf_gpt2",
    "ours_to_hf_llama",
    "ours_to_meta_llama",
    "read_hf_config",
    "read_pytorch_gpt",
    "require_ours",
    "read_tensor_infos",
    "read_tf_checkpoint",
    "torch_load_weights",
]
