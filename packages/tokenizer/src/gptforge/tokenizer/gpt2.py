"""OpenAI's GPT-2 tokenizer from files already on this machine; never downloads.

GPT-2's tokenizer is two files: ``encoder.json`` (byte-level token string -> id, 50257 entries)
and ``vocab.bpe`` (the 50000 merges, one ``"a b"`` pair per line after a ``#version`` header).
Hugging Face ships the same two files as ``vocab.json`` and ``merges.txt``. They are looked up,
in order, in: the directory passed in, tiktoken's cache (``$TIKTOKEN_CACHE_DIR``,
``$DATA_GYM_CACHE_DIR`` or ``<tmp>/data-gym-cache``, where ``tiktoken.get_encoding("gpt2")`` keeps
them), and the Hugging Face hub cache (``openai-community/gpt2``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from gptforge.tokenizer.errors import TokenizerError
from gptforge.tokenizer.hf_bridge import add_special, new_byte_level_bpe
from gptforge.tokenizer.specials import EOT
from tokenizers import Tokenizer as HFTokenizer

# Where tiktoken downloads GPT-2's files from (its cache names files by the sha1 of the URL)
# and the sha256 it expects of their contents.
_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
TIKTOKEN_FILES = {
    "encoder.json": (
        _BASE + "encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "vocab.bpe": (
        _BASE + "vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
_HF_REPOS = ("models--openai-community--gpt2", "models--gpt2")


def tiktoken_cache_dir() -> Path | None:
    """Return the directory tiktoken caches downloads in (``None`` when caching is off)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _from_tiktoken_cache() -> tuple[Path, Path] | None:
    cache = tiktoken_cache_dir()
    if cache is None:
        return None
    found = []
    for name in ("encoder.json", "vocab.bpe"):
        url, sha256 = TIKTOKEN_FILES[name]
        path = cache / hashlib.sha1(url.encode()).hexdigest()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            return None
        found.append(path)
    return found[0], found[1]


def _hf_hub_dirs() -> list[Path]:
    hub = os.environ.get("HF_HUB_CACHE")
    if hub:
        root = Path(hub)
    else:
        home = os.environ.get("HF_HOME")
        root = (Path(home) if home else Path.home() / ".cache" / "huggingface") / "hub"
    return [d for repo in _HF_REPOS for d in sorted((root / repo / "snapshots").glob("*"))]


def _pair_in(directory: Path) -> tuple[Path, Path] | None:
    for vocab_name, merges_name in _FILE_PAIRS:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return directory / vocab_name, directory / merges_name
    return None


def find_gpt2_files(path: str | Path | None = None) -> tuple[Path, Path]:
    """Return ``(encoder.json, vocab.bpe)`` paths (or their HF names) found offline.

    Raises:
        TokenizerError: None were found; the message lists where to put them.
    """
    if path is not None:
        directory = Path(path)
        pair = _pair_in(directory) if directory.is_dir() else None
        if pair is None:
            raise TokenizerError(
                f"{str(directory)!r} does not hold GPT-2's tokenizer files; expected "
                "encoder.json + vocab.bpe (OpenAI's names) or vocab.json + merges.txt "
                "(Hugging Face's names) in that directory"
            )
        return pair
    cached = _from_tiktoken_cache()
    if cached is not None:
        return cached
    for snapshot in _hf_hub_dirs():
        pair = _pair_in(snapshot)
        if pair is not None:
            return pair
    raise TokenizerError(
        "GPT-2's tokenizer files are not on this machine and gptforge never downloads. Provide "
        "them in one of these ways: pass a directory holding encoder.json + vocab.bpe (or "
        "vocab.json + merges.txt) as Tokenizer.gpt2(path=...) or `gptforge tokenizer encode --tokenizer DIR`; or, on a machine "
        "with network, run `python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"` with "
        f"TIKTOKEN_CACHE_DIR set and copy that cache here (searched: {tiktoken_cache_dir()})"
    )


def read_gpt2_files(
    vocab_path: Path, merges_path: Path
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Parse an ``encoder.json`` and a ``vocab.bpe`` (merges) file, checking they agree."""
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(
            f"{str(vocab_path)!r} is not a JSON object of token -> id: {e}"
        ) from None
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{str(vocab_path)!r} must hold a JSON object of token -> id")
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(merges_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(
                f"{str(merges_path)!r} line {lineno} is {line!r}; each merge line must be two "
                "tokens separated by one space"
            )
        a, b = parts
        for token in (a, b, a + b):
            if token not in vocab:
                raise TokenizerError(
                    f"{str(merges_path)!r} line {lineno} ({line!r}) uses {token!r}, which "
                    f"{str(vocab_path)!r} does not contain; the two files do not belong together"
                )
        merges.append((a, b))
    return vocab, merges


def load_gpt2(path: str | Path | None = None) -> HFTokenizer:
    """Return GPT-2's tokenizer as an HF byte-level BPE, from files found offline."""
    vocab_path, merges_path = find_gpt2_files(path)
    vocab, merges = read_gpt2_files(vocab_path, merges_path)
    hf = new_byte_level_bpe(vocab, merges)
    if EOT in vocab:
        add_special(hf, [EOT])
    return hf
