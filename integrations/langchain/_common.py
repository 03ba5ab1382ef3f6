"""Helpers shared by the LangChain adapters: the shared model, the per-text cache, Documents.

Nothing here imports LangChain, so the cache could serve other frameworks' adapters as well.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from m3_rag.encoder import M3Embedder

from .._embedder import resolve_embedder

__all__ = [
    "CACHE_SIZE",
    "INSTALL_HINT",
    "SCORE_KEYS",
    "CachedEncoding",
    "EncodingCache",
    "Kind",
    "cache_for",
    "encode_cached",
    "resolve_embedder",
    "score_metadata",
]

#: What the ImportError of a missing LangChain says to run.
INSTALL_HINT = 'pip install "m3-rag[langchain]"'
#: Entries per model in the shared cache of :func:`encode_cached` (a Qdrant batch is 64 texts).
CACHE_SIZE = 4096
#: Metadata keys of the hybrid score and of the per-mode scores on returned Documents.
SCORE_KEYS = {
    "score": "relevance_score",
    "dense": "dense_score",
    "sparse": "sparse_score",
    "colbert": "colbert_score",
    "hybrid": "hybrid_score",  # with a cross-encoder final stage: the hybrid score it replaced
    "cross_encoder": "cross_encoder_score",
}

Kind = Literal["query", "document"]


@dataclass(frozen=True)
class CachedEncoding:
    """The dense vector (float32, (d,)) and sparse weights ``{token_id: weight}`` of one text."""

    dense: np.ndarray
    sparse: dict[int, float]


class EncodingCache:
    """A thread-safe LRU of :class:`CachedEncoding` keyed by (kind, max_length, text).

    >>> cache = EncodingCache(maxsize=1)
    >>> cache.put([("query", 8, "a")], [CachedEncoding(np.zeros(2, np.float32), {})])
    >>> cache.get_many([("query", 8, "a"), ("document", 8, "a")])[1] is None
    True
    """

    def __init__(self, maxsize: int = CACHE_SIZE) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0 turns caching off), got {maxsize!r}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, CachedEncoding] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def get_many(self, keys: Sequence[Hashable]) -> list[CachedEncoding | None]:
        with self._lock:
            found = [self._data.get(key) for key in keys]
            for key, entry in zip(keys, found):
                if entry is not None:
                    self._data.move_to_end(key)
            return found

    def put(self, keys: Sequence[Hashable], entries: Sequence[CachedEncoding]) -> None:
        with self._lock:
            for key, entry in zip(keys, entries):
                self._data[key] = entry
                self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


_CACHES: weakref.WeakKeyDictionary[M3Embedder, EncodingCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(embedder: M3Embedder) -> EncodingCache:
    """The one cache of this model: every adapter on the same :class:`M3Embedder` shares it."""
    with _CACHES_LOCK:
        cache = _CACHES.get(embedder)
        if cache is None:
            cache = _CACHES[embedder] = EncodingCache()
        return cache


def encode_cached(
    embedder: M3Embedder,
    texts: Sequence[str],
    *,
    kind: Kind,
    max_length: int | None = None,
    batch_size: int | None = None,
) -> list[CachedEncoding]:
    """Dense + sparse encodings of ``texts``, computed in one pass for the texts not cached yet.

    Queries use ``encode_queries`` and documents ``encode_documents``; each distinct text not in
    the cache is encoded once, so a dense and a sparse adapter asking for the same texts (as
    ``QdrantVectorStore`` does in hybrid mode) run the model once per text.
    """
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of str, got a str: {texts!r:.80}; wrap it in a list")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}: {text!r:.80}")
    if max_length is None:
        max_length = embedder.query_max_length if kind == "query" else embedder.passage_max_length
    cache = cache_for(embedder)
    keys = [(kind, max_length, text) for text in items]
    found = cache.get_many(keys)
    missing = list(dict.fromkeys(text for text, entry in zip(items, found) if entry is None))
    fresh: dict[str, CachedEncoding] = {}
    if missing:
        encode = embedder.encode_queries if kind == "query" else embedder.encode_documents
        out = encode(missing, dense=True, sparse=True, colbert=False, max_length=max_length, batch_size=batch_size)
        assert out.dense is not None and out.sparse is not None
        fresh = {text: CachedEncoding(out.dense[i].copy(), out.sparse[i].to_dict()) for i, text in enumerate(missing)}
        cache.put([(kind, max_length, text) for text in missing], list(fresh.values()))
    return [entry if entry is not None else fresh[text] for text, entry in zip(items, found)]


def score_metadata(metadata: Mapping[str, Any] | None, score: float, scores: Mapping[str, float]) -> dict[str, Any]:
    """A new dict: ``metadata`` plus ``relevance_score`` and ``dense_score``/``sparse_score``/``colbert_score``.

    >>> score_metadata({"source": "a"}, 0.5, {"dense": 0.7, "sparse": 0.1, "colbert": 0.7})
    {'source': 'a', 'relevance_score': 0.5, 'dense_score': 0.7, 'sparse_score': 0.1, 'colbert_score': 0.7}
    """
    out = dict(metadata or {})
    out[SCORE_KEYS["score"]] = float(score)
    for mode in ("dense", "sparse", "colbert", "hybrid", "cross_encoder"):
        if mode in scores:
            out[SCORE_KEYS[mode]] = float(scores[mode])
    return out
