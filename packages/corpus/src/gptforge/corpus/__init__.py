"""gptforge.corpus: streamed corpus readers and the embedded default corpus.

>>> from gptforge.corpus import iter_documents
>>> sum(1 for _ in iter_documents("default")) > 100
True
"""

from gptforge.corpus.cutting import Segment, cut_point, split_text
from gptforge.corpus.default import (
    DEFAULT_CORPUS,
    build_default_documents,
    cache_dir,
    default_corpus_path,
)
from gptforge.corpus.errors import CorpusError
from gptforge.corpus.readers import (
    KNOWN_SUFFIXES,
    Source,
    iter_documents,
    iter_segments,
    resolve_files,
    segment_documents,
)

__all__ = [
    "DEFAULT_CORPUS",
    "KNOWN_SUFFIXES",
    "Segment",
    "Source",
    "CorpusError",
    "build_default_documents",
    "cache_dir",
    "default_corpus_path",
    "cut_point",
    "iter_documents",
    "iter_segments",
    "resolve_files",
    "segment_documents",
    "split_text",
]
