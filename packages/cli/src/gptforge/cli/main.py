"""The single ``gptforge`` command.

Each area of the project owns one module under ``gptforge.cli`` exposing
``register(root, groups)``; it adds its verbs to the root app or to one of the shared
groups (``serve``, ``client``, ``convert``). Modules import heavy libraries (torch,
grpc) inside the command functions so ``gptforge --help`` stays fast.
"""

from __future__ import annotations

import typer
from gptforge.cli import (
    conversion,
    demo,
    generation,
    mmrec,
    model,
    tokenizer,
    tokenizer_service,
    training,
)

#: The areas, in the order their verbs appear in ``gptforge --help``.
AREAS = (tokenizer, tokenizer_service, model, training, generation, conversion, mmrec, demo)

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
    _area.register(app, groups)
for _name, _group in groups.items():
    app.add_typer(_group, name=_name)


#: Errors that come from what the user passed (a path, a value, a file's content); they print as
#: one line. Anything else is a bug and keeps its traceback. GPTFORGE_DEBUG=1 shows them all.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)


def main() -> None:
    """Entry point of the ``gptforge`` console script: every user error is one line."""
    import os
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: a bad flag or value
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        if exc.format_message():  # empty when a group without a verb already printed its help
            typer.secho(f"error: {exc.format_message()}{hint}", err=True, fg="red")
        sys.exit(getattr(exc, "exit_code", 2))
    except USER_ERRORS as exc:
        if os.environ.get("GPTFORGE_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.secho(f"error: {message}", err=True, fg="red")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
