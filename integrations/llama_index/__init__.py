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

from ._common import SCORE_KEYS
from .embeddings import M3Embedding, M3SparseEmbedding, to_indices_values
from .filters import to_core_filter
from .postprocessor import M3Reranker
from .retriever import M3Retriever

__all__ = [
    "SCORE_KEYS",
    "M3Embedding",
    "M3Reranker",
    "M3Retriever",
    "M3SparseEmbedding",
    "to_core_filter",
    "to_indices_values",
]
