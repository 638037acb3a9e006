"""Regenerate the protobuf/gRPC Python code of ``proto/`` into the ``gptforge-api`` member.

Used by ``make proto``; ``make proto-check`` runs it and then ``git diff --exit-code``, so the
output must be a pure function of the ``.proto`` files and the pinned ``grpcio-tools``:

- every ``proto/**/*.proto`` is compiled in sorted order with ``-I proto``, so the directory path
  is the Python import path (``proto/gptforge/api/tokenizer/v1/tokenizer.proto`` ->
  ``gptforge.api.tokenizer.v1.tokenizer_pb2``) and the generated ``*_pb2_grpc.py`` import their
  messages as ``from gptforge.api.tokenizer.v1 import tokenizer_pb2`` (absolute, never the
  top-level ``import tokenizer_pb2`` that breaks inside a package);
- stale generated files are deleted before writing, and ``__init__.py`` files are written for
  every generated package;
- the output is generated in a temporary directory and then moved in, so a failed run leaves the
  committed code untouched.

Run: ``uv run python tools/gen_proto.py`` (or ``make proto``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "packages" / "api" / "src"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '"""Generated from proto/ by tools/gen_proto.py; do not edit."""\n'
# A bare `import foo_pb2` would only work with the output directory on sys.path.
_BARE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def find_protos(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Return every ``.proto`` under ``proto_dir``, relative to it, sorted."""
    protos = sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}; nothing to generate")
    return protos


def _check_pinned_grpc_tools() -> str:
    """Return the grpcio-tools version, failing when it is not the one pinned in pyproject."""
    import tomllib
    from importlib.metadata import version

    installed = version("grpcio-tools")
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    pins = [d.split("==", 1)[1] for d in dev if d.replace(" ", "").startswith("grpcio-tools==")]
    if pins and pins[0] != installed:
        raise SystemExit(
            f"grpcio-tools {installed!r} is installed but pyproject.toml pins {pins[0]!r}; "
            "run `uv sync --locked` so the generated code matches the committed one"
        )
    return installed


def _fix_imports(path: Path, package: str) -> None:
    """Rewrite bare ``import x_pb2 as y`` lines into ``from <package> import x_pb2 as y``."""
    text = path.read_text()
    fixed = _BARE_IMPORT.sub(rf"from {package} import \1 as \2", text)
    if fixed != text:
        path.write_text(fixed)


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[Path]:
    """Compile every proto into ``out_dir`` and return the written files (relative to it)."""
    from grpc_tools import protoc

    protos = find_protos(proto_dir)
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="gen_proto_") as tmp:
        tmp_out = Path(tmp)
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={tmp_out}",
            f"--pyi_out={tmp_out}",
            f"--grpc_python_out={tmp_out}",
            *(str(p) for p in protos),
        ]
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code} on {[str(p) for p in protos]}")
        written: list[Path] = []
        for proto in protos:
            package_dir = proto.parent
            package = ".".join(package_dir.parts)
            for suffix in GENERATED_SUFFIXES:
                rel = package_dir / f"{proto.stem}{suffix}"
                _fix_imports(tmp_out / rel, package)
                written.append(rel)
            # Every generated directory below the member's own top package gets an __init__.py.
            for depth in range(3, len(package_dir.parts) + 1):
                init = Path(*package_dir.parts[:depth]) / "__init__.py"
                if not (tmp_out / init).exists():
                    (tmp_out / init).write_text(INIT_TEXT)
                    written.append(init)
        _remove_stale(out_dir, proto_dir, set(written))
        for rel in sorted(set(written)):
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel.name == "__init__.py" and target.exists():
                continue  # hand-written package docstrings are kept
            staged = target.with_name(target.name + ".tmp")
            shutil.copyfile(tmp_out / rel, staged)
            staged.replace(target)
    return sorted(set(written))


def _remove_stale(out_dir: Path, proto_dir: Path, keep: set[Path]) -> None:
    """Delete generated files whose .proto no longer exists."""
    for top in {p.parts[0] for p in find_protos(proto_dir)}:
        for path in (out_dir / top).rglob("*"):
            rel = path.relative_to(out_dir)
            if path.name.endswith(GENERATED_SUFFIXES) and rel not in keep:
                path.unlink()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    tools_version = _check_pinned_grpc_tools()
    written = generate()
    print(
        f"grpcio-tools {tools_version}: wrote {len(written)} files under {OUT_DIR.relative_to(ROOT)}"
    )
    for rel in written:
        print(f"  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
