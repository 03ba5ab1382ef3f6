"""BGE-M3 sparse weights for ``langchain_qdrant.QdrantVectorStore`` (hybrid and sparse modes).

Needs ``langchain-qdrant`` (``pip install "m3-rag[langchain]" langchain-qdrant``).

Example:
    >>> from langchain_qdrant import QdrantVectorStore, RetrievalMode
    >>> from m3_rag.integrations.langchain import M3Embeddings
    >>> dense = M3Embeddings(model_name="tests/data/tiny-m3", device="cpu")
    >>> store = QdrantVectorStore.from_texts(
    ...     ["Berlin is the capital of Germany.", "Paris is in France."],
    ...     embedding=dense, sparse_embedding=M3QdrantSparseEmbeddings(dense),
    ...     retrieval_mode=RetrievalMode.HYBRID, location=":memory:", collection_name="demo")
    >>> len(store.similarity_search("capital of Germany", k=1))
    1
"""

from __future__ import annotations

from typing import Any

try:
    import langchain_core  # noqa: F401
    from langchain_qdrant import SparseEmbeddings, SparseVector
except ImportError as exc:
    raise ImportError(
        f"m3_rag.integrations.langchain_qdrant needs langchain-core and langchain-qdrant ({exc}); "
        'install them with: pip install "m3-rag[langchain]" langchain-qdrant'
    ) from exc

from m3_rag.integrations.langchain import M3Embeddings

__all__ = ["M3QdrantSparseEmbeddings"]


class M3QdrantSparseEmbeddings(SparseEmbeddings):
    """BGE-M3 lexical weights as ``langchain_qdrant.SparseVector`` (int token ids, float weights).

    Build it from an :class:`~m3_rag.integrations.langchain.M3Embeddings` (shares its settings)
    or from the same keyword arguments (``model_name``, ``embedder``, ``device``, ``max_length``...).
    Dense and sparse come from one pass and one per-model cache, so ``QdrantVectorStore``
    asking for both runs the model once per text.

    >>> sparse = M3QdrantSparseEmbeddings(model_name="tests/data/tiny-m3", device="cpu")
    >>> vector = sparse.embed_query("capital of Germany")
    >>> all(isinstance(i, int) for i in vector.indices), len(vector.indices) == len(vector.values)
    (True, True)
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
        return f"M3QdrantSparseEmbeddings({self.embeddings!r})"

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        """Sparse vectors of documents."""
        return [_vector(w) for w in self.embeddings.embed_documents_sparse(texts)]

    def embed_query(self, text: str) -> SparseVector:
        """Sparse vector of a query."""
        return _vector(self.embeddings.embed_query_sparse(text))


def _vector(weights: dict[int, float]) -> SparseVector:
    return SparseVector(indices=list(weights), values=list(weights.values()))
