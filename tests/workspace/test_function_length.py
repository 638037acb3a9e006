"""Guard of the function-length rule in docs/contracts.md: no function in packages/*/src or
services/*/src runs over ``MAX_LINES`` lines unless a comment beside it says why."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 100
#: A comment holding this (any case) on the line above the ``def`` (above its decorators), or
#: between the ``def`` and its first statement, says why the function stays long.
MARKER = "long because"

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.AST) -> Iterator[Function]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _length(fn: Function) -> int:
    """Lines from the ``def`` to the last line of the body (decorators not counted)."""
    assert fn.end_lineno is not None
    return fn.end_lineno - fn.lineno + 1


def _explained(fn: Function, lines: list[str]) -> bool:
    top = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    header = lines[max(top - 2, 0) : fn.body[0].lineno]
    return any("#" in line and MARKER in line.split("#", 1)[1].lower() for line in header)


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(name, line, length)`` of each function over ``limit`` lines without the marker."""
    lines = source.splitlines()
    return [
        (fn.name, fn.lineno, _length(fn))
        for fn in _functions(ast.parse(source))
        if _length(fn) > limit and not _explained(fn, lines)
    ]


def _sources() -> Iterator[Path]:
    for top in ("packages", "services"):
        yield from sorted(ROOT.glob(f"{top}/*/src/**/*.py"))


def test_no_unexplained_long_function():
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if "_pb2" in path.name:
            continue
        found += [
            f"{rel}:{line} {name} ({n} lines)" for name, line, n in long_functions(path.read_text())
        ]
    assert not found, (
        f"functions over {MAX_LINES} lines: split them into named functions, or put a comment "
        f"with {MARKER!r} and the reason on the line above the def:\n" + "\n".join(found)
    )


def _body(n: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(n))


def test_guard_finds_a_long_function_and_accepts_a_reason():
    long = "def f():\n" + _body(MAX_LINES)
    assert long_functions(long) == [("f", 1, MAX_LINES + 1)]
    assert long_functions("def f():\n" + _body(MAX_LINES - 1)) == []
    above = "# long because: one table of options\n@staticmethod\n" + long
    assert long_functions(above) == []
    first = "def f():  # unrelated\n    # Long because the steps share state.\n" + _body(MAX_LINES)
    assert long_functions(first) == []
    nested = "class C:\n" + textwrap.indent("async def g(self):\n" + _body(MAX_LINES), "    ")
    assert long_functions(nested) == [("g", 2, MAX_LINES + 1)]
    unmarked = "# long, but no reason\n" + long
    assert long_functions(unmarked) == [("f", 2, MAX_LINES + 1)]
