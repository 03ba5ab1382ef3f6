"""BGE-M3 sparse weights for LlamaIndex's own Milvus store (``llama-index-vector-stores-milvus``).

Needs ``pip install "m3-rag[llama-index,milvus]" llama-index-vector-stores-milvus`` (1.x wants
``pymilvus[milvus-lite]>=2.6.7,<3``; m3-rag's Milvus extra accepts pymilvus 2.6 and 3, tested on both).

- :class:`M3MilvusSparseFunction`, the ``BaseSparseEmbeddingFunction`` that
  ``MilvusVectorStore(enable_sparse=True, sparse_embedding_function=...)`` wants: BGE-M3's lexical
  weights as ``{token_id: weight}``, through the encode cache shared with :class:`M3Embedding`, so
  a text the dense pass already saw costs no second pass.
- :class:`M3MilvusVectorStore`, ``MilvusVectorStore`` with one change: ``add`` first encodes, in
  one batch, the texts its loop will then ask the sparse function for one node at a time.

Why the second: Milvus's store asks for the sparse weights of ``node.text`` one node at a time,
while the dense vector LlamaIndex computed is of ``node.get_content(MetadataMode.EMBED)``. For nodes
whose embedding model sees no metadata the two texts are the same and the dense pass's sparse half
answers every call (1 pass per node, with either class); otherwise they are two texts, and
``MilvusVectorStore`` runs the model once per node, unbatched -- ``M3MilvusVectorStore`` batches
them (each of the two texts once). Milvus refuses empty sparse rows: a text without weights gets
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
from collections import OrderedDict
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

from llama_index.core.schema import BaseNode

from .embeddings import M3Embedding, M3SparseEmbedding, sparse_weights

__all__ = ["M3MilvusSparseFunction", "M3MilvusVectorStore"]

_PREFETCH = 1 << 16  # texts kept for the calls that follow a prefetch, at most


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
        self._prefetched: OrderedDict[str, dict[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"M3MilvusSparseFunction(model={self.embedder.name!r})"

    def encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        """Sparse weights of queries (the sparse half of the dense query pass when there was one)."""
        return sparse_weights(self.embedder, list(queries), query=True, max_length=self.query_max_length)

    def encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        """Sparse weights of documents: prefetched ones first, then the shared cache, then one pass for the rest."""
        items = list(documents)
        with self._lock:
            found = [self._prefetched.pop(text, None) for text in items]
        missing = [t for t, w in zip(items, found) if w is None]
        fresh = iter(sparse_weights(self.embedder, missing, query=False, max_length=self.passage_max_length))
        return [(w if w is not None else next(fresh)) or dict(self._placeholder) for w in found]

    def prefetch_documents(self, documents: Sequence[str]) -> None:
        """Encode documents now, in one batch, for the ``encode_documents`` calls that will ask for them."""
        items = list(dict.fromkeys(documents))
        if not items:
            return
        weights = sparse_weights(self.embedder, items, query=False, max_length=self.passage_max_length)
        with self._lock:
            for text, w in zip(items, weights):
                self._prefetched[text] = w
                self._prefetched.move_to_end(text)
            while len(self._prefetched) > _PREFETCH:
                self._prefetched.popitem(last=False)

    async def async_encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self.encode_queries, queries)

    async def async_encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self.encode_documents, documents)


class M3MilvusVectorStore(MilvusVectorStore):
    """``MilvusVectorStore`` whose ``add`` encodes the sparse field's texts in one batch (see the module docs)."""

    @classmethod
    def class_name(cls) -> str:
        return "M3MilvusVectorStore"

    def _prefetch(self, nodes: Sequence[BaseNode]) -> None:
        function = self.sparse_embedding_function
        if self.enable_sparse and isinstance(function, M3MilvusSparseFunction):
            function.prefetch_documents([node.text for node in nodes if hasattr(node, "text")])

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        self._prefetch(nodes)
        ids: list[str] = super().add(list(nodes), **add_kwargs)
        return ids

    async def async_add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        await asyncio.to_thread(self._prefetch, nodes)
        ids: list[str] = await super().async_add(list(nodes), **add_kwargs)
        return ids
