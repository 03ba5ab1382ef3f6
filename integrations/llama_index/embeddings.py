"""``M3Embedding`` (dense) and ``M3SparseEmbedding`` (lexical weights) for LlamaIndex."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import torch
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from m3_rag import DEFAULT_MODEL, EncodingStore, M3Embedder
from m3_rag.encode_cache import Kind, cache_for
from m3_rag.store_encode import encode_with_store, open_encoding_store

from ._common import resolve_embedder
from .handoff import handoff_for

__all__ = ["M3Embedding", "M3SparseEmbedding", "sparse_weights", "to_indices_values"]

_QUERY_MAX = "Tokens per query (<s> and </s> included); None: the embedder's query_max_length (512)."
_PASSAGE_MAX = "Tokens per text (<s> and </s> included); None: the embedder's passage_max_length (8192 for BGE-M3)."


def to_indices_values(weights: Sequence[dict[int, float]]) -> tuple[list[list[int]], list[list[float]]]:
    """Sparse dicts -> the ``(indices, values)`` lists that Qdrant's sparse functions return.

    >>> to_indices_values([{5: 0.5, 9: 0.25}, {}])
    ([[5, 9], []], [[0.5, 0.25], []])
    """
    indices = [[int(i) for i in w] for w in weights]
    values = [[float(v) for v in w.values()] for w in weights]
    return indices, values


class M3Embedding(BaseEmbedding):
    """BGE-M3's dense vectors as a LlamaIndex embedding model.

    Queries are encoded with :meth:`M3Embedder.encode_queries`, texts (nodes) with
    :meth:`M3Embedder.encode_documents`; each batch of ``embed_batch_size`` texts is one call
    (the model sorts it by length and runs it in token-budget batches). Vectors are
    L2-normalised lists of Python floats. The async methods run the model in a worker thread,
    so they do not block the event loop. One pass per text: the sparse half of each pass waits in
    the shared encode cache for :class:`M3SparseEmbedding` (Qdrant's and Milvus's hybrid modes), and
    while an :class:`M3VectorStore` on the same model is alive, document passes also make the
    sparse and ColBERT outputs that store takes in ``add`` (:mod:`~.handoff`).

    Args:
        model_name: hub id or local folder (default ``"BAAI/bge-m3"``); loaded once per process
            through :meth:`M3Embedder.shared`.
        embedder: an already loaded :class:`~m3_rag.M3Embedder` (instead of ``model_name``).
        device, dtype: where and how to load ``model_name`` (default: cuda/mps/cpu, fp16 on CUDA).
        embed_batch_size: texts per call of the model (default 32).
        query_max_length, passage_max_length: token limits; None uses the embedder's.
        encoding_store: an :class:`~m3_rag.EncodingStore` (or its file path): the pass that
            makes a node's dense vector also stores its sparse weights and ColBERT vectors, keyed
            by the text embedded (``node.get_content(metadata_mode=MetadataMode.EMBED)``), so
            that an :class:`M3Reranker` with the same store encodes only the query; texts
            already stored are read, not encoded.

    Example:
        >>> from m3_rag.integrations.llama_index import M3Embedding
        >>> embed = M3Embedding("tests/data/tiny-m3", device="cpu")
        >>> vectors = embed.get_text_embedding_batch(["Berlin is in Germany.", "Paris is in France."])
        >>> len(vectors), len(vectors[0]), type(vectors[0][0]).__name__
        (2, 32, 'float')
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = Field(default=DEFAULT_MODEL, description="Hub id or folder of the BGE-M3 checkpoint.")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="Texts per call of the model.")
    query_max_length: int | None = Field(default=None, ge=2, description=_QUERY_MAX)
    passage_max_length: int | None = Field(default=None, ge=2, description=_PASSAGE_MAX)

    _embedder: M3Embedder = PrivateAttr()
    _store: EncodingStore | None = PrivateAttr(default=None)

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        *,
        embedder: M3Embedder | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        encoding_store: EncodingStore | str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        m3 = resolve_embedder(model_name, embedder, device=device, dtype=dtype)
        super().__init__(model_name=m3.name, **kwargs)
        self._embedder = m3
        self._store = open_encoding_store(encoding_store, m3)

    @classmethod
    def class_name(cls) -> str:
        return "M3Embedding"

    @property
    def embedder(self) -> M3Embedder:
        """The loaded model (share it with the other adapters: ``embedder=embed.embedder``)."""
        return self._embedder

    @property
    def encoding_store(self) -> EncodingStore | None:
        """The store that keeps the texts' three encodings (or None)."""
        return self._store

    def _dense(self, texts: list[str], *, query: bool) -> list[list[float]]:
        if not query and self._store is not None:  # the pass that makes the dense vector stores all three
            stored = encode_with_store(self._embedder, texts, self._store, max_length=self.passage_max_length,
                                       sparse=False, colbert=False)  # fmt: skip
            assert stored.dense is not None
            from_store: list[list[float]] = stored.dense.tolist()
            return from_store
        # One pass per text: a live M3VectorStore takes this pass's sparse and ColBERT outputs (handoff);
        # otherwise the shared encode cache keeps the sparse half for M3SparseEmbedding / Qdrant / Milvus.
        handoff = handoff_for(self._embedder)
        if not query and handoff.active:
            dense = handoff.encode(self._embedder, texts, max_length=self.passage_max_length)
            vectors: list[list[float]] = dense.tolist()
            return vectors
        kind: Kind = "query" if query else "document"
        length = self.query_max_length if query else self.passage_max_length
        found = cache_for(self._embedder).encode(self._embedder, texts, kind=kind, want="dense", max_length=length)
        return [e.dense.tolist() for e in found if e.dense is not None]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._dense([query], query=True)[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._dense([text], query=False)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._dense(list(texts), query=False)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class M3SparseEmbedding(BaseSparseEmbedding):
    """BGE-M3's lexical weights as a LlamaIndex sparse embedding: ``{token_id: weight}``.

    The inner product of two of these is BGE-M3's sparse score. Texts that :class:`M3Embedding` on
    the same model already encoded cost no second pass (the shared encode cache). For Qdrant's hybrid mode pass
    the bound methods :meth:`sparse_doc_fn` and :meth:`sparse_query_fn`, which return the
    batched ``(indices, values)`` form that ``QdrantVectorStore`` expects::

        sparse = M3SparseEmbedding(embedder=embed.embedder)
        store = QdrantVectorStore(client=client, collection_name="docs", enable_hybrid=True,
                                  sparse_doc_fn=sparse.sparse_doc_fn, sparse_query_fn=sparse.sparse_query_fn)

    Arguments as :class:`M3Embedding`.

    Example:
        >>> from m3_rag.integrations.llama_index import M3SparseEmbedding
        >>> sparse = M3SparseEmbedding("tests/data/tiny-m3", device="cpu")
        >>> weights = sparse.get_query_embedding("capital of Germany")
        >>> all(isinstance(k, int) and v > 0 for k, v in weights.items())
        True
        >>> indices, values = sparse.sparse_doc_fn(["Berlin is in Germany.", "Paris is in France."])
        >>> len(indices), len(values), len(indices[0]) == len(values[0])
        (2, 2, True)
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = Field(default=DEFAULT_MODEL, description="Hub id or folder of the BGE-M3 checkpoint.")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="Texts per call of the model.")
    query_max_length: int | None = Field(default=None, ge=2, description=_QUERY_MAX)
    passage_max_length: int | None = Field(default=None, ge=2, description=_PASSAGE_MAX)

    _embedder: M3Embedder = PrivateAttr()

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        *,
        embedder: M3Embedder | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        m3 = resolve_embedder(model_name, embedder, device=device, dtype=dtype)
        super().__init__(model_name=m3.name, **kwargs)
        self._embedder = m3

    @classmethod
    def class_name(cls) -> str:
        return "M3SparseEmbedding"

    @property
    def embedder(self) -> M3Embedder:
        """The loaded model."""
        return self._embedder

    def _sparse(self, texts: list[str], *, query: bool) -> list[dict[int, float]]:
        length = self.query_max_length if query else self.passage_max_length
        return sparse_weights(self._embedder, texts, query=query, max_length=length)

    def _get_query_embedding(self, query: str) -> dict[int, float]:
        return self._sparse([query], query=True)[0]

    def _get_text_embedding(self, text: str) -> dict[int, float]:
        return self._sparse([text], query=False)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[dict[int, float]]:
        return self._sparse(list(texts), query=False)

    async def _aget_query_embedding(self, query: str) -> dict[int, float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> dict[int, float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[dict[int, float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def sparse_doc_fn(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        """Documents -> ``(indices, values)``: pass as ``QdrantVectorStore(sparse_doc_fn=...)``."""
        return to_indices_values(self._sparse(list(texts), query=False))

    def sparse_query_fn(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        """Queries -> ``(indices, values)``: pass as ``QdrantVectorStore(sparse_query_fn=...)``."""
        return to_indices_values(self._sparse(list(texts), query=True))


def sparse_weights(
    embedder: M3Embedder, texts: list[str], *, query: bool, max_length: int | None = None
) -> list[dict[int, float]]:
    """Sparse weights of texts without a second pass over texts the dense adapter already encoded.

    Looks in the pass M3Embedding handed to a live M3VectorStore (documents), then in the shared encode
    cache (the sparse half of M3Embedding's pass for the same texts); the rest is encoded once, together
    (dense and sparse, the dense half kept for a dense adapter asking next).

    >>> from m3_rag import M3Embedder
    >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
    >>> sparse_weights(m3, ["Berlin."], query=False) == [m3.encode_documents(["Berlin."]).sparse[0].to_dict()]
    True
    """
    found: list[dict[int, float] | None] = [None] * len(texts)
    handoff = handoff_for(embedder)
    if not query and handoff.active:
        length = max_length or embedder.passage_max_length
        found = [None if w is None else w.to_dict() for w in handoff.peek_sparse(texts, max_length=length)]
    missing = [t for t, w in zip(texts, found) if w is None]
    if missing:
        kind: Kind = "query" if query else "document"
        cached = cache_for(embedder).encode(embedder, missing, kind=kind, want="sparse", max_length=max_length)
        fresh = iter(e.sparse.to_dict() if e.sparse is not None else {} for e in cached)
        found = [w if w is not None else next(fresh) for w in found]
    return [w if w is not None else {} for w in found]
