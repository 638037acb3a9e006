"""gptforge.modeling: GPT-2 and LLaMA-family language models with KV caches.

>>> from gptforge.modeling import build_model, get_config
>>> model = build_model(get_config("debug"))
>>> model.num_params() > 0
True
"""

from gptforge.modeling.base import IGNORE_INDEX, CausalLM
from gptforge.modeling.config import GPTConfig, LlamaConfig, pad_to_multiple
from gptforge.modeling.gpt import GPT
from gptforge.modeling.kv_cache import CacheOverflowError, KVCache, causal_attention
from gptforge.modeling.llama import Llama
from gptforge.modeling.mmrec import MMRec, MMRecConfig
from gptforge.modeling.protocol import LanguageModel
from gptforge.modeling.registry import (
    ARCHITECTURES,
    build_model,
    config_from_dict,
    config_to_dict,
    get_config,
    preset_names,
    register_architecture,
)

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "GPT",
    "IGNORE_INDEX",
    "CacheOverflowError",
    "CausalLM",
    "GPTConfig",
    "KVCache",
    "Llama",
    "LanguageModel",
    "LlamaConfig",
    "MMRec",
    "MMRecConfig",
    "build_model",
    "causal_attention",
    "config_from_dict",
    "config_to_dict",
    "get_config",
    "pad_to_multiple",
    "preset_names",
    "register_architecture",
]
