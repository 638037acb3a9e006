"""gptforge.corpus: streamed corpus readers and the embedded default corpus.

>>> from gptforge.corpus import iter_documents
>>> sum(1 for _ in iter_documents("default")) > 100
True
"""

from gptforge.corpus.default import (
    DEFAULT_CORPUS,
    build_default_documents,
    cache_dir,
    default_corpus_path,
)
from gptforge.corpus.errors import CorpusError
from gptforge.corpus.readers import KNOWN_SUFFIXES, Source, iter_documents, resolve_files

__all__ = [
    "DEFAULT_CORPUS",
    "KNOWN_SUFFIXES",
    "Source",
    "CorpusError",
    "build_default_documents",
    "cache_dir",
    "default_corpus_path",
    "iter_documents",
    "resolve_files",
]
