"""One model pass per text when a framework asks for the dense and the sparse vectors separately.

Vector stores with hybrid search (``langchain_qdrant.QdrantVectorStore``, langchain-milvus,
LlamaIndex's Qdrant and Milvus stores) call a dense and a sparse embedding function for the same
texts, in either order, in batches of any size -- langchain-milvus embeds all 5,000 texts of an
``add_texts`` densely before it asks for any sparse vector. BGE-M3 computes both in one pass, so
the first call encodes both and this cache keeps the half that was not asked for until it is:

- *pending*: per text, the output not yet handed out (only that half: after the dense vector was
  taken, only the sparse weights stay), bounded by ``max_pending_bytes`` (oldest dropped first;
  a dropped text is simply encoded again when asked);
- *recent*: a small LRU of complete encodings, for texts asked for again (repeated queries).

Keys are ``(kind, max_length, text)``, kind ``"query"`` or ``"document"``. The cache is shared by
every adapter of one :class:`~m3_rag.M3Embedder` (:func:`cache_for`) and is thread-safe.

>>> from m3_rag import M3Embedder
>>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
>>> cache = EncodingCache()
>>> dense = cache.encode(m3, ["a text", "another"], kind="document", want="dense")
>>> sparse = cache.encode(m3, ["another", "a text"], kind="document", want="sparse")
>>> cache.stats()["texts_encoded"], sparse[1].sparse == m3.encode_documents(["a text"]).sparse[0]
(2, True)
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import numpy as np

from .records import check_texts
from .sparse import SparseVector

if TYPE_CHECKING:
    from .encoder import M3Embedder

__all__ = ["CachedEncoding", "EncodingCache", "Kind", "PerModel", "Want", "cache_for"]

Kind = Literal["query", "document"]
Want = Literal["dense", "sparse", "both"]
#: Default bound of the outputs kept for the other half of a request.
PENDING_BYTES = 512 << 20
#: Default number of complete encodings kept for repeated texts.
RECENT = 2048


@dataclass(frozen=True)
class CachedEncoding:
    """The dense vector (float32, (d,)) and sparse weights of one text (either may be None when the
    cache only kept the other half)."""

    dense: np.ndarray | None
    sparse: SparseVector | None

    def nbytes(self) -> int:
        return (0 if self.dense is None else self.dense.nbytes) + (0 if self.sparse is None else 12 * len(self.sparse))


class EncodingCache:
    """See the module docs. ``max_pending_bytes=0`` and ``recent=0`` turn caching off."""

    def __init__(self, *, max_pending_bytes: int = PENDING_BYTES, recent: int = RECENT) -> None:
        for name, value in (("max_pending_bytes", max_pending_bytes), ("recent", recent)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (0 turns that part off), got {value!r}")
        self.max_pending_bytes = max_pending_bytes
        self.recent = recent
        self._pending: OrderedDict[Hashable, CachedEncoding] = OrderedDict()
        self._pending_bytes = 0
        self._recent: OrderedDict[Hashable, CachedEncoding] = OrderedDict()
        self._lock = threading.Lock()
        self._texts_encoded = 0
        self._hits = 0

    def __len__(self) -> int:
        return len(self._pending) + len(self._recent)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._recent.clear()
            self._pending_bytes = 0

    def stats(self) -> dict[str, int]:
        """``texts_encoded`` (model passes over texts), ``hits``, ``pending`` and ``pending_bytes``."""
        with self._lock:
            return {
                "texts_encoded": self._texts_encoded,
                "hits": self._hits,
                "pending": len(self._pending),
                "pending_bytes": self._pending_bytes,
                "recent": len(self._recent),
            }

    def encode(
        self,
        embedder: M3Embedder,
        texts: Sequence[str],
        *,
        kind: Kind,
        want: Want = "both",
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> list[CachedEncoding]:
        """The ``want`` half (or both) of each text's encoding; texts not cached are encoded once, together."""
        if isinstance(texts, str):
            raise TypeError(f"texts must be a list of str, got a str: {texts!r:.80}; wrap it in a list")
        items = check_texts(texts)
        if max_length is None:
            max_length = embedder.query_max_length if kind == "query" else embedder.passage_max_length
        keys = [(kind, max_length, text) for text in items]
        with self._lock:
            found = [self._take(key, want) for key in keys]
        missing = list(dict.fromkeys(text for text, entry in zip(items, found) if entry is None))
        fresh: dict[str, CachedEncoding] = {}
        if missing:
            encode = embedder.encode_queries if kind == "query" else embedder.encode_documents
            out = encode(missing, dense=True, sparse=True, colbert=False, max_length=max_length, batch_size=batch_size)
            assert out.dense is not None and out.sparse is not None
            fresh = {t: CachedEncoding(out.dense[i].copy(), out.sparse[i]) for i, t in enumerate(missing)}
            with self._lock:
                self._texts_encoded += len(missing)
                for text, entry in fresh.items():
                    self._keep((kind, max_length, text), entry, taken=want)
        return [entry if entry is not None else fresh[text] for text, entry in zip(items, found)]

    def _take(self, key: Hashable, want: Want) -> CachedEncoding | None:
        """A cached encoding with the wanted half (lock held). A pending half is handed out once and
        forgotten; complete encodings stay in the LRU."""
        entry = self._pending.get(key)
        if (
            entry is not None
            and (want != "dense" or entry.dense is not None)
            and (want != "sparse" or entry.sparse is not None)
            and want != "both"
        ):
            del self._pending[key]
            self._pending_bytes -= entry.nbytes()
            self._hits += 1
            return entry
        entry = self._recent.get(key)
        if entry is not None:
            self._recent.move_to_end(key)
            self._hits += 1
        return entry

    def _keep(self, key: Hashable, entry: CachedEncoding, *, taken: Want) -> None:
        """Keep the half of a new encoding that was not handed out, and the whole in the LRU (lock held)."""
        if self.recent:
            self._recent[key] = entry
            self._recent.move_to_end(key)
            while len(self._recent) > self.recent:
                self._recent.popitem(last=False)
        if taken == "both" or not self.max_pending_bytes:
            return
        rest = CachedEncoding(entry.dense, None) if taken == "sparse" else CachedEncoding(None, entry.sparse)
        old = self._pending.pop(key, None)
        if old is not None:
            self._pending_bytes -= old.nbytes()
        self._pending[key] = rest
        self._pending_bytes += rest.nbytes()
        while self._pending_bytes > self.max_pending_bytes and self._pending:
            _, dropped = self._pending.popitem(last=False)
            self._pending_bytes -= dropped.nbytes()


T = TypeVar("T")


class PerModel(Generic[T]):
    """One ``T`` per loaded model, made on first use and dropped with the model (thread-safe).

    >>> from m3_rag import M3Embedder
    >>> m3, caches = M3Embedder.shared("tests/data/tiny-m3"), PerModel(list)
    >>> caches.get(m3) is caches.get(m3)
    True
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._items: weakref.WeakKeyDictionary[M3Embedder, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, embedder: M3Embedder) -> T:
        with self._lock:
            item = self._items.get(embedder)
            if item is None:
                item = self._items[embedder] = self._make()
            return item


_CACHES: PerModel[EncodingCache] = PerModel(EncodingCache)


def cache_for(embedder: M3Embedder) -> EncodingCache:
    """The one cache of this model: every adapter (LangChain or LlamaIndex) on the same embedder shares it."""
    return _CACHES.get(embedder)
