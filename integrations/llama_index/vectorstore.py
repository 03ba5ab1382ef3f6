"""``M3VectorStore``: a LlamaIndex vector store over any m3-rag hybrid store (M3Index, MilvusStore, ...).

Nodes round-trip whole (see :mod:`~m3_rag.integrations.llama_index.nodes`): the stored text is
``node.get_content(MetadataMode.EMBED)``, what the embedding model sees, and the node itself
(id, text, metadata, relationships, ``ref_doc_id``, excluded-metadata keys) is kept in the
record's metadata, so queries return the node that was inserted, ``hash`` included.

One model pass per node and per query:

- ``add``: LlamaIndex runs the embedding model on every node before ``add``. When that model is
  :class:`~m3_rag.integrations.llama_index.M3Embedding` on the store's model, its pass also made
  the sparse and ColBERT outputs, and ``add`` stores them (:mod:`~.handoff`, checked against
  ``node.embedding``); nodes without such a pass are encoded here, once, all together.
- ``query``: the store encodes ``VectorStoreQuery.query_str`` (dense, sparse and ColBERT in one
  pass), so ``is_embedding_query`` is False and LlamaIndex does not embed the query first; a
  query given only as ``query_embedding`` is refused (hybrid scoring needs the text).

Query modes (``VectorStoreQuery.mode``):

- ``DEFAULT``: dense + sparse candidates, exact hybrid rerank with the store's ``weights``:
  ``similarity_top_k`` nodes, scores equal to ``compute_score``'s ``colbert+sparse+dense``;
- ``HYBRID``: the same, ``hybrid_top_k`` (or ``similarity_top_k``) nodes; ``alpha`` (LlamaIndex:
  1 = vector search, 0 = keyword search; None keeps the weights) splits the dense + sparse share
  of the weights: ``(w_d, w_s, w_c) -> (alpha * (w_d + w_s), (1 - alpha) * (w_d + w_s), w_c)``;
  ColBERT keeps its weight, and ``alpha=0.5`` with the default ``(1, 1, 1)`` is the default;
- ``SPARSE``: sparse candidates ranked by the lexical score alone (weights ``(0, 1, 0)``):
  ``sparse_top_k`` (or ``similarity_top_k``) nodes sharing a token with the query.

Results: the stored nodes (unchanged), ``similarities`` (the ranking score) and ``ids``, plus
``scores`` (per node, the per-mode scores) in :class:`M3VectorStoreQueryResult`. LlamaIndex's
``VectorIndexRetriever`` keeps only the similarity; :class:`M3Retriever` over the same store returns
the per-mode scores next to each node (``M3NodeWithScore.scores``).

``filters`` (``MetadataFilters``, see :func:`~.filters.to_core_filter`), ``doc_ids`` (nodes of
those source documents) and ``node_ids`` (a non-empty list restricts the search to those nodes)
apply in every mode. ``vector_store_kwargs`` may set ``weights``, ``candidates``,
``first_stage``, ``cross_encoder`` and ``cross_encoder_top_n`` per query.

``delete(ref_doc_id)``, ``get_nodes`` and ``delete_nodes`` with ``filters`` ask the store for the
ids that pass (``HybridStore.ids_where``: in the engine for Milvus and Qdrant) and read only
those records. ``persist`` saves an in-memory ``M3Index`` as an index
folder (``<persist_path without .json>``); a store with a folder or a server of its own commits there.

Example:
    >>> from llama_index.core import Document, StorageContext, VectorStoreIndex
    >>> from m3_rag import M3Embedder, M3Index
    >>> from m3_rag.integrations.llama_index import M3Embedding, M3VectorStore
    >>> m3 = M3Embedder.shared("tests/data/tiny-m3", device="cpu")
    >>> store = M3VectorStore(M3Index(m3))
    >>> index = VectorStoreIndex.from_documents(
    ...     [Document(text="Berlin is the capital of Germany.", id_="de"), Document(text="Paris is in France.")],
    ...     storage_context=StorageContext.from_defaults(vector_store=store), embed_model=M3Embedding(embedder=m3))
    >>> best = index.as_retriever(similarity_top_k=1).retrieve("capital of Germany")[0]
    >>> best.node.ref_doc_id, len(store)
    ('de', 2)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    DEFAULT_PERSIST_DIR,
    DEFAULT_PERSIST_FNAME,
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from m3_rag import M3Embedder, M3Index
from m3_rag.filters import Filter, matches, parse_filter
from m3_rag.output import M3Output
from m3_rag.records import Record
from m3_rag.retrieval import HybridStore, check_first_stage
from m3_rag.scoring import normalize_weights

from ._common import resolve_embedder
from .embeddings import M3Embedding
from .filters import to_core_filter
from .handoff import handoff_for
from .nodes import node_record, record_node, ref_doc_id_of
from .query import hybrid_weights, persist_folder, query_filter

__all__ = ["QUERY_MODES", "M3VectorStore", "M3VectorStoreQueryResult", "hybrid_weights", "persist_folder"]

#: The ``VectorStoreQuery`` modes M3VectorStore answers.
QUERY_MODES = (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.HYBRID, VectorStoreQueryMode.SPARSE)
_SPARSE_ONLY = (0.0, 1.0, 0.0)  # SPARSE queries rank by the lexical score alone
_QUERY_OPTIONS = ("weights", "candidates", "first_stage", "cross_encoder", "cross_encoder_top_n")
_PAGE = 1000  # records read per store.get while scanning


@dataclass
class M3VectorStoreQueryResult(VectorStoreQueryResult):
    """LlamaIndex's query result plus ``scores``: the per-mode scores of each node (dense, sparse, colbert)."""

    scores: list[dict[str, float]] | None = None


