"""The generated protobuf/gRPC code: fresh, deterministic, importable under gptforge.api."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "packages" / "api" / "src"
MODULES = [
    "gptforge.api.tokenizer.v1.tokenizer_pb2",
    "gptforge.api.tokenizer.v1.tokenizer_pb2_grpc",
    "gptforge.api.generation.v1.generation_pb2",
    "gptforge.api.generation.v1.generation_pb2_grpc",
]


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_code_equals_a_fresh_generation(tmp_path: Path):
    """What `make proto-check` checks, without touching the working tree."""
    written = _gen_proto().generate(out_dir=tmp_path)
    assert {p.name for p in written} >= {Path(m.replace(".", "/")).name + ".py" for m in MODULES}
    for rel in written:
        fresh = (tmp_path / rel).read_text()
        committed = GENERATED / rel
        assert committed.exists(), f"{rel} is not generated yet: run `make proto`"
        if rel.name != "__init__.py":
            assert committed.read_text() == fresh, f"{rel} is stale: run `make proto`"


def test_generation_is_deterministic(tmp_path: Path):
    gen = _gen_proto()
    first = {
        rel: (tmp_path / "a" / rel).read_bytes() for rel in gen.generate(out_dir=tmp_path / "a")
    }
    second = {
        rel: (tmp_path / "b" / rel).read_bytes() for rel in gen.generate(out_dir=tmp_path / "b")
    }
    assert first == second


@pytest.mark.parametrize("name", MODULES)
def test_generated_modules_import_by_package_path(name: str):
    module = importlib.import_module(name)
    assert module.__file__ is not None and module.__file__.startswith(str(GENERATED))
    text = Path(module.__file__).read_text()
    # no top-level `import tokenizer_pb2`-style imports that only work with the dir on sys.path
    assert "\nimport tokenizer_pb2" not in text and "\nimport generation_pb2" not in text
    assert "tokenizer_pb2" not in sys.modules and "generation_pb2" not in sys.modules


def test_contract_conventions():
    """Enum zero values are *_UNSPECIFIED and sampling fields track presence (proto3 optional)."""
    from gptforge.api.generation.v1 import generation_pb2 as gen
    from gptforge.api.tokenizer.v1 import tokenizer_pb2 as tok

    for module in (gen, tok):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.full_name
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name.split(".")[-2] == "v1"
            for method in service.methods:
                # GenerateStream shares GenerateRequest on purpose (same request, streamed answer)
                base = method.name.removesuffix("Stream")
                assert method.input_type.name == f"{base}Request", method.full_name
                assert method.output_type.name == f"{method.name}Response", method.full_name
    request = gen.GenerateRequest(text="hi", temperature=0.0)
    assert request.HasField("temperature") and not request.HasField("top_p")
    for field in (
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "seed",
        "max_new_tokens",
        "min_new_tokens",
    ):
        assert gen.GenerateRequest.DESCRIPTOR.fields_by_name[field].has_presence, field


def test_every_proto_field_is_documented():
    """Each field has a comment on its line or the line above (the .proto is the API doc)."""
    field = re.compile(r"\s+(optional |repeated )?[\w.<>, ]+ \w+ = \d+;")
    missing = []
    for path in sorted((ROOT / "proto").rglob("*.proto")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if field.match(line) and "//" not in line and not lines[i - 1].strip().startswith("//"):
                missing.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert not missing, "undocumented proto fields:\n" + "\n".join(missing)
