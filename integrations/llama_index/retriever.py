"""``M3Retriever``: hybrid retrieval from an ``M3Index`` (or any ``HybridStore``) for LlamaIndex."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from m3_rag import M3Embedder, M3Index
from m3_rag.filters import parse_filter
from m3_rag.retrieval import HybridStore, SearchHit, SearchRequest

from ._common import resolve_embedder
from .filters import to_core_filter
from .nodes import M3NodeWithScore, node_record, record_node
from .vectorstore import M3VectorStore

__all__ = ["M3Retriever"]


def _core_filter(filters: MetadataFilters | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` (see :func:`to_core_filter`) or a core filter dict, checked."""
    if filters is None:
        return None
    if isinstance(filters, MetadataFilters):
        return to_core_filter(filters) or None
    if isinstance(filters, Mapping):
        parse_filter(filters)
        return dict(filters)
    raise TypeError(
        "filters must be llama_index MetadataFilters or an m3-rag filter dict such as {'lang': 'en'}, "
        f"got {type(filters).__name__}"
    )


def _node(hit: SearchHit) -> NodeWithScore:
    scores = {mode: float(value) for mode, value in hit.scores.items()}
    return M3NodeWithScore(node=record_node(hit.id, hit.text, hit.metadata), score=hit.score, scores=scores)


class M3Retriever(BaseRetriever):
    """Hybrid retrieval for LlamaIndex: first-stage candidates, then the exact hybrid rerank.

    Wraps :meth:`index.search <m3_rag.M3Index.search>` of an :class:`~m3_rag.M3Index` or any
    :class:`~m3_rag.retrieval.HybridStore` (e.g. the Milvus store), or the store of an
    :class:`M3VectorStore`. Returns :class:`~m3_rag.integrations.llama_index.M3NodeWithScore`
    objects: ``score`` is the hybrid score, ``scores`` the per-mode scores (``dense``, ``sparse``,
    ``colbert``), and the node is the stored one, unchanged -- the node a ``VectorStoreIndex``
    inserted (id, text, metadata, relationships and ``ref_doc_id``, so its ``hash`` too), or a
    ``TextNode`` of a record written without LlamaIndex (see
    :mod:`~m3_rag.integrations.llama_index.nodes`). ``aretrieve`` runs the search in a worker thread.

    Args:
        index: the store to search (a ``HybridStore`` or an ``M3VectorStore``).
        similarity_top_k: nodes to return (default 10).
        candidates: first-stage candidates per mode (default 100).
        weights: ``(w_dense, w_sparse, w_colbert)`` of the hybrid score.
        first_stage: ``"dense"``, ``"sparse"`` or both (default).
        filters: ``MetadataFilters`` (EQ, NE, IN, NIN, GT, GTE, LT, LTE, nested AND / OR) or an m3-rag
            filter dict (see :mod:`m3_rag.filters`).

    Example:
        >>> from m3_rag import M3Embedder, M3Index
        >>> from m3_rag.integrations.llama_index import M3Retriever
        >>> index = M3Index(M3Embedder.shared("tests/data/tiny-m3", device="cpu"))
        >>> texts = ["Berlin is in Germany.", "Paris is in France."]
        >>> index.add(texts, ids=["de", "fr"], metadatas=[{"lang": "de"}, {"lang": "fr"}])
        ['de', 'fr']
        >>> retriever = M3Retriever(index, similarity_top_k=1, filters={"lang": "fr"})
        >>> [n.node.node_id for n in retriever.retrieve("capital")]
        ['fr']
    """

    def __init__(
        self,
        index: HybridStore | M3VectorStore,
        *,
        similarity_top_k: int = 10,
        candidates: int = 100,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        first_stage: str | Sequence[str] = ("dense", "sparse"),
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        cross_encoder: Any = None,
        cross_encoder_top_n: int | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if isinstance(index, M3VectorStore):
            index = index.store
        if not isinstance(index, HybridStore):
            raise TypeError(
                f"index must be an m3_rag.M3Index or another HybridStore (add, delete, search, search_batch, "
                f"embedder), got {type(index).__name__}"
            )
        checked_args = SearchRequest.make(
            k=similarity_top_k, candidates=candidates, first_stage=first_stage, weights=weights, filter=None
        )
        stages, checked = checked_args.first_stage, checked_args.weights
        self.index = index
        self.similarity_top_k = int(similarity_top_k)
        self.candidates = int(candidates)
        self.weights = checked
        self.first_stage = stages
        self.filters = filters
        self._filter = _core_filter(filters)
        self.cross_encoder = cross_encoder  # optional cross-encoder final stage (see M3Index.search)
        self.cross_encoder_top_n = cross_encoder_top_n
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_nodes(
        cls,
        nodes: Sequence[BaseNode],
        *,
        model_name: str | os.PathLike[str] | None = None,
        embedder: M3Embedder | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> M3Retriever:
        """Index nodes (or Documents) in a new :class:`~m3_rag.M3Index` and retrieve from it.

        Nodes are stored as :class:`M3VectorStore` stores them (under their ``node_id``, the text the
        embedding model would see, the whole node in the metadata, which must be JSON-serialisable), so
        the retriever returns them unchanged. ``kwargs`` go to :class:`M3Retriever`.
        """
        index = M3Index(resolve_embedder(model_name, embedder, device=device, dtype=dtype))
        if nodes:
            records = [node_record(n) for n in nodes]
            index.add([t for t, _ in records], ids=[n.node_id for n in nodes], metadatas=[m for _, m in records])
        return cls(index, **kwargs)

    @property
    def embedder(self) -> M3Embedder:
        """The index's loaded model."""
        embedder: M3Embedder = self.index.embedder
        return embedder

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.index.search(
            query_bundle.query_str,
            k=self.similarity_top_k,
            candidates=self.candidates,
            first_stage=self.first_stage,
            weights=self.weights,
            filter=self._filter,
            cross_encoder=self.cross_encoder,
            cross_encoder_top_n=self.cross_encoder_top_n,
        )
        return [_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
