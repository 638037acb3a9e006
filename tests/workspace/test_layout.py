"""Guards of the workspace layout described in CONVENTIONS.md."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = sorted(
    p.parent for p in ROOT.glob("*/*/pyproject.toml") if p.parts[-3] in {"packages", "services"}
)


def test_members_exist():
    names = {m.name for m in MEMBERS}
    assert {"tokenizer", "modeling", "corpus", "api", "cli"} <= names


def test_no_namespace_init_files():
    """`gptforge` (and `gptforge.services`) are namespace packages shared by many members."""
    for member in MEMBERS:
        assert not (member / "src/gptforge/__init__.py").exists(), member
        assert not (member / "src/gptforge/services/__init__.py").exists(), member


def test_each_member_has_version_changelog_and_py_typed():
    for member in MEMBERS:
        meta = tomllib.loads((member / "pyproject.toml").read_text())["project"]
        assert meta["name"].startswith("gptforge-"), member
        assert meta["version"], member
        assert (member / "CHANGELOG.md").exists(), member
        module = meta["name"].removeprefix("gptforge-").replace("-service", "")
        typed = list((member / "src").rglob("py.typed"))
        assert typed, f"{member} ships no py.typed"
        del module


#: The layer of each member, bottom first: a member may import only members of lower layers.
#: conversion owns loading every format, so sampling (and everything above) loads through it.
LAYERS = {
    "gptforge-fileio": 0,
    "gptforge-api": 0,
    "gptforge-corpus": 1,
    "gptforge-tokenizer": 2,
    "gptforge-modeling": 2,
    "gptforge-conversion": 3,
    "gptforge-sampling": 4,
    "gptforge-training": 5,
    "gptforge-tokenizer-service": 6,
    "gptforge-generation-service": 6,
    "gptforge-demo": 7,
    "gptforge-cli": 8,
}


def _member_meta() -> dict[str, tuple[Path, str, set[str]]]:
    out = {}
    for member in MEMBERS:
        doc = tomllib.loads((member / "pyproject.toml").read_text())
        deps = {
            re.split(r"[<>=\[ ;]", d, maxsplit=1)[0] for d in doc["project"].get("dependencies", [])
        }
        module = doc["tool"]["uv"]["build-backend"]["module-name"]
        out[doc["project"]["name"]] = (member, module, deps)
    return out


def _imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Absolute imports of one file, including those inside functions (they run too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            yield from ((f"{node.module}.{a.name}", node.lineno) for a in node.names)


def test_every_member_has_a_layer():
    assert set(_member_meta()) == set(LAYERS)


def test_dependency_direction_on_real_imports():
    """Each member imports only members it declares, and only from lower layers."""
    meta = _member_meta()
    owners = sorted(((m[1], name) for name, m in meta.items()), key=lambda x: -len(x[0]))
    problems = []
    for name, (member, _, deps) in meta.items():
        for path in (member / "src").rglob("*.py"):
            if "_pb2" in path.name:
                continue
            for module, line in _imported_modules(path):
                owner = next(
                    (d for m, d in owners if module == m or module.startswith(m + ".")), None
                )
                if owner is None or owner == name:
                    continue
                where = f"{path.relative_to(ROOT)}:{line} imports {module}"
                if owner not in deps:
                    problems.append(f"{where}, but {name} does not declare {owner}")
                elif LAYERS[owner] >= LAYERS[name]:
                    problems.append(f"{where}: {owner} is not below {name}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_declared_dependencies_point_down():
    for name, (_, _, deps) in _member_meta().items():
        for dep in deps & set(LAYERS):
            assert LAYERS[dep] < LAYERS[name], f"{name} declares {dep}, which is not below it"
