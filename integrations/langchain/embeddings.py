"""``M3Embeddings``: BGE-M3 dense vectors as a LangChain ``Embeddings`` (plus the sparse weights)."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, model_validator

from m3_rag.encode_cache import EncodingCache, Kind, Want, cache_for
from m3_rag.encoder import DEFAULT_MODEL, M3Embedder
from m3_rag.encoding_store import EncodingStore
from m3_rag.store_encode import encode_with_store, open_encoding_store

from ._common import resolve_embedder
from ._sharing import SharedResources

__all__ = ["M3Embeddings"]


class M3Embeddings(SharedResources, BaseModel, Embeddings):
    """BGE-M3 dense embeddings for LangChain (plain Python floats, unit length).

    Queries are encoded with :meth:`M3Embedder.encode_queries` (``query_max_length``, 512 by
    default) and documents with :meth:`M3Embedder.encode_documents` (``passage_max_length``, the model's
    8192 by default). Every encode also computes the sparse weights, and the half not asked for
    is kept in the model's encoding cache (:func:`m3_rag.encode_cache.cache_for`), so a dense and
    a sparse adapter of the same model (``QdrantVectorStore`` in hybrid mode, langchain-milvus)
    run the model once per text, whatever the batch sizes. Adapters built from the same ``model_name``
    share one loaded model (:meth:`M3Embedder.shared`); pass ``embedder`` to share a model you
    already loaded (then ``model_name``, ``device`` and ``dtype`` are not used).

    With ``encoding_store`` (an :class:`~m3_rag.EncodingStore` or a file path), the pass that
    makes a document's dense vector also stores its sparse weights and ColBERT vectors, so that
    an :class:`M3Reranker` with the same store scores the documents a vector store returns
    without encoding them again; documents already stored are read, not encoded.

    The async methods run the model in a worker thread, so they do not block the event loop.

    Example:
        >>> emb = M3Embeddings(model_name="tests/data/tiny-m3", device="cpu")
        >>> vector = emb.embed_query("What is BGE-M3?")
        >>> len(vector), type(vector[0]).__name__
        (32, 'float')
        >>> round(sum(x * x for x in vector), 5)
        1.0
        >>> [len(v) for v in emb.embed_documents(["BGE-M3 is an encoder.", "It has three outputs."])]
        [32, 32]
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str = DEFAULT_MODEL
    """Hugging Face hub id or local folder of a BGE-M3 checkpoint."""
    device: str | None = None
    """``"cuda"``, ``"mps"``, ``"cpu"``...; ``None`` picks the best available."""
    dtype: str | None = None
    """``"float32"``, ``"float16"``, ``"bfloat16"``; ``None``: float16 on CUDA, float32 elsewhere."""
    batch_size: int | None = Field(default=None, ge=1)
    """Optional cap on texts per forward pass (batches are otherwise sized by a token budget)."""
    passage_max_length: int | None = Field(default=None, ge=2)
    """Tokens per document (``None``: the model's limit, 8192 for BGE-M3)."""
    query_max_length: int | None = Field(default=None, ge=2)
    """Tokens per query (``None``: the model's query default, 512)."""
    embedder: M3Embedder | None = Field(default=None, exclude=True, repr=False)
    """An already loaded model to use; after construction, the model in use."""
    encoding_store: Any = Field(default=None, exclude=True, repr=False)
    """An ``EncodingStore`` (or its file path) that keeps every document's three encodings; after
    construction, the open store or None."""

    @model_validator(mode="after")
    def _load(self) -> M3Embeddings:
        given = self.embedder is not None
        name = self.model_name if not given or "model_name" in self.model_fields_set else None
        self.embedder = resolve_embedder(name, self.embedder, device=self.device, dtype=self.dtype)
        if given:
            self.model_name = self.embedder.name
        for name in ("passage_max_length", "query_max_length"):
            value = getattr(self, name)
            if value is not None and value > self.embedder.max_length:
                raise ValueError(
                    f"{name}={value} is more than the model takes ({self.embedder.max_length} tokens); "
                    f"pass {name} <= {self.embedder.max_length} or leave it None"
                )
        self.encoding_store = open_encoding_store(self.encoding_store, self.embedder)
        return self

    @property
    def model(self) -> M3Embedder:
        """The loaded model (never None after construction)."""
        assert self.embedder is not None
        return self.embedder

    @property
    def cache(self) -> EncodingCache:
        """The model's encoding cache, shared by every adapter of the model (``.stats()``, ``.clear()``)."""
        return cache_for(self.model)

    def _encode(self, texts: list[str], kind: Kind, want: Want) -> list[Any]:
        max_length = self.query_max_length if kind == "query" else self.passage_max_length
        return self.cache.encode(
            self.model, texts, kind=kind, want=want, max_length=max_length, batch_size=self.batch_size
        )

    def _stored(self, texts: list[str], *, dense: bool) -> Any:
        """Documents through the encoding store: dense vectors or sparse weights (misses: all three stored)."""
        store: EncodingStore = self.encoding_store
        return encode_with_store(
            self.model, texts, store, max_length=self.passage_max_length, dense=dense, sparse=not dense,
            colbert=False, batch_size=self.batch_size,
        )  # fmt: skip

    # ------------------------------------------------------------------ dense (Embeddings)
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Dense vectors of documents, as lists of Python floats."""
        if self.encoding_store is not None:
            vectors: list[list[float]] = self._stored(texts, dense=True).dense.tolist()
            return vectors
        return [entry.dense.tolist() for entry in self._encode(texts, "document", "dense")]

    def embed_query(self, text: str) -> list[float]:
        """Dense vector of a query, as a list of Python floats."""
        _check_query(text)
        vector: list[float] = self._encode([text], "query", "dense")[0].dense.tolist()
        return vector

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` in a worker thread."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` in a worker thread."""
        return await run_in_executor(None, self.embed_query, text)

    # ------------------------------------------------------------------ sparse
    def embed_documents_sparse(self, texts: list[str]) -> list[dict[int, float]]:
        """Sparse weights ``{token_id: weight}`` of documents (from the same pass as the dense vectors).

        >>> emb = M3Embeddings(model_name="tests/data/tiny-m3", device="cpu")
        >>> weights = emb.embed_documents_sparse(["repeat repeat"])[0]
        >>> all(isinstance(i, int) and w > 0 for i, w in weights.items())
        True
        """
        if self.encoding_store is not None:
            return [s.to_dict() for s in self._stored(texts, dense=False).sparse]
        return [entry.sparse.to_dict() for entry in self._encode(texts, "document", "sparse")]

    def embed_query_sparse(self, text: str) -> dict[int, float]:
        """Sparse weights ``{token_id: weight}`` of a query."""
        _check_query(text)
        return self._encode([text], "query", "sparse")[0].sparse.to_dict()


def _check_query(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"the query must be a str, got {type(text).__name__}: {text!r:.80}")
