"""``M3Retriever``: hybrid retrieval from an ``M3Index`` (or any ``HybridStore``) for LlamaIndex."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from m3_rag import M3Embedder, M3Index
from m3_rag.retrieval import HybridStore, SearchHit, SearchRequest

from ._common import STAGE_SCORE_KEYS, resolve_embedder

__all__ = ["M3Retriever", "to_index_filter"]


def _flatten(filters: MetadataFilters, out: list[MetadataFilter]) -> list[MetadataFilter]:
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT or (condition != FilterCondition.AND and len(filters.filters) > 1):
        raise ValueError(
            f"M3Retriever supports filters combined with AND only, got condition={str(condition.value)!r} "
            f"over {len(filters.filters)} filters; use FilterCondition.AND (several values of one key: "
            "FilterOperator.IN)"
        )
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            _flatten(item, out)
        else:
            out.append(item)
    return out


def to_index_filter(filters: MetadataFilters | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` -> the index filter dict ``{key: value}`` / ``{key: [values]}``.

    Supported: ``FilterOperator.EQ`` and ``FilterOperator.IN``, combined with AND (nested
    groups too). Two conditions on one key keep the values both allow. A plain dict is taken
    as an index filter already.

    >>> from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters
    >>> to_index_filter(MetadataFilters(filters=[
    ...     MetadataFilter(key="lang", value="de"),
    ...     MetadataFilter(key="year", value=[2023, 2024], operator=FilterOperator.IN)]))
    {'lang': 'de', 'year': [2023, 2024]}
    """
    if filters is None:
        return None
    if isinstance(filters, Mapping):
        return dict(filters)
    if not isinstance(filters, MetadataFilters):
        raise TypeError(
            "filters must be llama_index MetadataFilters or a dict of metadata equalities, "
            f"got {type(filters).__name__}"
        )
    allowed: dict[str, list[Any]] = {}
    for f in _flatten(filters, []):
        if f.operator == FilterOperator.EQ:
            if isinstance(f.value, list):
                raise ValueError(
                    f"filter on {f.key!r}: FilterOperator.EQ takes one value, got a list {f.value!r}; "
                    "use FilterOperator.IN for any of several values"
                )
            values = [f.value]
        elif f.operator == FilterOperator.IN:
            values = list(f.value) if isinstance(f.value, list) else [f.value]
        else:
            raise ValueError(
                f"filter on {f.key!r}: operator {f.operator.value!r} ({f.operator.name}) is not supported; "
                "M3Retriever supports FilterOperator.EQ and FilterOperator.IN (combined with AND)"
            )
        allowed[f.key] = [v for v in allowed[f.key] if v in values] if f.key in allowed else values
    return {key: values[0] if len(values) == 1 else values for key, values in allowed.items()}


def _node(hit: SearchHit) -> NodeWithScore:
    scores = {STAGE_SCORE_KEYS[mode]: float(value) for mode, value in hit.scores.items()}
    node = TextNode(
        id_=hit.id,
        text=hit.text,
        metadata={**hit.metadata, **scores},
        excluded_llm_metadata_keys=list(scores),
        excluded_embed_metadata_keys=list(scores),
    )
    return NodeWithScore(node=node, score=hit.score)


class M3Retriever(BaseRetriever):
    """Hybrid retrieval for LlamaIndex: first-stage candidates, then the exact hybrid rerank.

    Wraps :meth:`index.search <m3_rag.M3Index.search>` of an :class:`~m3_rag.M3Index` or any
    :class:`~m3_rag.retrieval.HybridStore` (e.g. the Milvus store). Returns
    ``NodeWithScore(TextNode(id_=hit.id, text=hit.text, metadata=...), score=hybrid score)``;
    the metadata holds the document's metadata plus ``dense_score``, ``sparse_score`` and
    ``colbert_score`` (hidden from the LLM). ``aretrieve`` runs the search in a worker thread.

    Args:
        index: the store to search.
        similarity_top_k: nodes to return (default 10).
        candidates: first-stage candidates per mode (default 100).
        weights: ``(w_dense, w_sparse, w_colbert)`` of the hybrid score.
        first_stage: ``"dense"``, ``"sparse"`` or both (default).
        filters: ``MetadataFilters`` (``EQ`` / ``IN``, AND) or an index filter dict.

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
        index: HybridStore,
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
        self._filter = to_index_filter(filters)
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

        Each node is stored under its ``node_id`` with its text (without metadata) and its
        metadata (which must be JSON-serialisable). ``kwargs`` go to :class:`M3Retriever`.
        """
        index = M3Index(resolve_embedder(model_name, embedder, device=device, dtype=dtype))
        if nodes:
            index.add(
                [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
                ids=[n.node_id for n in nodes],
                metadatas=[n.metadata for n in nodes],
            )
        return cls(index, **kwargs)

    @property
    def embedder(self) -> M3Embedder:
        """The index's loaded model."""
        embedder: M3Embedder = self.index.embedder
        return embedder

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._filter is not None and any(v == [] for v in self._filter.values()):
            return []  # two conditions on one key that no value satisfies
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
