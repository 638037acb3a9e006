"""Guards of the workspace layout described in CONVENTIONS.md."""

from __future__ import annotations

import tomllib
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


def test_dependency_direction():
    """tokenizer/modeling depend on no model sibling; packages never depend on services."""
    deps = {}
    for member in MEMBERS:
        meta = tomllib.loads((member / "pyproject.toml").read_text())["project"]
        deps[meta["name"]] = {
            d.split(">")[0].split("=")[0].strip() for d in meta.get("dependencies", [])
        }
    assert not {d for d in deps["gptforge-modeling"] if d.startswith("gptforge-")}
    assert {d for d in deps["gptforge-tokenizer"] if d.startswith("gptforge-")} <= {
        "gptforge-corpus"
    }
    for name, ds in deps.items():
        if name.endswith("-service") or name == "gptforge-cli":
            continue
        assert not {d for d in ds if d.endswith("-service") or d == "gptforge-cli"}, name
