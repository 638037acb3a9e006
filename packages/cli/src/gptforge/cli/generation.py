"""CLI verbs for the generation area (filled in by its issue)."""

from __future__ import annotations

import typer


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this area's commands to the root app and the shared groups."""
