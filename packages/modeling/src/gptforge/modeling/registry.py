"""The architecture registry and the config helpers that work across families.

``ARCHITECTURES`` maps an ``arch`` name to ``(config class, model class)``. A new family adds
itself with one call at the bottom of this file::

    register_architecture("mmrec", MMRecConfig, MMRec, presets=MMREC_PRESETS)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gptforge.modeling.config import GPTConfig, LlamaConfig
from gptforge.modeling.gpt import GPT
from gptforge.modeling.llama import Llama
from gptforge.modeling.protocol import LanguageModel

ARCHITECTURES: dict[str, tuple[type, Callable[[Any], LanguageModel]]] = {}
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}


def register_architecture(
    name: str,
    config_cls: type,
    model_cls: Callable[[Any], LanguageModel],
    presets: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Make an architecture known to ``get_config``, ``build_model`` and ``config_from_dict``.

    Args:
        name: the ``arch`` string (must equal ``config_cls.arch``).
        config_cls: a dataclass with ``arch`` and ``from_name``.
        model_cls: the model class built from that config (a :class:`LanguageModel`).
        presets: preset name -> field dict (default: ``config_cls.PRESETS``).
    """
    if getattr(config_cls, "arch", None) != name:
        raise ValueError(
            f"{config_cls.__name__}.arch is {getattr(config_cls, 'arch', None)!r}, expected "
            f"{name!r}; set `arch: ClassVar[str] = {name!r}` on the config class"
        )
    presets = presets if presets is not None else getattr(config_cls, "PRESETS", {})
    for other, names in _PRESETS.items():
        clash = sorted(set(names) & set(presets)) if other != name else []
        if clash:
            raise ValueError(f"preset name(s) {clash} of {name!r} already belong to {other!r}")
    ARCHITECTURES[name] = (config_cls, model_cls)
    _PRESETS[name] = presets


def preset_names() -> dict[str, list[str]]:
    """Every preset name, grouped by architecture."""
    return {arch: list(presets) for arch, presets in _PRESETS.items()}


def get_config(name: str, **overrides: Any) -> Any:
    """Find the preset ``name`` in any registered family and apply ``overrides``.

    Args:
        name: a preset name such as ``"gpt2"`` or ``"llama-tiny"`` (exact match).
        **overrides: config fields to replace, e.g. ``vocab_size=4096``.

    >>> get_config("debug", vocab_size=300).vocab_size
    300
    """
    for arch, presets in _PRESETS.items():
        if name in presets:
            config_cls: Any = ARCHITECTURES[arch][0]
            return config_cls.from_name(name, **overrides)
    raise ValueError(f"unknown model preset {name!r}; valid names: {preset_names()}")


def build_model(config: Any) -> LanguageModel:
    """Build the model of ``config``'s architecture on the current default device.

    Use ``with torch.device("meta"):`` to build without allocating memory.
    """
    arch = getattr(config, "arch", None)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"no model for config {type(config).__name__} (arch={arch!r}); "
            f"registered architectures: {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[arch][1](config)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of every field of ``config`` plus its ``"arch"``."""
    return {"arch": config.arch, **dataclasses.asdict(config)}


def config_from_dict(d: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`; unknown keys are an error naming them, renamed
    fields are accepted under their old names (config.json files written before)."""
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"config dict has arch={arch!r}; expected one of {sorted(ARCHITECTURES)} "
            "(config.json files written by config_to_dict carry it)"
        )
    config_cls: Any = ARCHITECTURES[arch][0]
    return config_cls.from_dict(d)


register_architecture("gpt", GPTConfig, GPT)
register_architecture("llama", LlamaConfig, Llama)
# Further families register here; MM-Rec lives in its own module:
from gptforge.modeling.mmrec import MMRec, MMRecConfig  # noqa: E402  (needs the helpers above)

register_architecture("mmrec", MMRecConfig, MMRec)
