"""Tokenizer directories: what :meth:`Tokenizer.save` writes and :meth:`Tokenizer.from_dir`
reads.

A directory holds ``tokenizer.json`` (HF ``tokenizers``), ``tokenizer_config.json`` and
``special_tokens_map.json`` (so ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it) and
``gptforge.json`` (name, vocabulary size, special tokens and the fingerprint, checked on load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptforge.fileio import atomic_write_text
from gptforge.tokenizer.errors import TokenizerError
from gptforge.tokenizer.specials import EOT, PAD
from tokenizers import Tokenizer as HFTokenizer

if TYPE_CHECKING:
    from gptforge.tokenizer.core import Tokenizer

FORMAT = "gptforge.tokenizer"
FORMAT_VERSION = 1
META_FILE = "gptforge.json"
HF_FILE = "tokenizer.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`gptforge.fileio.atomic_write_text`)."""
    atomic_write_text(path, text)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def transformers_config(tok: Tokenizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(tokenizer_config.json, special_tokens_map.json)`` contents for ``tok``."""
    specials = tok.special_tokens
    roles: dict[str, Any] = {}
    if EOT in specials:
        roles.update(bos_token=EOT, eos_token=EOT, unk_token=EOT)
    if PAD in specials:
        roles["pad_token"] = PAD
    extra = [t for t in specials if t not in (EOT, PAD)]
    token_map = dict(roles)
    if extra:
        token_map["additional_special_tokens"] = extra
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        **token_map,
    }
    return config, token_map


def save_dir(tok: Tokenizer, path: Path) -> Path:
    """Write ``tok`` into directory ``path`` (see the module docstring)."""
    if path.exists() and not path.is_dir():
        raise TokenizerError(
            f"cannot save a tokenizer to {str(path)!r}: it is a file, not a directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    config, token_map = transformers_config(tok)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": tok.name,
        "n_vocab": tok.n_vocab,
        "pre_tokenizer": tok.pre_tokenizer,
        "pattern": tok.encoding._pat_str,
        "special_tokens": tok.special_tokens,
        "fingerprint": tok.fingerprint,
    }
    write_atomic(path / HF_FILE, tok.hf.to_str(pretty=True))
    write_atomic(path / "tokenizer_config.json", _dumps(config))
    write_atomic(path / "special_tokens_map.json", _dumps(token_map))
    write_atomic(path / META_FILE, _dumps(meta))  # last: its presence marks a complete save
    return path


def load_dir(cls: type[Tokenizer], path: Path) -> Tokenizer:
    """Load a directory written by :func:`save_dir`; verify the fingerprint if recorded."""
    if not path.is_dir():
        raise TokenizerError(
            f"tokenizer directory {str(path)!r} does not exist; create one with "
            "`gptforge tokenizer train --input ... --out DIR` or Tokenizer.save(DIR)"
        )
    hf_path = path / HF_FILE
    if not hf_path.is_file():
        raise TokenizerError(
            f"{str(path)!r} has no {HF_FILE}; it is not a tokenizer directory (found: "
            f"{sorted(p.name for p in path.iterdir())[:10]})"
        )
    try:
        hf = HFTokenizer.from_file(str(hf_path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizerError(
            f"{str(hf_path)!r} could not be parsed by HF tokenizers: {e}"
        ) from None
    meta: dict[str, Any] = {}
    meta_path = path / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise TokenizerError(
                f"{str(meta_path)!r} has format {meta.get('format')!r} version "
                f"{meta.get('format_version')!r}; this gptforge reads {FORMAT!r} version "
                f"{FORMAT_VERSION}"
            )
    name = meta.get("name")
    tok = cls(hf, name=None if name is None or name.startswith("bpe-") else name)
    expected = meta.get("fingerprint")
    if expected and expected != tok.fingerprint:
        raise TokenizerError(
            f"{str(hf_path)!r} does not match the fingerprint recorded in {META_FILE} "
            f"({expected[:12]}... != {tok.fingerprint[:12]}...): the file changed after it was "
            f"saved; save the tokenizer again, or delete {META_FILE} to accept the new contents"
        )
    return tok
