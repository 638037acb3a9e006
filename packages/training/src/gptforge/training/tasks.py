"""A generated instruction set with checkable answers, written for this project.

Ten small task families drawn deterministically from a seed, so the demo and the tests can
measure held-out exact-match accuracy before and after fine-tuning without downloading anything:

- copying from a position: ``first`` and ``last`` word of 2-4 words;
- small lookups: ``next_letter`` (a -> b), ``opposite`` (a fixed table of 16 pairs, both ways);
- ``count``: the number of words (1-5);
- harder, multi-token answers: ``copy``, ``capitalise``, ``reverse`` words, single-digit
  ``add``, ``successor`` of 0-98.

:data:`DEFAULT_TASKS` (the first five) have answers of one or two tokens and short instructions,
so a barely pre-trained ``tiny`` model learns them within the demo's time budget; the harder
families need a better pre-trained model. Held-out records are other draws of the same
families: for the combinatorial families (``first``, ``last``, ``count``) most held-out inputs
are new word sequences, while a lookup family has few distinct questions (25 letters, 32
words), so its held-out questions also occur in training and it measures recall of the table.
"""

from __future__ import annotations

import random

# Common words that a byte-level BPE trained on English/technical text (the default corpus)
# keeps as single tokens, so copying a word is copying one token.
WORDS = [
    "file",
    "list",
    "name",
    "value",
    "type",
    "string",
    "number",
    "class",
    "object",
    "data",
    "line",
    "text",
    "time",
    "path",
    "code",
    "test",
    "error",
    "function",
    "module",
    "key",
    "word",
    "index",
    "user",
    "order",
    "block",
    "group",
    "event",
    "point",
]

# Pairs of opposites for the ``opposite`` lookup family (asked in both directions).
OPPOSITES = [
    ("up", "down"),
    ("on", "off"),
    ("in", "out"),
    ("min", "max"),
    ("get", "set"),
    ("read", "write"),
    ("open", "close"),
    ("left", "right"),
    ("old", "new"),
    ("input", "output"),
    ("add", "remove"),
    ("start", "end"),
    ("yes", "no"),
    ("true", "false"),
    ("high", "low"),
    ("push", "pop"),
]
_OPPOSITE = {**dict(OPPOSITES), **{b: a for a, b in OPPOSITES}}
LETTERS = "abcdefghijklmnopqrstuvwxyz"

#: Every known task family.
TASK_NAMES = (
    "copy",
    "capitalise",
    "reverse",
    "add",
    "successor",
    "first",
    "last",
    "next_letter",
    "opposite",
    "count",
)
#: The families used when none are named: answers of one or two tokens that the ``tiny``
#: preset learns from a few hundred fine-tuning steps (measured in docs/training.md).
DEFAULT_TASKS = ("first", "last", "next_letter", "opposite", "count")


def _words(rng: random.Random, low: int = 2, high: int = 4) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(low, high))]


def make_task(name: str, rng: random.Random) -> dict[str, str]:
    """One record ``{"instruction", "input", "output", "task"}`` of task family ``name``."""
    if name == "copy":
        text = " ".join(_words(rng))
        return {"instruction": "Repeat the words.", "input": text, "output": text}
    if name == "capitalise":
        text = " ".join(_words(rng, 1, 3))
        return {
            "instruction": "Write the words in capital letters.",
            "input": text,
            "output": text.upper(),
        }
    if name == "reverse":
        words = _words(rng, 2, 3)
        return {
            "instruction": "Reverse the order of the words.",
            "input": " ".join(words),
            "output": " ".join(reversed(words)),
        }
    if name == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return {"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)}
    if name == "successor":
        n = rng.randint(0, 98)
        return {"instruction": "What number comes next?", "input": str(n), "output": str(n + 1)}
    if name == "first":
        words = _words(rng, 2, 4)
        return {"instruction": "Give the first word.", "input": " ".join(words), "output": words[0]}
    if name == "last":
        words = _words(rng, 2, 4)
        return {"instruction": "Last word.", "input": " ".join(words), "output": words[-1]}
    if name == "next_letter":
        i = rng.randrange(len(LETTERS) - 1)
        return {"instruction": "Next letter.", "input": LETTERS[i], "output": LETTERS[i + 1]}
    if name == "opposite":
        word = rng.choice(sorted(_OPPOSITE))
        return {"instruction": "Opposite.", "input": word, "output": _OPPOSITE[word]}
    if name == "count":
        words = _words(rng, 1, 5)
        return {
            "instruction": "Count the words.",
            "input": " ".join(words),
            "output": str(len(words)),
        }
    raise ValueError(f"unknown task {name!r}; known tasks: {list(TASK_NAMES)}")


def generate_tasks(
    n: int, *, seed: int = 0, tasks: tuple[str, ...] = DEFAULT_TASKS
) -> list[dict[str, str]]:
    """``n`` records cycling through ``tasks``, reproducible from ``seed``.

    >>> generate_tasks(2, seed=1, tasks=("copy", "add"))[0]["instruction"]
    'Repeat the words.'
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise ValueError(
            f"tasks={tasks!r} names unknown families {unknown}; choose from {list(TASK_NAMES)}"
        )
    rng = random.Random(seed)
    records = []
    for i in range(n):
        name = tasks[i % len(tasks)]
        records.append({**make_task(name, rng), "task": name})
    return records
