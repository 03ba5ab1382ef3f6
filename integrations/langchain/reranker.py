"""``M3Reranker``: rerank any retriever's Documents with BGE-M3's exact hybrid score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, field_validator, model_validator

from m3_rag.encoder import DEFAULT_MODEL, M3Embedder
from m3_rag.rerank import rerank_texts
from m3_rag.scoring import normalize_weights
from m3_rag.store_encode import open_encoding_store

from ._common import resolve_embedder, score_metadata
from ._sharing import SharedResources

__all__ = ["M3Reranker"]


class M3Reranker(SharedResources, BaseDocumentCompressor):
    """A document compressor that orders Documents by ``(w_d*dense + w_s*sparse + w_c*colbert) / sum(w)``.

    The scores equal :meth:`M3Embedder.compute_score` for the same (query, text) pairs (query
    and texts are each encoded once; :func:`m3_rag.rerank_texts`). Returns NEW Documents (the
    input is not changed): the best ``top_n`` (all with ``top_n=None``), each with its ``id``,
    metadata plus ``metadata["relevance_score"]`` (hybrid) and ``metadata["dense_score"]``,
    ``["sparse_score"]``, ``["colbert_score"]`` (scores already there, e.g. from
    :class:`M3HybridRetriever`, are replaced). Use it in LangChain's
    ``ContextualCompressionRetriever`` to rerank any retriever's results.

    With ``encoding_store`` (an :class:`~m3_rag.EncodingStore` or its file path, the one the
    documents' :class:`M3Embeddings` filled), only the query is encoded: the documents'
    encodings are read by their ``page_content`` (and ``passage_max_length``, which must match the
    embeddings'), and documents not stored yet are encoded once and stored.

    Example:
        >>> from langchain_core.documents import Document
        >>> reranker = M3Reranker(model_name="tests/data/tiny-m3", device="cpu", top_n=1)
        >>> docs = [Document("Paris is in France."), Document("Berlin is the capital of Germany.")]
        >>> best = reranker.compress_documents(docs, "capital of Germany")
        >>> len(best), "relevance_score" in best[0].metadata, docs[0].metadata
        (1, True, {})
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str = DEFAULT_MODEL
    """Hugging Face hub id or local folder of a BGE-M3 checkpoint."""
    device: str | None = None
    """``"cuda"``, ``"mps"``, ``"cpu"``...; ``None`` picks the best available."""
    dtype: str | None = None
    """``"float32"``, ``"float16"``, ``"bfloat16"``; ``None``: float16 on CUDA, float32 elsewhere."""
    top_n: int | None = Field(default=3, ge=1)
    """How many Documents to return (``None``: all of them, reordered)."""
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """``(w_dense, w_sparse, w_colbert)`` of the hybrid score."""
    passage_max_length: int | None = Field(default=None, ge=2)
    """Tokens per document (``None``: the model's limit, 8192 for BGE-M3)."""
    query_max_length: int | None = Field(default=None, ge=2)
    """Tokens per query (``None``: the model's query default, 512)."""
    cross_encoder: Any = Field(default=None, exclude=True, repr=False)
    """Optional final stage: a cross-encoder (``sentence_transformers.CrossEncoder`` or a model name such as
    ``"BAAI/bge-reranker-v2-m3"``, extra ``m3-rag[rerank]``) that reorders the best ``cross_encoder_top_n`` hybrid
    results; the score becomes the cross-encoder's and ``hybrid_score`` keeps the hybrid one."""
    cross_encoder_top_n: int | None = Field(default=None, ge=1)
    """How many hybrid results the cross-encoder sees (default: as many as are returned)."""
    embedder: M3Embedder | None = Field(default=None, exclude=True, repr=False)
    """An already loaded model to use; after construction, the model in use."""
    encoding_store: Any = Field(default=None, exclude=True, repr=False)
    """An ``EncodingStore`` (or its file path) to read the documents' encodings from; after
    construction, the open store or None."""

    @field_validator("weights", mode="before")
    @classmethod
    def _check_weights(cls, value: Any) -> Any:
        return normalize_weights(value)

    @model_validator(mode="after")
    def _load(self) -> M3Reranker:
        given = self.embedder is not None
        name = self.model_name if not given or "model_name" in self.model_fields_set else None
        self.embedder = resolve_embedder(name, self.embedder, device=self.device, dtype=self.dtype)
        if given:
            self.model_name = self.embedder.name
        self.encoding_store = open_encoding_store(self.encoding_store, self.embedder)
        return self

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best ``top_n`` of ``documents`` for ``query``, best first, as new Documents with scores."""
        docs = list(documents)
        for i, doc in enumerate(docs):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a langchain Document, got {type(doc).__name__}")
        assert self.embedder is not None
        ranked = rerank_texts(
            self.embedder,
            query,
            [doc.page_content for doc in docs],
            weights=self.weights,
            top_n=self.top_n,
            query_max_length=self.query_max_length,
            passage_max_length=self.passage_max_length,
            cross_encoder=self.cross_encoder,
            cross_encoder_top_n=self.cross_encoder_top_n,
            encoding_store=self.encoding_store,
        )
        return [
            Document(
                id=docs[r.index].id,
                page_content=docs[r.index].page_content,
                metadata=score_metadata(docs[r.index].metadata, r.score, r.scores),
            )
            for r in ranked
        ]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """:meth:`compress_documents` in a worker thread (does not block the event loop)."""
        return await run_in_executor(None, self.compress_documents, documents, query, callbacks)
