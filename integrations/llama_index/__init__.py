"""LlamaIndex adapters for BGE-M3: embeddings, sparse embeddings, a hybrid reranker and a retriever.

Install with ``pip install "m3-rag[llama-index]"``. Every class takes either ``model_name`` (a
hub id such as ``"BAAI/bge-m3"`` or a local folder) or ``embedder`` (an already loaded
:class:`~m3_rag.M3Embedder`); adapters built from the same model name share one loaded model
through :meth:`M3Embedder.shared <m3_rag.M3Embedder.shared>`.

- :class:`M3Embedding` — dense ``BaseEmbedding`` (queries with ``encode_queries``, texts with
  ``encode_documents``), batched, with async methods that run off the event loop.
- :class:`M3SparseEmbedding` — ``BaseSparseEmbedding`` (``{token_id: weight}``), plus
  its ``sparse_doc_fn`` / ``sparse_query_fn`` methods for ``QdrantVectorStore(enable_hybrid=True)``.
- :class:`M3Reranker` — ``BaseNodePostprocessor`` that reranks retrieved nodes with the exact
  hybrid score (:func:`m3_rag.rerank_texts`).
- :class:`M3Retriever` — ``BaseRetriever`` over an :class:`~m3_rag.M3Index` (or any
  :class:`~m3_rag.retrieval.HybridStore`), with LlamaIndex ``MetadataFilters``.
- :class:`M3VectorStore` — ``BasePydanticVectorStore`` over any hybrid store, for
  ``VectorStoreIndex`` / ``IngestionPipeline``: nodes round-trip whole, one model pass per node
  and per query (the embedding model's pass feeds the store).
- :class:`M3NodeWithScore` — what the retriever and the reranker return: the stored node,
  unchanged (its ``hash`` too), with the per-mode scores next to it in ``scores``.

The sparse adapter and the dense one share one pass per text (:mod:`m3_rag.encode_cache`), so
LlamaIndex's Qdrant and Milvus stores in hybrid mode run the model once per text and per query;
``m3_rag.integrations.llama_index.milvus`` has the sparse function Milvus's store wants.

Example:
    >>> from m3_rag.integrations.llama_index import M3Embedding, M3Reranker
    >>> embed = M3Embedding("tests/data/tiny-m3", device="cpu")
    >>> reranker = M3Reranker(embedder=embed.embedder, top_n=3)
    >>> reranker.embedder is embed.embedder
    True
"""

from __future__ import annotations

try:  # the package itself first: a stub in sys.modules must not hide a missing framework
    import llama_index.core  # noqa: F401
    from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: F401
    from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "m3_rag.integrations.llama_index needs llama-index-core, which is not installed "
        f'({exc}); install it with: pip install "m3-rag[llama-index]"'
    ) from exc

from .embeddings import M3Embedding, M3SparseEmbedding, to_indices_values
from .filters import to_core_filter
from .nodes import M3NodeWithScore, scores_of
from .postprocessor import M3Reranker
from .retriever import M3Retriever
from .vectorstore import M3VectorStore, M3VectorStoreQueryResult

__all__ = [
    "M3Embedding",
    "M3NodeWithScore",
    "M3Reranker",
    "M3Retriever",
    "M3SparseEmbedding",
    "M3VectorStore",
    "M3VectorStoreQueryResult",
    "scores_of",
    "to_core_filter",
    "to_indices_values",
]
