"""BGE-M3 sparse weights for ``langchain_milvus`` (``Milvus`` with a sparse vector field), and its reranker.

Needs ``langchain-milvus`` (``pip install "m3-rag[langchain,milvus]" langchain-milvus``; it wants
pymilvus>=3). Pass :class:`M3MilvusSparseEmbedding` next to the dense embeddings; dense and
sparse vectors come from one pass (the model's encoding cache), so the model runs once per text
for both fields. A recipe that runs on milvus-lite as written (checked with langchain-milvus 0.4.0,
pymilvus 3.0.2 and milvus-lite 3.2.2; ``tests/test_langchain_milvus.py`` runs it)::

    from langchain_milvus import Milvus
    from pymilvus import WeightedRanker
    from m3_rag.integrations.langchain import M3Embeddings
    from m3_rag.integrations.langchain_milvus import M3MilvusSparseEmbedding, milvus_reranker

    texts = ["Berlin is the capital of Germany.", "Paris is the capital of France.", "Rome is in Italy."]
    dense = M3Embeddings(model_name="BAAI/bge-m3")
    store = Milvus.from_texts(
        texts, embedding=[dense, M3MilvusSparseEmbedding(dense)], vector_field=["dense", "sparse"],
        connection_args={"uri": "./milvus.db"},
        index_params=[{"metric_type": "IP", "index_type": "FLAT"},
                      {"metric_type": "IP", "index_type": "SPARSE_INVERTED_INDEX"}],
        search_params=[{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}])
    docs = store.as_retriever().invoke("capital of Germany")      # default: WeightedRanker(1, 1)
    scored = store.similarity_search_with_score(
        "capital of Germany", k=2, reranker=milvus_reranker(WeightedRanker(0.5, 0.5, norm_score=False)))

Why each piece:

- ``search_params``: without them langchain-milvus derives the sparse field's search parameters
  from its index defaults (``{"drop_ratio_build": 0.2}``), which milvus-lite refuses at search time
  (``only drop_ratio_build=0 is supported``), so ``as_retriever()`` fails.
- ``reranker``: langchain-milvus 0.4 takes a ``pymilvus.Function`` reranker and calls its
  ``.type``, which a ``pymilvus.WeightedRanker`` / ``RRFRanker`` object lacks (AttributeError);
  :func:`milvus_reranker` turns one into the equivalent Function (the same scores). The
  ``ranker_type`` / ``ranker_params`` arguments are deprecated. Without any reranker
  langchain-milvus falls back to ``WeightedRanker(1, 1)`` and says so with a DeprecationWarning
  of its own; pass ``search_kwargs={"reranker": ...}`` to ``as_retriever`` to avoid it.
"""

from __future__ import annotations

from typing import Any

try:
    import langchain_core  # noqa: F401
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
except ImportError as exc:
    raise ImportError(
        f"m3_rag.integrations.langchain_milvus needs langchain-core and langchain-milvus ({exc}); "
        'install them with: pip install "m3-rag[langchain,milvus]" langchain-milvus'
    ) from exc

from m3_rag.integrations.langchain import M3Embeddings

__all__ = ["M3MilvusSparseEmbedding", "milvus_reranker"]


class M3MilvusSparseEmbedding(BaseSparseEmbedding):
    """BGE-M3 lexical weights as ``{token_id: weight}`` dicts (int keys), as Milvus wants them.

    Build it from an :class:`~m3_rag.integrations.langchain.M3Embeddings` (shares its settings)
    or from the same keyword arguments (``model_name``, ``embedder``, ``device``, ``max_length``...).
    Dense and sparse come from one pass and one per-model cache: the model runs once per text.
    ``copy.deepcopy`` and pickle share the model (by name in a new process).
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


def milvus_reranker(ranker: Any) -> Any:
    """A reranker that langchain-milvus' ``reranker=`` takes: a ``pymilvus.Function`` of type RERANK.

    ``ranker`` is a ``pymilvus.WeightedRanker`` or ``pymilvus.RRFRanker`` (turned into the
    Function with the same parameters, hence the same scores) or such a Function (returned as is).

    >>> from pymilvus import WeightedRanker
    >>> fn = milvus_reranker(WeightedRanker(0.7, 0.3))
    >>> fn.params
    {'reranker': 'weighted', 'weights': [0.7, 0.3], 'norm_score': True}
    """
    from pymilvus import Function, FunctionType, RRFRanker, WeightedRanker

    if isinstance(ranker, Function):
        if ranker.type != FunctionType.RERANK:
            raise ValueError(f"a Function reranker must have function_type=FunctionType.RERANK, got {ranker.type!r}")
        return ranker
    if not isinstance(ranker, (WeightedRanker, RRFRanker)):
        raise TypeError(
            "ranker must be a pymilvus WeightedRanker, RRFRanker or a Function of type RERANK, got "
            f"{type(ranker).__name__}"
        )
    spec = ranker.dict()  # {"strategy": "weighted" | "rrf", "params": {...}}
    strategy = str(spec["strategy"])
    return Function(
        name=f"{strategy}_reranker",
        input_field_names=[],
        function_type=FunctionType.RERANK,
        params={"reranker": strategy, **spec["params"]},
    )
