"""BGE-M3 sparse weights for LlamaIndex's own Milvus store (``llama-index-vector-stores-milvus``).

Needs ``pip install "m3-rag[llama-index,milvus]" llama-index-vector-stores-milvus`` (1.x wants
``pymilvus[milvus-lite]>=2.6.7,<3``; m3-rag's Milvus extra accepts pymilvus 2.6 and 3, tested on both).

- :class:`M3MilvusSparseFunction`, the ``BaseSparseEmbeddingFunction`` that
  ``MilvusVectorStore(enable_sparse=True, sparse_embedding_function=...)`` wants: BGE-M3's lexical
  weights as ``{token_id: weight}``, through the encode cache shared with :class:`M3Embedding`, so
  a text the dense pass already saw costs no second pass.
- :class:`M3MilvusVectorStore`, ``MilvusVectorStore`` with one change: its sparse field holds the
  weights of the text its dense vector is of.

Why the second: LlamaIndex computes the dense vector of ``node.get_content(MetadataMode.EMBED)``
(the text with the metadata the embedding model sees), but ``MilvusVectorStore.add`` asks the sparse
function for ``node.text``, one node at a time. For nodes whose embedding model sees no metadata
the two are the same text and the dense pass's sparse half answers every call: one pass per node
with either class. Otherwise ``MilvusVectorStore`` runs the model a second time per node, one node
per call (two texts per node, 1 + nodes encode calls). ``M3MilvusVectorStore.add`` tells the
function, before the loop, which text each call stands for, so the sparse weights come from the
same pass as the dense vector -- one pass per node, and dense and sparse describe the same text,
as in LlamaIndex's Qdrant store. Milvus refuses empty sparse rows: a text without weights gets
one on a token id no query has (``vocab_size``).

Example (``MilvusVectorStore`` keeps its arguments)::

    embed = M3Embedding("BAAI/bge-m3")
    store = M3MilvusVectorStore(uri="./milvus.db", dim=embed.embedder.dim, enable_sparse=True,
                                sparse_embedding_function=M3MilvusSparseFunction(embed))
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                            embed_model=embed)
    index.as_retriever(vector_store_query_mode="hybrid").retrieve("query")
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

try:
    import llama_index.core  # noqa: F401
    from llama_index.vector_stores.milvus import MilvusVectorStore
    from llama_index.vector_stores.milvus.utils import BaseSparseEmbeddingFunction
except ImportError as exc:
    raise ImportError(
        f"m3_rag.integrations.llama_index.milvus needs llama-index-vector-stores-milvus ({exc}); install it with: "
        'pip install "m3-rag[llama-index,milvus]" llama-index-vector-stores-milvus'
    ) from exc

from llama_index.core.schema import BaseNode, MetadataMode

from .embeddings import M3Embedding, M3SparseEmbedding, sparse_weights

__all__ = ["M3MilvusSparseFunction", "M3MilvusVectorStore"]

_EXPECTED = 1 << 16  # texts kept for the calls announced by expect_documents, at most


class M3MilvusSparseFunction(BaseSparseEmbeddingFunction):
    """BGE-M3 lexical weights for ``MilvusVectorStore`` (int token ids, float weights).

    Build it from the :class:`M3Embedding` that LlamaIndex uses (shares its model and token limits,
    so its passes answer this function) or from :class:`M3SparseEmbedding`'s arguments.
    """

    def __init__(self, embedding: M3Embedding | M3SparseEmbedding | None = None, **kwargs: Any) -> None:
        if embedding is not None and kwargs:
            raise TypeError(f"pass an M3Embedding or M3SparseEmbedding's arguments, not both (got {sorted(kwargs)})")
        if embedding is None:
            embedding = M3SparseEmbedding(**kwargs)
        if not isinstance(embedding, (M3Embedding, M3SparseEmbedding)):
            raise TypeError(f"embedding must be an M3Embedding or an M3SparseEmbedding, got {type(embedding).__name__}")
        self.embedder = embedding.embedder
        self.query_max_length = embedding.query_max_length
        self.passage_max_length = embedding.passage_max_length
        self._placeholder = {int(self.embedder.vocab_size): 1.0}
        self._expected: OrderedDict[str, deque[dict[int, float]]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"M3MilvusSparseFunction(model={self.embedder.name!r})"

    def encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        """Sparse weights of queries (the sparse half of the dense query pass when there was one)."""
        return sparse_weights(self.embedder, list(queries), query=True, max_length=self.query_max_length)

    def encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        """Sparse weights of documents: announced ones first (see :meth:`expect_documents`), then the shared
        cache (the sparse half of the dense pass), then one pass for the rest, together."""
        items = list(documents)
        with self._lock:
            found = [self._pop(text) for text in items]
        missing = [t for t, w in zip(items, found) if w is None]
        fresh = iter(sparse_weights(self.embedder, missing, query=False, max_length=self.passage_max_length))
        return [(w if w is not None else next(fresh)) or dict(self._placeholder) for w in found]

    def _pop(self, text: str) -> dict[int, float] | None:
        queue = self._expected.get(text)
        if not queue:
            return None
        weights = queue.popleft()
        if not queue:
            del self._expected[text]
        return weights

    def expect_documents(self, asked: Sequence[str], encoded: Sequence[str] | None = None) -> None:
        """Announce ``encode_documents`` calls: the ``i``-th call for ``asked[i]`` gets the weights of
        ``encoded[i]`` (default: ``asked[i]`` itself), all computed now in one batch."""
        wanted = list(asked)
        texts = wanted if encoded is None else list(encoded)
        if len(texts) != len(wanted):
            raise ValueError(f"asked and encoded must have the same length, got {len(wanted)} and {len(texts)}")
        if not texts:
            return
        weights = sparse_weights(self.embedder, texts, query=False, max_length=self.passage_max_length)
        with self._lock:
            for text, w in zip(wanted, weights):
                self._expected.setdefault(text, deque()).append(w)
                self._expected.move_to_end(text)
            while len(self._expected) > _EXPECTED:
                self._expected.popitem(last=False)

    async def async_encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self.encode_queries, queries)

    async def async_encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self.encode_documents, documents)


class M3MilvusVectorStore(MilvusVectorStore):
    """``MilvusVectorStore`` whose sparse field holds the weights of the text the dense vector is of
    (``node.get_content(MetadataMode.EMBED)``), from the same pass (see the module docs)."""

    @classmethod
    def class_name(cls) -> str:
        return "M3MilvusVectorStore"

    def _announce(self, nodes: Sequence[BaseNode]) -> None:
        function = self.sparse_embedding_function
        if self.enable_sparse and isinstance(function, M3MilvusSparseFunction):  # add's loop asks for node.text
            texts = [node for node in nodes if hasattr(node, "text")]
            function.expect_documents([n.text for n in texts], [n.get_content(MetadataMode.EMBED) for n in texts])

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        self._announce(nodes)
        ids: list[str] = super().add(list(nodes), **add_kwargs)
        return ids

    async def async_add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        await asyncio.to_thread(self._announce, nodes)
        ids: list[str] = await super().async_add(list(nodes), **add_kwargs)
        return ids
