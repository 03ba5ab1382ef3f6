"""``M3HybridRetriever``: a LangChain retriever over any hybrid store (``M3Index``, Milvus...)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManager,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from pydantic import ConfigDict, Field, field_validator

from m3_rag.colbert_codec import ColbertDtype
from m3_rag.encoder import M3Embedder
from m3_rag.filters import parse_filter
from m3_rag.index import M3Index
from m3_rag.retrieval import HybridStore, SearchHit, check_first_stage
from m3_rag.scoring import normalize_weights

from ._common import hit_scores, resolve_embedder, score_metadata
from ._sharing import SharedResources

__all__ = ["M3HybridRetriever"]

_PER_CALL = ("k", "filter", "weights", "candidates", "first_stage", "cross_encoder", "cross_encoder_top_n")


class M3HybridRetriever(SharedResources, BaseRetriever):
    """Hybrid retrieval (dense/sparse candidates, exact dense + sparse + ColBERT rerank) for LangChain.

    Works over any :class:`m3_rag.retrieval.HybridStore` (the embedded :class:`~m3_rag.M3Index`,
    the Milvus store). ``k``, ``filter``, ``weights``, ``candidates`` and ``first_stage`` can also
    be given per call: ``retriever.invoke(query, k=3, filter={"lang": "en"})``. ``batch`` /
    ``abatch`` encode all their queries in one pass (``index.search_batch``).

    Each returned Document has ``id`` (the store's id) and the stored metadata, unchanged, so
    the same stored document always compares equal (``MultiQueryRetriever`` and other LangChain
    code deduplicate by Document equality). The scores are available two ways:

    - :meth:`invoke_with_scores` returns ``(Document, scores)`` pairs, ``scores`` being
      ``{"relevance_score": hybrid, "dense_score": ..., "sparse_score": ..., "colbert_score": ...}``
      (plus ``"hybrid_score"`` and ``"cross_encoder_score"`` after a cross-encoder stage);
    - ``score_metadata=True`` puts those keys into each Document's metadata (flat, so they
      survive serialisers that only take scalar metadata). Documents then differ per query:
      leave it off under ``MultiQueryRetriever``.

    Copies (``copy.deepcopy``) share the store and the model. Pickling writes the model by name
    and the store by reference: an ``M3Index`` opened with ``M3Index.open(path)`` is reopened in
    the new process; an in-memory index or a Milvus connection refuses, with a TypeError saying why.

    Example:
        >>> retriever = M3HybridRetriever.from_texts(
        ...     ["Berlin is the capital of Germany.", "Paris is in France."],
        ...     ids=["de", "fr"], model_name="tests/data/tiny-m3", device="cpu", k=1)
        >>> doc = retriever.invoke("capital of Germany")[0]
        >>> doc.id, doc.metadata
        ('de', {})
        >>> [(d.id, sorted(scores)) for d, scores in retriever.invoke_with_scores("capital of Germany")]
        [('de', ['colbert_score', 'dense_score', 'relevance_score', 'sparse_score'])]
        >>> [len(docs) for docs in retriever.batch(["Germany", "France"], k=2)]
        [2, 2]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    index: HybridStore
    """The store to search: an :class:`~m3_rag.M3Index` or any ``HybridStore``."""
    k: int = Field(default=4, ge=1)
    """Documents per query."""
    candidates: int = Field(default=100, ge=1)
    """How many documents the first stage takes from each of its modes before the hybrid rerank."""
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """``(w_dense, w_sparse, w_colbert)`` of the hybrid score."""
    first_stage: str | tuple[str, ...] = ("dense", "sparse")
    """``"dense"``, ``"sparse"`` or both (the union of their candidates)."""
    filter: dict[str, Any] | None = None
    """A metadata filter (:mod:`m3_rag.filters`), e.g. ``{"lang": "en", "year": {"$gte": 2020}}``."""
    cross_encoder: Any = Field(default=None, exclude=True, repr=False)
    """Optional final stage: a cross-encoder (``sentence_transformers.CrossEncoder`` or a model name such as
    ``"BAAI/bge-reranker-v2-m3"``, extra ``m3-rag[rerank]``) that reorders the best ``cross_encoder_top_n`` hybrid
    results; the score becomes the cross-encoder's and ``hybrid_score`` keeps the hybrid one."""
    cross_encoder_top_n: int | None = Field(default=None, ge=1)
    """How many hybrid results the cross-encoder sees (default: as many as are returned)."""
    score_metadata: bool = False
    """Put the scores into each Document's metadata (see the class docs; off: metadata as stored)."""

    @field_validator("index", mode="before")
    @classmethod
    def _check_index(cls, value: Any) -> Any:
        if not isinstance(value, HybridStore):
            raise TypeError(
                "index must be a hybrid store such as m3_rag.M3Index (add/delete/search/search_batch and an "
                f"embedder), got {type(value).__name__}; build one with M3HybridRetriever.from_texts(...)"
            )
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _check_weights(cls, value: Any) -> Any:
        return normalize_weights(value)

    @field_validator("first_stage", mode="before")
    @classmethod
    def _check_first_stage(cls, value: Any) -> Any:
        return check_first_stage(value)

    @field_validator("filter", mode="before")
    @classmethod
    def _check_filter(cls, value: Any) -> Any:
        parse_filter(value)
        return None if value is None else dict(value)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        *,
        ids: Sequence[str] | None = None,
        model_name: str | os.PathLike[str] | None = None,
        embedder: M3Embedder | None = None,
        device: str | None = None,
        dtype: str | None = None,
        colbert_dtype: ColbertDtype | None = "float16",
        **kwargs: Any,
    ) -> M3HybridRetriever:
        """Build an :class:`~m3_rag.M3Index` of ``texts`` and a retriever over it.

        ``model_name`` (default ``"BAAI/bge-m3"``) or an ``embedder``, and ``device``/``dtype``,
        pick the model (shared per process);
        ``colbert_dtype`` is how the index stores ColBERT vectors (``"float16"``, ``"float32"``, ``"int8"`` or
        ``None`` to re-encode candidates); ``kwargs`` are retriever fields (``k``, ``weights``...).
        """
        model = resolve_embedder(model_name, embedder, device=device, dtype=dtype)
        index = M3Index(model, colbert_dtype=colbert_dtype)
        index.add(list(texts), ids=ids, metadatas=metadatas)
        return cls(index=index, **kwargs)

    @classmethod
    def from_documents(cls, documents: Iterable[Document], **kwargs: Any) -> M3HybridRetriever:
        """:meth:`from_texts` with the Documents' text, metadata and ids (a new id where ``id`` is None)."""
        docs = list(documents)
        ids = [doc.id or uuid.uuid4().hex for doc in docs]
        return cls.from_texts([doc.page_content for doc in docs], [doc.metadata for doc in docs], ids=ids, **kwargs)

    # ------------------------------------------------------------------ searching
    def _search(self, queries: list[str], kwargs: dict[str, Any]) -> list[list[Document]]:
        return [[self._to_document(hit) for hit in found] for found in self._hits(queries, kwargs)]

    def _to_document(self, hit: SearchHit) -> Document:
        metadata = score_metadata(hit.metadata, hit.score, hit.scores) if self.score_metadata else hit.metadata
        return Document(id=hit.id, page_content=hit.text, metadata=metadata)

    def invoke_with_scores(self, query: str, **kwargs: Any) -> list[tuple[Document, dict[str, float]]]:
        """The Documents :meth:`invoke` returns, each with its scores.

        ``kwargs`` are the per-call arguments of ``invoke`` (``k``, ``filter``, ``weights``...);
        the scores are ``{"relevance_score": hybrid, "dense_score": ..., "sparse_score": ...,
        "colbert_score": ...}`` (after a cross-encoder stage ``relevance_score`` is its score and
        ``hybrid_score`` / ``cross_encoder_score`` are added). No callbacks run.
        """
        if not isinstance(query, str):
            raise TypeError(f"the query must be a str, got {type(query).__name__}: {query!r:.80}")
        return [(self._to_document(hit), hit_scores(hit)) for hit in self._hits([query], kwargs)[0]]

    def _hits(self, queries: list[str], kwargs: dict[str, Any]) -> list[list[SearchHit]]:
        kwargs = dict(kwargs)
        kwargs.pop("verbose", None)  # BaseRetriever.invoke passes it on
        unknown = sorted(set(kwargs) - set(_PER_CALL))
        if unknown:
            raise TypeError(
                f"M3HybridRetriever got unexpected argument(s) {unknown}; per call it takes {list(_PER_CALL)}"
            )
        args = {name: getattr(self, name) for name in _PER_CALL}
        args.update({name: value for name, value in kwargs.items() if value is not None})
        return self.index.search_batch(queries, **args)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        if not isinstance(query, str):
            raise TypeError(f"the query must be a str, got {type(query).__name__}: {query!r:.80}")
        return self._search([query], {"k": k, "filter": filter, **kwargs})[0]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), k=k, filter=filter, **kwargs
        )

    def batch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Retrieve for several queries, encoded together in one pass (``index.search_batch``)."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        runs = []
        for query, conf in zip(inputs, configs):
            manager = CallbackManager.configure(
                conf.get("callbacks"), None, verbose=kwargs.get("verbose", False),
                inheritable_tags=conf.get("tags"), local_tags=self.tags,
                inheritable_metadata={**(conf.get("metadata") or {}), **self._get_ls_params()},
                local_metadata=self.metadata,
            )  # fmt: skip
            runs.append(
                manager.on_retriever_start(None, query, name=conf.get("run_name") or self.get_name(),
                                           run_id=conf.get("run_id"))
            )  # fmt: skip
        try:
            results: list[Any] = self._run_batch(list(inputs), kwargs, return_exceptions)
        except Exception as exc:
            for run in runs:
                run.on_retriever_error(exc)
            raise
        for run, result in zip(runs, results):
            if isinstance(result, Exception):
                run.on_retriever_error(result)
            else:
                run.on_retriever_end(result)
        return results

    async def abatch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """:meth:`batch` without blocking the event loop (the search runs in a worker thread)."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        runs = []
        for query, conf in zip(inputs, configs):
            manager = AsyncCallbackManager.configure(
                conf.get("callbacks"), None, verbose=kwargs.get("verbose", False),
                inheritable_tags=conf.get("tags"), local_tags=self.tags,
                inheritable_metadata={**(conf.get("metadata") or {}), **self._get_ls_params()},
                local_metadata=self.metadata,
            )  # fmt: skip
            runs.append(
                await manager.on_retriever_start(None, query, name=conf.get("run_name") or self.get_name(),
                                                 run_id=conf.get("run_id"))
            )  # fmt: skip
        try:
            results: list[Any] = await run_in_executor(None, self._run_batch, list(inputs), kwargs, return_exceptions)
        except Exception as exc:
            for arun in runs:
                await arun.on_retriever_error(exc)
            raise
        for arun, result in zip(runs, results):
            if isinstance(result, Exception):
                await arun.on_retriever_error(result)
            else:
                await arun.on_retriever_end(result)
        return results

    def _run_batch(self, inputs: list[Any], kwargs: dict[str, Any], return_exceptions: bool) -> list[Any]:
        """One ``search_batch`` for the str inputs; a TypeError for the others (raised unless collected)."""
        results: list[Any] = [None] * len(inputs)
        good = []
        for i, query in enumerate(inputs):
            if isinstance(query, str):
                good.append(i)
            else:
                error = TypeError(f"inputs[{i}] must be a str query, got {type(query).__name__}: {query!r:.80}")
                if not return_exceptions:
                    raise error
                results[i] = error
        if good:
            try:
                found = self._search([inputs[i] for i in good], kwargs)
            except Exception as exc:
                if not return_exceptions:
                    raise
                found = [exc] * len(good)  # type: ignore[list-item]
            for i, docs in zip(good, found):
                results[i] = docs
        return results
