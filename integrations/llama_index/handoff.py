"""One model pass per node in ``VectorStoreIndex``: the embedding model hands its pass to the store.

LlamaIndex calls the embedding model on every node (``node.get_content(MetadataMode.EMBED)``)
*before* it calls ``vector_store.add``, and hands the store only the dense vector. BGE-M3's pass
also yields the sparse weights and ColBERT vectors the hybrid store needs, so while an
:class:`~m3_rag.integrations.llama_index.M3VectorStore` is alive for a model,
:class:`~m3_rag.integrations.llama_index.M3Embedding` encodes document texts with all the outputs
that store keeps and leaves them here, per text; ``M3VectorStore.add`` takes them (checking that
the dense vector is the one on the node) and encodes only what is missing.

Entries are handed out once and bounded by ``max_bytes`` (oldest dropped first: a dropped text is
simply encoded again by the store). ColBERT vectors take ``4 * dim`` bytes per token (4 KiB for
BGE-M3): the default 1 GiB holds ~1,300 passages of 200 tokens, so with long passages give
``VectorStoreIndex(insert_batch_size=...)`` fewer nodes per batch than that.

>>> from m3_rag import M3Embedder
>>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
>>> handoff = EncodingHandoff()
>>> token = handoff.attach(colbert=True)
>>> dense = handoff.encode(m3, ["Berlin.", "Paris."])
>>> got = handoff.take(["Paris."], [dense[1].tolist()], max_length=m3.passage_max_length, colbert=True)
>>> got[0].colbert.shape[1] == m3.colbert_dim, handoff.stats()["kept"]
(True, 1)
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m3_rag import M3Embedder
from m3_rag.encode_cache import PerModel
from m3_rag.records import check_texts
from m3_rag.sparse import SparseVector

__all__ = ["HANDOFF_BYTES", "EncodingHandoff", "FullEncoding", "handoff_for"]

#: Default bound of the encodings kept for a store (bytes).
HANDOFF_BYTES = 1 << 30


@dataclass(frozen=True)
class FullEncoding:
    """One text's outputs: dense (d,) float32, sparse weights, ColBERT (tokens, d) float32 or None."""

    dense: np.ndarray
    sparse: SparseVector
    colbert: np.ndarray | None
    max_length: int

    def nbytes(self) -> int:
        return self.dense.nbytes + 12 * len(self.sparse) + (0 if self.colbert is None else self.colbert.nbytes)


class _Token:
    """What a store holds to keep the handoff on (weakly referenced)."""


class EncodingHandoff:
    """See the module docs. Thread-safe."""

    def __init__(self, *, max_bytes: int = HANDOFF_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0 (0 keeps nothing), got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, FullEncoding] = OrderedDict()
        self._bytes = 0
        self._owners: weakref.WeakKeyDictionary[_Token, bool] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._handed = 0
        self._missed = 0

    def attach(self, *, colbert: bool) -> object:
        """Keep encodings while the returned token is alive (a store holds it); ``colbert``: keep ColBERT too."""
        token = _Token()
        with self._lock:
            self._owners[token] = bool(colbert)
        return token

    @property
    def active(self) -> bool:
        """Whether any store wants the embedding model's passes."""
        return len(self._owners) > 0

    @property
    def wants_colbert(self) -> bool:
        return any(self._owners.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        """``kept`` texts, ``bytes``, ``handed`` (taken by a store) and ``missed`` (the store encoded them)."""
        with self._lock:
            return {"kept": len(self._entries), "bytes": self._bytes, "handed": self._handed, "missed": self._missed}

    def encode(
        self,
        embedder: M3Embedder,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Encode document texts once (dense, sparse and, when wanted, ColBERT), keep the outputs; (n, d) dense."""
        if isinstance(texts, str):
            raise TypeError(f"texts must be a list of str, got a str: {texts!r:.80}; wrap it in a list")
        items = check_texts(texts)
        length = max_length or embedder.passage_max_length
        unique = list(dict.fromkeys(items))
        colbert = self.wants_colbert
        out = embedder.encode_documents(
            unique, max_length=length, dense=True, sparse=True, colbert=colbert, batch_size=batch_size
        )
        assert out.dense is not None and out.sparse is not None
        if unique and self.max_bytes:
            with self._lock:
                for i, text in enumerate(unique):
                    matrix = out.colbert[i] if out.colbert is not None else None
                    self._keep(text, FullEncoding(out.dense[i].copy(), out.sparse[i], matrix, length))
        where = {t: i for i, t in enumerate(unique)}
        return out.dense[[where[t] for t in items]] if unique else out.dense

    def _keep(self, text: str, entry: FullEncoding) -> None:
        old = self._entries.pop(text, None)
        if old is not None:
            self._bytes -= old.nbytes()
        self._entries[text] = entry
        self._bytes += entry.nbytes()
        while self._bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.nbytes()

    def peek_sparse(self, texts: Sequence[str], *, max_length: int) -> list[SparseVector | None]:
        """The sparse weights kept for each text (encoded at ``max_length``), or None; nothing is handed out."""
        with self._lock:
            found = [self._entries.get(text) for text in texts]
        return [e.sparse if e is not None and e.max_length == max_length else None for e in found]

    def take(
        self,
        texts: Sequence[str],
        embeddings: Sequence[Sequence[float] | None],
        *,
        max_length: int,
        colbert: bool,
    ) -> list[FullEncoding | None]:
        """The kept encoding of each text, or None. An entry counts only when it is the pass that made the
        node's ``embedding`` (equal dense vector) -- or, for a node without one, a pass at ``max_length`` --
        and has ColBERT vectors when ``colbert``. Entries handed out are forgotten."""
        found: list[FullEncoding | None] = []
        with self._lock:
            for text, embedding in zip(texts, embeddings):
                entry = self._entries.get(text)
                if entry is not None and not _same_pass(entry, embedding, max_length, colbert):
                    entry = None
                found.append(entry)
            for text, entry in zip(texts, found):
                if entry is not None and self._entries.get(text) is entry:
                    del self._entries[text]
                    self._bytes -= entry.nbytes()
            hits = sum(e is not None for e in found)
            self._handed += hits
            self._missed += len(found) - hits
        return found


def _same_pass(entry: FullEncoding, embedding: Sequence[float] | None, max_length: int, colbert: bool) -> bool:
    if colbert and entry.colbert is None:
        return False
    if embedding is None:
        return entry.max_length == max_length
    vector = np.asarray(embedding, dtype=np.float32)
    return vector.shape == entry.dense.shape and bool(np.array_equal(vector, entry.dense))


_HANDOFFS: PerModel[EncodingHandoff] = PerModel(EncodingHandoff)


def handoff_for(embedder: M3Embedder) -> EncodingHandoff:
    """The one handoff of this model, shared by every ``M3Embedding`` and ``M3VectorStore`` on it."""
    return _HANDOFFS.get(embedder)
