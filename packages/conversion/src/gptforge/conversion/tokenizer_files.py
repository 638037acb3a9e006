"""Tokenizer files across formats: our tokenizer directories, HF model directories, OpenAI's files.

Our tokenizer directory already holds what ``transformers.AutoTokenizer`` loads
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``), so exporting copies
it; importing rebuilds our :class:`~gptforge.tokenizer.Tokenizer` from ``tokenizer.json`` or
from GPT-2's ``vocab.json`` + ``merges.txt`` / ``encoder.json`` + ``vocab.bpe`` and saves it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from gptforge.conversion.errors import ConversionError

__all__ = [
    "HF_TOKENIZER_FILES",
    "chat_template_of",
    "copy_tokenizer_to_hf",
    "find_tokenizer_dir",
    "load_tokenizer_from",
]

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
EXTRA_TOKENIZER_FILES = ("gptforge.json", "vocab.json", "merges.txt")
GPT2_FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def find_tokenizer_dir(model_dir: str | os.PathLike[str]) -> Path | None:
    """The tokenizer directory of a model/run directory (``tokenizer/`` or the directory itself)."""
    d = Path(model_dir)
    for cand in (d / "tokenizer", d):
        if (cand / "tokenizer.json").is_file():
            return cand
    return None


def copy_tokenizer_to_hf(
    tokenizer_dir: str | os.PathLike[str], out_dir: Path, chat_template: str | None = None
) -> None:
    """Copy our tokenizer files next to a HF model so ``AutoTokenizer`` loads them, with
    ``chat_template`` (Jinja) in ``tokenizer_config.json`` for ``apply_chat_template``."""
    src = Path(tokenizer_dir)
    missing = [f for f in HF_TOKENIZER_FILES if not (src / f).is_file()]
    if missing:
        raise ConversionError(
            f"tokenizer directory {str(src)!r} lacks {missing}; save it again with "
            "Tokenizer.save(DIR) (gptforge tokenizer train writes all of them)"
        )
    for name in HF_TOKENIZER_FILES + EXTRA_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out_dir / name)
    if chat_template is not None:
        config_path = out_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = chat_template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def chat_template_of(src_dir: Path) -> tuple[str | None, str | None]:
    """``(format name, Jinja template)`` a model was fine-tuned with, ``(None, None)`` if none.

    Our runs record it in ``chat.json`` (``gptforge finetune``), their checkpoints in the
    manifest's ``config``; a HF directory carries it as
    ``chat_template`` in ``tokenizer_config.json`` (kept as is when it is not one of ours).
    """
    from gptforge.tokenizer.chat_template import CHAT_FORMATS

    record = src_dir / "chat.json"
    if record.is_file():
        name = json.loads(record.read_text(encoding="utf-8")).get("template")
        if name not in CHAT_FORMATS:
            raise ConversionError(
                f"{str(record)!r} names chat template {name!r}; known: {sorted(CHAT_FORMATS)}"
            )
        return name, CHAT_FORMATS[name].jinja()
    manifest = src_dir / "manifest.json"  # a fine-tune's checkpoint: the run's config
    if manifest.is_file():
        config = json.loads(manifest.read_text(encoding="utf-8")).get("config") or {}
        name = config.get("template") if isinstance(config, dict) else None
        if name in CHAT_FORMATS:
            return name, CHAT_FORMATS[name].jinja()
    tok_config = src_dir / "tokenizer_config.json"
    if tok_config.is_file():
        jinja = json.loads(tok_config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(jinja, str):
            same = [n for n, f in CHAT_FORMATS.items() if f.jinja() == jinja]
            return (same[0] if same else None), jinja
    return None, None


def load_tokenizer_from(directory: str | os.PathLike[str]) -> Any:
    """Build our ``Tokenizer`` from a tokenizer/model directory in any supported layout.

    Looks for, in order: our ``tokenizer/`` subdirectory, a ``tokenizer.json``, GPT-2's
    ``vocab.json`` + ``merges.txt``, OpenAI's ``encoder.json`` + ``vocab.bpe``.

    Raises:
        ConversionError: none of those files exist (the message lists what is there).
    """
    from gptforge.tokenizer import Tokenizer

    d = Path(directory)
    found = find_tokenizer_dir(d)
    if found is not None:
        return (
            Tokenizer.from_dir(found)
            if (found / "gptforge.json").is_file()
            else Tokenizer.from_file(found / "tokenizer.json")
        )
    for a, b in GPT2_FILE_PAIRS:
        if (d / a).is_file() and (d / b).is_file():
            return Tokenizer.gpt2(d)
    present = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    raise ConversionError(
        f"no tokenizer files in {str(d)!r}: expected tokenizer/ or tokenizer.json, or "
        f"{' + '.join(GPT2_FILE_PAIRS[0])}, or {' + '.join(GPT2_FILE_PAIRS[1])}; found {present[:12]}. "
        "Pass --no-tokenizer to convert the weights alone"
    )
