"""Splice the per-area user guides in docs/ into the root README (between the section markers).

The guides are written next to the code they describe; the README shows them in pipeline order so
a new user reads one page. Run with ``make readme`` after editing a guide.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = [
    "demo",
    "tokenizer",
    "modeling",
    "training",
    "generation",
    "conversion",
    "mmrec",
    "services",
]
START, END = "<!-- sections:start -->", "<!-- sections:end -->"


def main() -> None:
    parts = []
    for name in ORDER:
        path = ROOT / "docs" / f"{name}.md"
        if path.exists():
            text = path.read_text().strip()
            parts.append(f"{text}\n\n<sub>Source: [docs/{name}.md](docs/{name}.md)</sub>")
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = "\n\n".join(parts)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    os.replace(tmp, readme)
    print(f"README.md: spliced {len(parts)} guides")


if __name__ == "__main__":
    main()
