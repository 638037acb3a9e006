"""The ``>>>`` examples in the modeling docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["__init__", "config", "gpt", "llama", "registry", "introspect", "io", "loss"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(
        "gptforge.modeling" if name == "__init__" else f"gptforge.modeling.{name}"
    )
    import torch

    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