class M3VectorStore(BasePydanticVectorStore):
    """A ``BasePydanticVectorStore`` over an m3-rag :class:`~m3_rag.retrieval.HybridStore` (see the module docs).

    Args:
        store: the hybrid store (an :class:`~m3_rag.M3Index`, a ``MilvusStore``, ...); None makes a new
            in-memory ``M3Index`` of ``model_name`` / ``embedder``.
        model_name, embedder, device, dtype: the model of a new ``M3Index`` (see :class:`M3Embedding`).
        weights: ``(w_dense, w_sparse, w_colbert)`` of the hybrid score (default ``(1, 1, 1)``).
        candidates: first-stage candidates per mode (at least the number of nodes asked for).
        first_stage: ``"dense"``, ``"sparse"`` or both (default) for DEFAULT and HYBRID queries.

    The store is truthy even when empty (``StorageContext.from_defaults`` treats a falsy store as absent).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stores_text: bool = True
    is_embedding_query: bool = False
    weights: tuple[float, float, float] = Field(default=(1.0, 1.0, 1.0), description="(w_dense, w_sparse, w_colbert).")
    candidates: int = Field(default=100, ge=1, description="First-stage candidates per mode.")
    first_stage: tuple[str, ...] = Field(default=("dense", "sparse"), description="Modes that pick candidates.")

    _store: HybridStore = PrivateAttr()
    _colbert: bool = PrivateAttr()
    _handoff_token: object = PrivateAttr()

    def __init__(
        self,
        store: HybridStore | None = None,
        *,
        model_name: str | os.PathLike[str] | None = None,
        embedder: M3Embedder | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        if store is None:
            store = M3Index(resolve_embedder(model_name, embedder, device=device, dtype=dtype))
        elif model_name is not None or embedder is not None or device is not None or dtype is not None:
            raise ValueError("pass either a store or the model of a new M3Index (model_name / embedder), not both")
        if not isinstance(store, HybridStore):
            raise TypeError(
                f"store must be an m3_rag.M3Index, a MilvusStore or another m3_rag.retrieval.HybridStore, "
                f"got {type(store).__name__}"
            )
        super().__init__(**kwargs)
        self._store = store
        self._colbert = getattr(store, "colbert_dtype", "float32") is not None  # does the store keep ColBERT?
        self._handoff_token = handoff_for(store.embedder).attach(colbert=self._colbert)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        return normalize_weights(value)

    @field_validator("first_stage", mode="before")
    @classmethod
    def _check_first_stage(cls, value: Any) -> tuple[str, ...]:
        return check_first_stage(value)

    @classmethod
    def class_name(cls) -> str:
        return "M3VectorStore"

    @classmethod
    def from_persist_path(
        cls, persist_path: str | os.PathLike[str], embedder: M3Embedder | None = None, **kwargs: Any
    ) -> M3VectorStore:
        """The store that :meth:`persist` wrote for ``persist_path`` (an ``M3Index`` folder, loaded)."""
        return cls(M3Index.load(persist_folder(persist_path), embedder), **kwargs)

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str] = DEFAULT_PERSIST_DIR,
        namespace: str = "default",
        embedder: M3Embedder | None = None,
        **kwargs: Any,
    ) -> M3VectorStore:
        """The store that ``storage_context.persist(persist_dir)`` wrote (``<persist_dir>/default__vector_store``)."""
        return cls.from_persist_path(Path(persist_dir) / f"{namespace}__{DEFAULT_PERSIST_FNAME}", embedder, **kwargs)

    # ------------------------------------------------------------------ basics
    @property
    def client(self) -> HybridStore:
        """The m3-rag store (LlamaIndex's name for the backend)."""
        return self._store

    @property
    def store(self) -> HybridStore:
        """The m3-rag store (search it directly, or pass it to :class:`M3Retriever`)."""
        return self._store

    @property
    def embedder(self) -> M3Embedder:
        embedder: M3Embedder = self._store.embedder
        return embedder

    @property
    def embed_model(self) -> M3Embedding:
        """An :class:`M3Embedding` on the store's model: its passes feed :meth:`add` (one pass per node)."""
        return M3Embedding(embedder=self.embedder)

    def __len__(self) -> int:
        return len(self._store)

    def __bool__(self) -> bool:
        return True

    # ------------------------------------------------------------------ writing
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Store nodes (an id already stored is replaced); returns their ids. See the module docs for passes."""
        if add_kwargs:
            raise TypeError(f"M3VectorStore.add takes no options, got {sorted(add_kwargs)}")
        items = list(nodes)
        if not items:
            return []
        records = [node_record(node) for node in items]
        texts = [text for text, _ in records]
        output = self._encode(texts, [node.embedding for node in items])
        return self._store.add_encoded(texts, output, ids=[n.node_id for n in items], metadatas=[m for _, m in records])

    def _encode(self, texts: list[str], embeddings: list[list[float] | None]) -> M3Output:
        """The outputs to store: the embedding model's passes where they are kept, one pass for the rest."""
        embedder = self.embedder
        handed = handoff_for(embedder).take(
            texts, embeddings, max_length=embedder.passage_max_length, colbert=self._colbert
        )
        missing = list(dict.fromkeys(t for t, entry in zip(texts, handed) if entry is None))
        fresh: dict[str, tuple[np.ndarray, Any, np.ndarray | None]] = {}
        if missing:
            out = embedder.encode_documents(missing, dense=True, sparse=True, colbert=self._colbert)
            assert out.dense is not None and out.sparse is not None
            for i, text in enumerate(missing):
                fresh[text] = (out.dense[i], out.sparse[i], out.colbert[i] if out.colbert is not None else None)
        rows = [(e.dense, e.sparse, e.colbert) if e is not None else fresh[t] for t, e in zip(texts, handed)]
        return M3Output(
            dense=np.stack([r[0] for r in rows]).astype(np.float32, copy=False),
            sparse=[r[1] for r in rows],
            colbert=[r[2] for r in rows] if self._colbert else None,  # type: ignore[misc]
        )

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the nodes of the source document ``ref_doc_id`` (a record without one is its own document)."""
        if delete_kwargs:
            raise TypeError(f"M3VectorStore.delete takes no options, got {sorted(delete_kwargs)}")
        if not isinstance(ref_doc_id, str):
            raise TypeError(f"ref_doc_id must be a str, got {type(ref_doc_id).__name__}")
        ids = [] if ref_doc_id in ("", "None") else self._store.ids_where({"ref_doc_id": ref_doc_id})
        ids += [r.id for r in self._store.get(ref_doc_id) if ref_doc_id_of(r.id, r.metadata) == ref_doc_id]
        if ids:
            self._store.delete(list(dict.fromkeys(ids)))

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete the nodes with these ids that pass ``filters`` (neither given: every node, as in LlamaIndex)."""
        if delete_kwargs:
            raise TypeError(f"M3VectorStore.delete_nodes takes no options, got {sorted(delete_kwargs)}")
        if node_ids is not None and filters is None:
            self._store.delete(list(node_ids))
            return
        ids = [r.id for r in self._select(node_ids, filters)]
        if ids:
            self._store.delete(ids)

    def clear(self) -> None:
        """Delete every node."""
        ids = self._store.ids
        if ids:
            self._store.delete(ids)

    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Save an in-memory ``M3Index`` to ``persist_folder(persist_path)``; an index with a folder commits to
        that folder (it does not move), and stores with a server of their own (Milvus) need nothing."""
        if fs is not None and "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            raise ValueError(f"M3VectorStore persists to local folders only, got a {type(fs).__name__} filesystem")
        if not isinstance(self._store, M3Index):
            return
        if self._store.path is not None:
            self._store.save()
        else:
            self._store.save(persist_folder(persist_path))

    # ------------------------------------------------------------------ reading
    def _scan(self, flt: Filter | None) -> list[Record]:
        ids = self._store.ids_where(flt)
        return [r for start in range(0, len(ids), _PAGE) for r in self._store.get(ids[start : start + _PAGE])]

    def _select(self, node_ids: Sequence[str] | None, filters: MetadataFilters | None) -> list[Record]:
        flt = parse_filter(to_core_filter(filters) or None)
        if node_ids is None:
            return self._scan(flt)
        return [r for r in self._store.get(list(node_ids)) if flt is None or matches(flt, r.metadata)]

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The stored nodes with these ids (in that order) that pass ``filters`` (no ids: every node that passes)."""
        return [record_node(r.id, r.text, r.metadata) for r in self._select(node_ids, filters)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> M3VectorStoreQueryResult:
        """Hybrid search (see the module docs for modes, ``alpha`` and the options in ``kwargs``)."""
        if query.query_str is None:
            raise ValueError(
                "M3VectorStore encodes the query text itself (dense, sparse and ColBERT in one pass) and needs "
                "VectorStoreQuery.query_str; a query given only as query_embedding cannot be scored by the hybrid "
                "formula. Pass query_str (VectorStoreIndex retrievers do)"
            )
        unknown = sorted(set(kwargs) - set(_QUERY_OPTIONS))
        if unknown:
            raise TypeError(f"unknown M3VectorStore query options {unknown}; supported: {list(_QUERY_OPTIONS)}")
        weights = kwargs.get("weights", self.weights)
        stages: Any = kwargs.get("first_stage", self.first_stage)
        if query.mode == VectorStoreQueryMode.DEFAULT:
            k = query.similarity_top_k
        elif query.mode == VectorStoreQueryMode.HYBRID:
            k, weights = query.hybrid_top_k or query.similarity_top_k, hybrid_weights(weights, query.alpha)
        elif query.mode == VectorStoreQueryMode.SPARSE:
            k, weights, stages = query.sparse_top_k or query.similarity_top_k, _SPARSE_ONLY, ("sparse",)
        else:
            raise ValueError(
                f"M3VectorStore answers query modes {[m.value for m in QUERY_MODES]}, got {query.mode.value!r}"
            )
        asked = (k, query.similarity_top_k, query.sparse_top_k or 0, query.hybrid_top_k or 0)
        hits = self._store.search(
            query.query_str,
            k=k,
            candidates=max(int(kwargs.get("candidates", self.candidates)), *asked),
            first_stage=stages,
            weights=weights,
            filter=query_filter(query),
            cross_encoder=kwargs.get("cross_encoder"),
            cross_encoder_top_n=kwargs.get("cross_encoder_top_n"),
        )
        return M3VectorStoreQueryResult(
            nodes=[record_node(h.id, h.text, h.metadata) for h in hits],
            similarities=[h.score for h in hits],
            ids=[h.id for h in hits],
            scores=[dict(h.scores) for h in hits],
        )

    # ------------------------------------------------------------------ async: the same, off the event loop
    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> M3VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)
