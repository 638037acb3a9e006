"""The embedded default corpus: documentation text that ships inside every Python interpreter.

Every fresh machine that can run gptforge has a Python interpreter, and every CPython ships two
sources of English prose: the ``pydoc`` help topics (``pydoc_data.topics``, the text behind
``help("FORMATTING")`` and friends, about 450 KB) and the docstrings of the standard library
modules, classes and functions (about 1.8 MB). The corpus is built from those on first use, never
copied into the repository, and cached under ``~/.cache/gptforge/corpus/`` as JSON lines (one
``{"text": ...}`` document per line). The build is deterministic for a given interpreter: files
are walked in sorted order and nothing depends on time, hashing seeds or the environment.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from gptforge.fileio import atomic_file

DEFAULT_CORPUS = "default"
"""The source name that :func:`gptforge.corpus.iter_documents` resolves to this corpus."""

_FORMAT_VERSION = 1
# Test suites, IDLE and vendored third-party code add little prose and a lot of noise.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "turtledemo"}
)


def cache_dir() -> Path:
    """Return the gptforge cache directory (``$GPTFORGE_CACHE_DIR`` or ``~/.cache/gptforge``)."""
    env = os.environ.get("GPTFORGE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gptforge"


def _pydoc_topics() -> Iterator[str]:
    """Yield the interpreter's pydoc help topics, one document per topic, in name order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield text


def _module_docstrings(path: Path) -> str:
    """Return a module's docstring followed by its class and function docstrings."""
    try:
        with warnings.catch_warnings():  # old modules have invalid escapes in docstrings
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):  # a few stdlib files are templates, not Python
        return ""
    parts: list[str] = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(module_doc)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 1:
                parts.append(doc)
    return "\n\n".join(parts)


def _stdlib_docstrings() -> Iterator[str]:
    """Yield one document per standard-library module (sorted walk of the stdlib directory)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                text = _module_docstrings(Path(dirpath) / name).strip()
                if text:
                    yield text


def build_default_documents() -> Iterator[str]:
    """Yield the documents of the default corpus, built from the running interpreter.

    >>> docs = build_default_documents()
    >>> isinstance(next(docs), str)
    True
    """
    yield from _pydoc_topics()
    yield from _stdlib_docstrings()


def default_corpus_path() -> Path:
    """Return the path of the default corpus (JSON lines), building it on first use.

    The file name carries the interpreter version because the corpus is built from the
    interpreter's own documentation; the write is atomic (temporary file + ``os.replace``), so
    concurrent first uses are safe.
    """
    impl = sys.implementation.name
    version = ".".join(str(v) for v in sys.version_info[:3])
    path = cache_dir() / "corpus" / f"default-{impl}{version}-v{_FORMAT_VERSION}.jsonl"
    if path.exists():
        return path
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for doc in build_default_documents():
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return path
