"""Argument parsing generated from the config dataclasses (for ``python -m gptforge.training``).

Flags are the field names with ``_`` spelled ``-``; booleans get ``--flag/--no-flag``. Only the
flags given on the command line are returned, so a resumed run can overlay them on its saved
config.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

# Flag spellings that differ from the field name (`--from` reads as the verb it completes).
# `--block-size` is nanoGPT's name for the context.
ALIASES = {
    "from_run": ["--from", "--from-run"],
    "context_length": ["--context-length", "--block-size"],
}


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of dataclass ``cls`` (default ``SUPPRESS``: absent if not given)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flags = ALIASES.get(f.name, ["--" + f.name.replace("_", "-")])
        base = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if base is bool:
            parser.add_argument(
                *flags,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"(default: {default})",
            )
        else:
            parser.add_argument(
                *flags,
                dest=f.name,
                type=base,
                default=argparse.SUPPRESS,
                help=f"(default: {default})",
            )


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` present in ``namespace`` (i.e. given on the command line)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names}
