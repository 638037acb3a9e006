"""The single ``gptforge`` command.

Each area of the project owns one module under ``gptforge.cli`` exposing
``register(root, groups)``; it adds its verbs to the root app or to one of the shared
groups (``serve``, ``client``, ``convert``). Modules import heavy libraries (torch,
grpc) inside the command functions so ``gptforge --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

AREAS = (
    "tokenizer",
    "tokenizer_service",
    "model",
    "training",
    "generation",
    "conversion",
    "mmrec",
    "demo",
)

app = typer.Typer(
    name="gptforge",
    help="gptforge: from raw text to a trained, converted and served GPT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
groups: dict[str, typer.Typer] = {
    "serve": typer.Typer(help="Run a gRPC service.", no_args_is_help=True),
    "client": typer.Typer(help="Call a running gRPC service.", no_args_is_help=True),
    "convert": typer.Typer(help="Convert checkpoints between formats.", no_args_is_help=True),
}

for _area in AREAS:
    importlib.import_module(f"gptforge.cli.{_area}").register(app, groups)
for _name, _group in groups.items():
    app.add_typer(_group, name=_name)


def main() -> None:
    """Entry point of the ``gptforge`` console script."""
    app()


if __name__ == "__main__":
    main()
