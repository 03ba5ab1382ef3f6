"""BGE-M3 sparse weights for ``langchain_milvus`` (``Milvus`` with a sparse vector field).

Needs ``langchain-milvus`` (``pip install "m3-rag[langchain]" langchain-milvus``; it wants
pymilvus>=3). Pass it next to the dense embeddings; checked with langchain-milvus 0.4.0 and
milvus-lite 3.2.2 (the model ran once per text for both fields)::

    dense = M3Embeddings(model_name="BAAI/bge-m3")
    store = Milvus.from_texts(
        texts, embedding=[dense, M3MilvusSparseEmbedding(dense)], vector_field=["dense", "sparse"],
        connection_args={"uri": "./milvus.db"},
        index_params=[{"metric_type": "IP", "index_type": "FLAT"},
                      {"metric_type": "IP", "index_type": "SPARSE_INVERTED_INDEX"}])
    store.similarity_search("query", k=2, ranker_type="weighted", ranker_params={"weights": [0.5, 0.5]},
                            param=[{"metric_type": "IP", "params": {}},
                                   {"metric_type": "IP", "params": {"drop_ratio_search": 0.0}}])

(milvus-lite refuses langchain-milvus' default sparse search parameters, hence ``param``.)
"""

from __future__ import annotations

from typing import Any

try:
    import langchain_core  # noqa: F401
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
except ImportError as exc:
    raise ImportError(
        f"m3_rag.integrations.langchain_milvus needs langchain-core and langchain-milvus ({exc}); "
        'install them with: pip install "m3-rag[langchain]" langchain-milvus'
    ) from exc

from m3_rag.integrations.langchain import M3Embeddings

__all__ = ["M3MilvusSparseEmbedding"]


class M3MilvusSparseEmbedding(BaseSparseEmbedding):
    """BGE-M3 lexical weights as ``{token_id: weight}`` dicts (int keys), as Milvus wants them.

    Build it from an :class:`~m3_rag.integrations.langchain.M3Embeddings` (shares its settings)
    or from the same keyword arguments (``model_name``, ``embedder``, ``device``, ``max_length``...).
    Dense and sparse come from one pass and one per-model cache: the model runs once per text.
    """

    def __init__(self, embeddings: M3Embeddings | None = None, **kwargs: Any) -> None:
        if embeddings is not None and kwargs:
            raise TypeError(
                f"pass either an M3Embeddings or M3Embeddings' keyword arguments, not both (got {sorted(kwargs)})"
            )
        if embeddings is not None and not isinstance(embeddings, M3Embeddings):
            raise TypeError(f"embeddings must be an M3Embeddings, got {type(embeddings).__name__}")
        self.embeddings = embeddings if embeddings is not None else M3Embeddings(**kwargs)

    def __repr__(self) -> str:
        return f"M3MilvusSparseEmbedding({self.embeddings!r})"

    def embed_query(self, query: str) -> dict[int, float]:
        """Sparse weights of a query."""
        return self.embeddings.embed_query_sparse(query)

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Sparse weights of documents."""
        return self.embeddings.embed_documents_sparse(texts)
