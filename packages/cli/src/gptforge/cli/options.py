"""Options shared by several verbs, checked before torch is imported."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from gptforge.training.config import DEVICE_CHOICES, check_device_name


def check_device(value: str | None) -> str | None:
    """Typer callback: refuse an unknown ``--device`` name before any torch import."""
    if value is None:
        return None
    try:
        return check_device_name(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


DeviceOpt = Annotated[
    str, typer.Option("--device", help=f"{DEVICE_CHOICES}.", callback=check_device)
]


def warn_token_on_command_line() -> None:
    """Warn when ``--auth-token`` was given as an argument: every local user sees it in ``ps``."""
    if any(a == "--auth-token" or a.startswith("--auth-token=") for a in sys.argv):
        typer.secho(
            "warning: --auth-token on the command line is visible to every local user (ps, "
            "/proc); set GPTFORGE_AUTH_TOKEN in the environment instead",
            err=True,
            fg="yellow",
        )
